"""Fair share within a priority (actors.waitqueue), on the engine and a fake clock.

Each scenario is simulated call by call: a call holds its slot for its own
number of seconds, then releases it, and whatever the release grants starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from actors.leases import TokensUsed
from pipelines.view import render
from tests.unit.conftest import LOCAL_OLLAMA, Harness

CALL = 0.02  # seconds a call holds its slot


@dataclass(frozen=True)
class Ask:
    at: float
    request: str
    flow: str
    seconds: float = CALL
    priority: int = 5
    unit: str | None = None
    weight: float = 1.0
    used: TokensUsed | None = None


@dataclass
class Run:
    order: list[str]
    granted_at: dict[str, float]

    def waits(self, asks: list[Ask], flow: str) -> list[float]:
        return [self.granted_at[a.request] - a.at for a in asks if a.flow == flow]


def simulate(harness: Harness, asks: list[Ask]) -> Run:
    """Ask each call at its time (seconds from now on the harness's clock); release each
    after its seconds; the grant order and times, from now."""
    start = harness.clock.now
    pending = sorted(asks, key=lambda a: a.at)
    seconds = {a.request: a.seconds for a in asks}
    used = {a.request: a.used for a in asks}
    ends: dict[str, float] = {}
    run = Run([], {})

    def started(requests: list[str]) -> None:
        for request in requests:
            run.order.append(request)
            run.granted_at[request] = harness.clock.now - start
            ends[request] = harness.clock.now + seconds[request]

    while pending or ends:
        next_end = min(ends.values(), default=math.inf)
        if pending and start + pending[0].at <= next_end:
            ask = pending.pop(0)
            harness.clock.now = max(harness.clock.now, start + ask.at)
            harness.ask(
                LOCAL_OLLAMA,
                ask.request,
                ask.priority,
                flow=ask.flow,
                unit=ask.unit,
                weight=ask.weight,
            )
            if harness.granted_now(ask.request) and ask.request not in run.granted_at:
                started([ask.request])
        else:
            request = min(ends, key=lambda r: ends[r])
            harness.clock.now = ends.pop(request)
            started(harness.done(request, used[request]))
    return run


def noisy_neighbour() -> list[Ask]:
    """The issue's scenario: A queues 100 calls; 0.2 s later B sends 10, one every 50 ms."""
    a = [Ask(0.0, f"a{i}", "A") for i in range(100)]
    b = [Ask(0.2 + 0.05 * i, f"b{i}", "B") for i in range(10)]
    return a + b


def capped(limit: int, **engine: object) -> Harness:
    return Harness(group_limits={LOCAL_OLLAMA.id: limit}, **engine)


def test_at_one_slot_the_small_flow_waits_at_most_a_few_calls_not_behind_the_burst() -> None:
    asks = noisy_neighbour()

    run = simulate(capped(1), asks)

    assert max(run.waits(asks, "B")) <= 3 * CALL
    assert run.order.index("b9") < 70  # A's burst runs to the 110th grant
    assert len(run.order) == 110


def test_at_four_slots_the_small_flow_is_interleaved_too() -> None:
    asks = noisy_neighbour()

    run = simulate(capped(4), asks)

    assert max(run.waits(asks, "B")) <= 3 * CALL
    assert len(run.order) == 110


def test_fifo_keeps_arrival_order_across_flows() -> None:
    asks = noisy_neighbour()

    run = simulate(capped(1, fair=False), asks)

    assert run.order == [f"a{i}" for i in range(100)] + [f"b{i}" for i in range(10)]


def test_a_slot_is_never_idle_while_anyone_waits() -> None:
    asks = noisy_neighbour()
    fifo = simulate(capped(4, fair=False), asks)
    fair = simulate(capped(4), asks)

    def makespan(run: Run) -> float:
        return max(run.granted_at.values()) + CALL

    assert makespan(fair) == makespan(fifo)


def test_weights_divide_the_slot_in_their_ratio() -> None:
    asks = [Ask(0.0, f"h{i}", "heavy", weight=2.0) for i in range(60)]
    asks += [Ask(0.0, f"l{i}", "light") for i in range(60)]

    run = simulate(capped(1), asks)

    first = run.order[:60]
    heavy = sum(1 for r in first if r.startswith("h"))
    assert abs(heavy - 40) <= 1


def test_calls_that_report_usage_share_weighted_tokens_not_calls_or_time() -> None:
    """Both flows' calls hold the slot alike; one's use 4x the weighted tokens (prompt +
    2 x completion: 100 + 2 x 150 against 50 + 2 x 25): it gets a quarter as many."""
    asks = [Ask(0.0, f"h{i}", "heavy", used=TokensUsed(100, 150)) for i in range(100)]
    asks += [Ask(0.0, f"l{i}", "light", used=TokensUsed(50, 25)) for i in range(100)]

    run = simulate(capped(1), asks)

    first = run.order[:100]
    heavy = sum(1 for r in first if r.startswith("h"))
    assert abs(heavy - 20) <= 2


def test_a_call_without_usage_is_charged_its_seconds_at_the_groups_token_rate() -> None:
    """ "streamed" reports no usage; its calls hold the slot as long as "reported"'s, whose
    usage sets the group's rate: both get as many grants."""
    asks = [Ask(0.0, f"r{i}", "reported", used=TokensUsed(300, 50)) for i in range(100)]
    asks += [Ask(0.0, f"s{i}", "streamed") for i in range(100)]

    run = simulate(capped(1), asks)

    first = run.order[:100]
    reported = sum(1 for r in first if r.startswith("r"))
    assert abs(reported - 50) <= 2


def test_different_call_lengths_share_time_not_calls() -> None:
    """Without usage, service is the time a call held its slot: a flow of calls 4x as
    long gets a quarter as many."""
    asks = [Ask(0.0, f"s{i}", "short", seconds=0.01) for i in range(100)]
    asks += [Ask(0.0, f"l{i}", "long", seconds=0.04) for i in range(40)]

    run = simulate(capped(1), asks)

    busy = {"s": 0.0, "l": 0.0}
    clock = 0.0
    for request in run.order:
        length = 0.01 if request.startswith("s") else 0.04
        if clock + length > 1.0:  # both flows are backlogged for the first second
            break
        busy[request[0]] += length
        clock += length
    assert abs(busy["s"] - busy["l"]) <= 2 * 0.04


def test_with_calls_in_flight_each_flow_is_charged_its_own_calls_cost_at_the_grant() -> None:
    """Four slots, four backlogged flows whose calls take 0.8/0.4/0.2/0.1 s at weights
    4:2:1:1 (each call 0.2 s of weighted service but the last, 0.1 s). Counted as it
    accrues, weighted service stays within 2 of the largest call's (0.4 s) once each
    flow's first call ended: a grant is charged its flow's average cost, not the group's,
    which overcharged the short calls' flows and undercharged the long ones': 0.525 s."""
    flows = {"a": (0.8, 4.0), "b": (0.4, 2.0), "c": (0.2, 1.0), "d": (0.1, 1.0)}
    asks = [
        Ask(0.0, f"{flow}{i}", flow, seconds=seconds, weight=weight)
        for i in range(200)
        for flow, (seconds, weight) in flows.items()
    ]

    run = simulate(capped(4), asks)

    def weighted(flow: str, at: float) -> float:
        seconds, weight = flows[flow]
        started = [run.granted_at[a.request] for a in asks if a.flow == flow]
        return sum(min(seconds, max(0.0, at - t)) for t in started) / weight

    drift = 0.0
    for tenth in range(10, 200):  # from 1 s, once every flow's first call ended, to 20 s
        served = [weighted(flow, tenth / 10) for flow in flows]
        drift = max(drift, max(served) - min(served))
    assert drift <= 2 * 0.2


def test_a_flow_that_idled_gets_no_run_of_grants_on_its_return() -> None:
    asks = [Ask(0.0, "b-early", "B")]
    asks += [Ask(0.0, f"a{i}", "A") for i in range(100)]
    asks += [Ask(1.0, f"b{i}", "B") for i in range(10)]  # B idled while A was served

    run = simulate(capped(1), asks)

    after = run.order[run.order.index("b0") - 1 :][:21]
    runs_of_b = "".join("b" if r.startswith("b") else "a" for r in after)
    assert "bb" not in runs_of_b


def test_a_restarted_engine_gives_no_flow_credit() -> None:
    """Counters start level after a restart: a flow that had been served less before
    it does not get a run of grants after it."""
    harness = capped(1)
    simulate(harness, [Ask(0.0, f"a{i}", "A") for i in range(20)])
    restarted = capped(1)

    asks = [Ask(0.0, f"b{i}", "B") for i in range(10)]
    asks += [Ask(0.0, f"a{i}", "A") for i in range(20, 30)]
    run = simulate(restarted, asks)

    letters = "".join(r[0] for r in run.order)
    assert letters[:20].count("b") == 10
    assert "bbb" not in letters[:20]


def test_within_a_flow_units_still_finish_one_by_one() -> None:
    asks = [Ask(0.0, "hold", "B")]
    for i in range(3):
        asks += [
            Ask(0.001 * i, f"u1-{i}", "A", unit="u1"),
            Ask(0.001 * i, f"u2-{i}", "A", unit="u2"),
        ]
    asks += [Ask(0.01, f"b{i}", "B") for i in range(3)]

    run = simulate(capped(1), asks)

    of_a = [r for r in run.order if r.startswith("u")]
    assert of_a == ["u1-0", "u1-1", "u1-2", "u2-0", "u2-1", "u2-2"]


def test_priority_stays_strict_across_flows() -> None:
    asks = [Ask(0.0, f"a{i}", "A") for i in range(30)]
    asks += [Ask(0.1, "b-low", "B", priority=3), Ask(0.2, "a-high", "A", priority=8)]

    run = simulate(capped(1), asks)

    assert run.order.index("a-high") < run.order.index("b-low")


def test_the_queue_views_show_the_order_grants_then_take() -> None:
    harness = capped(1)
    simulate(harness, [Ask(0.0, "warm", "A")])  # the group learns its call time
    asks = [Ask(0.0, "hold", "C")]
    asks += [Ask(0.0, f"a{i}", "A") for i in range(8)]
    asks += [Ask(0.0, f"b{i}", "B") for i in range(4)]
    for ask in asks:
        harness.ask(LOCAL_OLLAMA, ask.request, flow=ask.flow)
    queue = harness.engine.groups[LOCAL_OLLAMA.id].queue
    shown = [harness.engine.waiters[lease_id].request_id for lease_id in queue.first(12)]
    positions = [harness.engine.position(request) for request in shown]

    order: list[str] = []
    current = "hold"
    while True:
        harness.clock.advance(CALL)
        if not (granted := harness.done(current)):
            break
        order += granted
        current = granted[0]

    assert shown == order
    assert [p.ahead for p in positions if p is not None] == list(range(12))


def test_a_new_calls_wait_is_counted_in_the_order_grants_follow_not_by_key_alone() -> None:
    # A's eight calls queued first; B has waited for nothing. By key alone all eight go
    # before B's new call; by fair share it goes second, after A's next: that is what its
    # fallback-on-wait decision must read (a max_wait of 2.5 calls keeps it here).
    harness = capped(1)
    simulate(harness, [Ask(0.0, "warm", "A")])  # the group learns its call time
    harness.ask(LOCAL_OLLAMA, "hold", flow="C")
    for i in range(8):
        harness.ask(LOCAL_OLLAMA, f"a{i}", flow="A")

    harness.ask(LOCAL_OLLAMA, "b", flow="B", max_wait=2.5 * CALL)

    queue = harness.engine.groups[LOCAL_OLLAMA.id].queue
    shown = [harness.engine.waiters[lease_id].request_id for lease_id in queue.first(3)]
    assert shown == ["a0", "b", "a1"]


def test_the_stats_show_each_flows_waiters_calls_running_service_and_share() -> None:
    harness = Harness()
    asks = [Ask(0.0, f"a{i}", "tenant:a", seconds=0.3) for i in range(2)]
    asks += [Ask(0.0, "b0", "tenant:b", seconds=0.1)]
    simulate(harness, asks)  # all three ran: a 0.6 s, b 0.1 s
    harness.ask(LOCAL_OLLAMA, "a-holds", flow="tenant:a")
    harness.ask(LOCAL_OLLAMA, "b-waits", flow="tenant:b")

    flows = harness.engine.stats().groups[LOCAL_OLLAMA.id].flows

    assert {name: (f.waiting, f.running) for name, f in flows.items()} == {
        "tenant:a": (0, 1),
        "tenant:b": (1, 0),
    }
    assert flows["tenant:a"].served_seconds == pytest.approx(0.6)
    assert flows["tenant:b"].served_seconds == pytest.approx(0.1)
    # No call reported usage: the service is call-seconds.
    assert flows["tenant:a"].service == pytest.approx(0.6)
    assert flows["tenant:a"].share == pytest.approx(6 / 7)
    table = render(harness.engine.stats())
    assert f"flows of {LOCAL_OLLAMA.id}" in table
    [b_row] = [line for line in table.splitlines() if line.startswith("tenant:b")]
    assert b_row.split() == ["tenant:b", "1", "0", "0.1s", "0", "14%"]


def test_the_stats_count_service_in_weighted_tokens_where_calls_report_usage() -> None:
    harness = Harness()
    asks = [Ask(0.0, f"a{i}", "tenant:a", seconds=0.3, used=TokensUsed(10, 5)) for i in range(2)]
    asks += [Ask(0.0, "b0", "tenant:b", seconds=0.1, used=TokensUsed(100, 50))]
    simulate(harness, asks)
    harness.ask(LOCAL_OLLAMA, "b-holds", flow="tenant:b")

    flows = harness.engine.stats().groups[LOCAL_OLLAMA.id].flows

    assert flows["tenant:a"].service == 2 * (10 + 2 * 5)
    assert flows["tenant:b"].service == 100 + 2 * 50
    # b held its slot a sixth as long as a, and was served five times as much.
    assert flows["tenant:b"].share == pytest.approx(200 / 240)
    [b_row] = [line for line in render(harness.engine.stats()).splitlines() if "tenant:b" in line]
    assert b_row.split() == ["tenant:b", "0", "1", "0.1s", "200", "83%"]
