"""The slot engine, driven directly on a fake clock: exact grant order and counters."""

from __future__ import annotations

import pickle

import pytest

from actors.engine import SlotEngine
from actors.errors import (
    CallerGone,
    DuplicateLease,
    InvalidPriority,
    LeaseRetired,
    QueueFull,
    UnknownGroup,
)
from actors.options import CallOptions
from tests.unit.conftest import (
    ANTHROPIC,
    EPOCH,
    FAIRNESS,
    LOCAL_OLLAMA,
    OPENAI,
    REMOTE_OLLAMA,
    Harness,
)

# -- the three scenarios of the seed "Parallel LLM Execution System" ------------


@pytest.fixture(autouse=True, params=["fair", "fifo"])
def fairness(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here under ``queue.fairness: fair`` and under ``fifo``: today's order
    holds under both."""
    monkeypatch.setitem(FAIRNESS, "fair", request.param == "fair")


def test_remote_api_requests_all_run_immediately(harness: Harness) -> None:
    harness.ask(ANTHROPIC, "A", priority=10)
    harness.ask(OPENAI, "B", priority=5)
    harness.ask(ANTHROPIC, "C", priority=8)

    assert all(harness.granted_now(r) for r in "ABC")
    stats = harness.engine.stats()
    assert stats.total_active == 3
    assert stats.total_pending == 0


def test_local_requests_run_one_at_a_time_highest_priority_first(harness: Harness) -> None:
    harness.ask(LOCAL_OLLAMA, "A", priority=10)
    harness.ask(LOCAL_OLLAMA, "B", priority=8)
    harness.ask(LOCAL_OLLAMA, "C", priority=5)
    assert harness.granted_now("A")
    assert harness.engine.stats().pending_by_group[LOCAL_OLLAMA.id] == 2

    assert harness.done("A") == ["B"]
    assert harness.done("B") == ["C"]
    assert harness.done("C") == []


def test_queued_higher_priority_overtakes_earlier_lower_priority(harness: Harness) -> None:
    harness.ask(LOCAL_OLLAMA, "X", priority=5)
    harness.ask(LOCAL_OLLAMA, "Y", priority=3)
    harness.ask(LOCAL_OLLAMA, "Z", priority=8)

    # Y arrived first, but Z's priority 8 beats Y's 3.
    assert harness.done("X") == ["Z"]
    assert harness.done("Z") == ["Y"]


def test_mixed_resources_only_the_local_second_request_waits(harness: Harness) -> None:
    harness.ask(LOCAL_OLLAMA, "A", priority=5)
    harness.ask(ANTHROPIC, "B", priority=10)
    harness.ask(LOCAL_OLLAMA, "C", priority=3)
    harness.ask(REMOTE_OLLAMA, "D", priority=7)

    assert [r for r in "ABCD" if harness.granted_now(r)] == ["A", "B", "D"]
    assert harness.done("B") == []
    assert harness.done("D") == []
    assert harness.done("A") == ["C"]


# -- ordering -------------------------------------------------------------------


def test_equal_priorities_are_served_in_arrival_order(harness: Harness) -> None:
    harness.ask(LOCAL_OLLAMA, "holder")
    for request in ["r1", "r2", "r3", "r4"]:
        harness.ask(LOCAL_OLLAMA, request, priority=4)

    assert harness.grant_order("holder") == ["r1", "r2", "r3", "r4"]


def test_waiters_a_restart_interrupted_go_first_in_the_order_they_asked() -> None:
    h = Harness(restarted_at=1000.0)
    h.ask(LOCAL_OLLAMA, "holder", asked_at=1001.0)
    # Ray retries the interrupted acquires in an order of its own, among new ones.
    h.ask(LOCAL_OLLAMA, "asked-3rd", asked_at=999.3)
    h.ask(LOCAL_OLLAMA, "new", asked_at=1002.0)
    h.ask(LOCAL_OLLAMA, "asked-1st", asked_at=999.1, unit="svc-a")
    h.ask(LOCAL_OLLAMA, "urgent", priority=9, asked_at=999.9)
    h.ask(LOCAL_OLLAMA, "asked-2nd", asked_at=999.2)
    h.ask(LOCAL_OLLAMA, "svc-a again", asked_at=1003.0, unit="svc-a")  # keeps its unit's place

    assert h.grant_order("holder") == [
        "urgent", "asked-1st", "svc-a again", "asked-2nd", "asked-3rd", "new",
    ]  # fmt: skip


def test_release_hands_slot_to_oldest_of_highest_priority(harness: Harness) -> None:
    harness.ask(LOCAL_OLLAMA, "holder")
    harness.ask(LOCAL_OLLAMA, "low-old", priority=2)
    harness.ask(LOCAL_OLLAMA, "high-old", priority=9)
    harness.ask(LOCAL_OLLAMA, "mid", priority=5)
    harness.ask(LOCAL_OLLAMA, "high-new", priority=9)

    assert harness.done("holder") == ["high-old"]
    assert harness.done("high-old") == ["high-new"]
    assert harness.done("high-new") == ["mid"]
    assert harness.done("mid") == ["low-old"]


def test_critical_calls_go_first_within_their_unit_only(harness: Harness) -> None:
    harness.ask(LOCAL_OLLAMA, "holder")
    harness.ask(LOCAL_OLLAMA, "a-mapping", unit="a")
    harness.ask(LOCAL_OLLAMA, "b-features", unit="b", critical=True)
    harness.ask(LOCAL_OLLAMA, "a-features", unit="a", critical=True)
    harness.ask(LOCAL_OLLAMA, "urgent", priority=6)

    # A higher priority still wins; unit a arrived before unit b, so all of a
    # goes first, its critical call before its earlier mapping.
    assert harness.grant_order("holder") == ["urgent", "a-features", "a-mapping", "b-features"]


def test_a_critical_call_overtakes_side_work_of_as_many_earlier_units_as_run_beside_it() -> None:
    h = Harness(group_limits={LOCAL_OLLAMA.id: 2})
    h.ask(LOCAL_OLLAMA, "holder-1")
    h.ask(LOCAL_OLLAMA, "holder-2")
    h.ask(LOCAL_OLLAMA, "side-0", unit="u0")
    h.ask(LOCAL_OLLAMA, "side-1", unit="u1")
    h.ask(LOCAL_OLLAMA, "critical-2", unit="u2", critical=True)
    h.ask(LOCAL_OLLAMA, "critical-3", unit="u3", critical=True)

    # Two slots: a critical call may pass the side work of the one unit just
    # before its own (critical-2 passes side-1), not of two (side-0 stays ahead).
    assert h.done("holder-1") == ["side-0"]
    assert h.done("holder-2") == ["critical-2"]
    assert h.done("side-0") == ["side-1"]
    assert h.done("critical-2") == ["critical-3"]


def test_a_started_unit_keeps_its_place_after_a_gap_with_no_calls(harness: Harness) -> None:
    harness.ask(LOCAL_OLLAMA, "a-1", unit="a")
    harness.ask(LOCAL_OLLAMA, "b-1", unit="b")
    harness.ask(LOCAL_OLLAMA, "plain")
    # Unit a has nothing waiting or held once a-1 is done and b-1 runs ...
    assert harness.done("a-1") == ["b-1"]
    # ... yet its next call goes before the later unit b and the plain call.
    harness.ask(LOCAL_OLLAMA, "b-2", unit="b")
    harness.ask(LOCAL_OLLAMA, "a-2", unit="a")

    assert harness.grant_order("b-1") == ["a-2", "b-2", "plain"]


def test_calls_without_a_unit_are_served_in_arrival_order_even_if_critical(
    harness: Harness,
) -> None:
    harness.ask(LOCAL_OLLAMA, "holder")
    harness.ask(LOCAL_OLLAMA, "first")
    harness.ask(LOCAL_OLLAMA, "second", critical=True)

    # Each call is a unit of its own: critical orders nothing across units.
    assert harness.grant_order("holder") == ["first", "second"]


def test_global_cap_gives_freed_slot_to_best_waiter_of_any_group_with_room() -> None:
    h = Harness(global_limit=2)
    h.ask(LOCAL_OLLAMA, "local-1")
    h.ask(ANTHROPIC, "remote-1")
    # The cap is reached: even the unlimited remote group waits now.
    h.ask(ANTHROPIC, "remote-low", priority=3)
    h.ask(LOCAL_OLLAMA, "local-high", priority=9)
    h.ask(ANTHROPIC, "remote-mid", priority=6)
    assert not h.granted_now("remote-low")
    assert h.engine.stats().total_pending == 3

    # The local group is still full (local-1 holds it), so local-high cannot
    # take the freed slot; the best waiter of a group with room is remote-mid.
    assert h.done("remote-1") == ["remote-mid"]
    # Now the local slot frees: local-high (9) beats remote-low (3).
    assert h.done("local-1") == ["local-high"]
    assert h.done("remote-mid") == ["remote-low"]
    assert h.engine.stats().total_active == 2


def test_global_cap_breaks_equal_priority_ties_by_arrival_across_groups() -> None:
    h = Harness(global_limit=1)
    h.ask(ANTHROPIC, "holder")
    h.ask(OPENAI, "first", priority=5)
    h.ask(ANTHROPIC, "second", priority=5)

    assert h.done("holder") == ["first"]
    assert h.done("first") == ["second"]


def test_configured_override_beats_the_default_limit() -> None:
    h = Harness(group_limits={LOCAL_OLLAMA.id: 2, ANTHROPIC.id: 1})
    h.ask(LOCAL_OLLAMA, "a")
    h.ask(LOCAL_OLLAMA, "b")
    h.ask(ANTHROPIC, "c")
    h.ask(ANTHROPIC, "d")

    assert [r for r in "abcd" if h.granted_now(r)] == ["a", "b", "c"]
    assert h.engine.group_info(LOCAL_OLLAMA.id).limit == 2
    assert h.engine.group_info(ANTHROPIC.id).gated


# -- cancellation and timeout ---------------------------------------------------


def test_cancelled_waiter_leaves_the_queue_and_is_never_granted(harness: Harness) -> None:
    harness.ask(LOCAL_OLLAMA, "holder")
    gone = harness.ask(LOCAL_OLLAMA, "gone", priority=9)
    harness.ask(LOCAL_OLLAMA, "stays", priority=1)

    assert harness.cancel(gone) == []
    assert harness.engine.stats().pending_by_group[LOCAL_OLLAMA.id] == 1
    assert harness.done("holder") == ["stays"]
    assert harness.engine.stats().groups[LOCAL_OLLAMA.id].cancelled == 1


def test_timed_out_waiter_is_counted_apart_from_cancelled(harness: Harness) -> None:
    harness.ask(LOCAL_OLLAMA, "holder")
    late = harness.ask(LOCAL_OLLAMA, "late")

    harness.cancel(late, timed_out=True)

    group = harness.engine.stats().groups[LOCAL_OLLAMA.id]
    assert (group.timed_out, group.cancelled, group.pending) == (1, 0, 0)


def test_cancel_after_grant_in_the_same_instant_passes_the_slot_on(harness: Harness) -> None:
    harness.ask(LOCAL_OLLAMA, "holder")
    racer = harness.ask(LOCAL_OLLAMA, "racer", priority=9)
    harness.ask(LOCAL_OLLAMA, "next", priority=1)
    assert harness.done("holder") == ["racer"]

    # The racer's caller gave up just as the grant was made: the slot moves on.
    del harness.leases["racer"]
    assert harness.cancel(racer) == ["next"]
    stats = harness.engine.stats()
    assert stats.active_by_group[LOCAL_OLLAMA.id] == 1
    assert stats.groups[LOCAL_OLLAMA.id].cancelled == 1


def test_cancel_arriving_before_its_acquire_makes_the_acquire_fail(harness: Harness) -> None:
    lease_id = harness.lease_id()
    assert harness.engine.cancel(lease_id) == []

    with pytest.raises(LeaseRetired, match=f"lease id '{lease_id}' was cancelled or released"):
        harness.engine.acquire(LOCAL_OLLAMA.id, lease_id, CallOptions(request_id="r"))
    stats = harness.engine.stats()
    assert (stats.total_active, stats.total_pending, stats.late_acquires) == (0, 0, 1)


def test_release_arriving_before_its_acquire_makes_the_acquire_fail(harness: Harness) -> None:
    lease_id = harness.lease_id()
    assert harness.engine.release(lease_id, EPOCH) == []

    with pytest.raises(LeaseRetired):
        harness.engine.acquire(ANTHROPIC.id, lease_id, CallOptions(request_id="r"))
    assert harness.engine.stats().total_active == 0


# -- leases: release, renew, expiry ----------------------------------------------


def test_release_is_idempotent_and_counts_the_repeat(harness: Harness) -> None:
    harness.ask(LOCAL_OLLAMA, "a")
    lease = harness.leases["a"]

    assert harness.engine.release(lease.id, EPOCH) == []
    assert harness.engine.release(lease.id, EPOCH) == []

    stats = harness.engine.stats()
    assert stats.groups[LOCAL_OLLAMA.id].released == 1
    assert stats.unknown_releases == 1
    assert stats.total_active == 0


def test_release_from_an_old_epoch_is_ignored_and_counted(harness: Harness) -> None:
    harness.ask(LOCAL_OLLAMA, "a")
    lease = harness.leases["a"]

    assert harness.engine.release(lease.id, EPOCH - 1) == []

    stats = harness.engine.stats()
    assert stats.active_by_group[LOCAL_OLLAMA.id] == 1
    assert stats.stale_epoch_releases == 1


def test_expired_lease_is_reclaimed_and_its_slot_passed_on() -> None:
    h = Harness(lease_ttl=10.0)
    h.ask(LOCAL_OLLAMA, "crashed")
    h.ask(LOCAL_OLLAMA, "waiting")
    assert h.engine.leases.next_expiry() == h.clock.now + 10.0

    h.clock.advance(9.99)
    assert h.reclaim() == []
    h.clock.advance(0.01)
    assert h.reclaim() == ["waiting"]

    stats = h.engine.stats()
    assert stats.groups[LOCAL_OLLAMA.id].expired == 1
    assert stats.active_by_group[LOCAL_OLLAMA.id] == 1
    # The crashed holder's late release is a counted no-op, not a second free slot.
    crashed = h.leases.pop("crashed")
    assert h.engine.release(crashed.id, EPOCH) == []
    assert h.engine.stats().active_by_group[LOCAL_OLLAMA.id] == 1
    assert h.engine.stats().unknown_releases == 1


def test_renewed_lease_outlives_its_first_deadline() -> None:
    h = Harness(lease_ttl=10.0)
    h.ask(LOCAL_OLLAMA, "long")
    h.ask(LOCAL_OLLAMA, "waiting")
    lease = h.leases["long"]

    h.clock.advance(6)
    assert h.engine.leases.renew(lease.id, EPOCH)
    h.clock.advance(6)
    assert h.reclaim() == []
    # The next deadline is the renewed one, not the stale first one.
    assert h.engine.leases.next_expiry() == h.clock.now + 4
    h.clock.advance(4)
    assert h.reclaim() == ["waiting"]
    assert h.engine.stats().renewed == 1


def test_renew_of_a_lease_no_longer_held_says_so() -> None:
    h = Harness(lease_ttl=1.0)
    h.ask(LOCAL_OLLAMA, "a")
    lease = h.leases["a"]
    h.clock.advance(1.0)
    h.reclaim()

    assert not h.engine.leases.renew(lease.id, EPOCH)
    assert not h.engine.leases.renew("never-granted", EPOCH)
    assert h.engine.leases.next_expiry() is None


def test_releases_leave_no_deadline_behind(harness: Harness) -> None:
    harness.ask(LOCAL_OLLAMA, "a")
    harness.done("a")

    assert harness.engine.leases.next_expiry() is None


# -- bounds, estimates, stats ------------------------------------------------------


def test_queue_full_refuses_at_once_with_an_estimated_wait() -> None:
    h = Harness(max_pending_per_group=2)
    h.ask(LOCAL_OLLAMA, "first")
    h.clock.advance(4.0)
    h.done("first")  # one measured hold of 4 s
    h.ask(LOCAL_OLLAMA, "holder")
    h.ask(LOCAL_OLLAMA, "w1")
    h.ask(LOCAL_OLLAMA, "w2")

    with pytest.raises(QueueFull) as caught:
        h.ask(LOCAL_OLLAMA, "w3")

    error = caught.value
    assert (error.group, error.pending, error.max_pending) == (LOCAL_OLLAMA.id, 2, 2)
    # Two waiters ahead plus itself, one slot, 4 s per hold.
    assert error.estimated_wait == pytest.approx(12.0)
    assert str(error) == (
        f"queue of group '{LOCAL_OLLAMA.id}' is full (2 pending, bound 2); estimated wait "
        "about 12.0s. Retry later or raise queue.max_pending_per_group"
    )
    assert h.engine.stats().groups[LOCAL_OLLAMA.id].rejected == 1


def test_position_reports_waiters_ahead_and_estimated_wait() -> None:
    h = Harness()
    h.ask(LOCAL_OLLAMA, "first")
    h.clock.advance(2.0)
    h.done("first")
    h.ask(LOCAL_OLLAMA, "holder")
    h.ask(LOCAL_OLLAMA, "low", priority=1)
    h.ask(LOCAL_OLLAMA, "high", priority=9)
    h.clock.advance(0.5)

    low = h.engine.position("low")
    high = h.engine.position("high")

    assert low is not None and high is not None
    assert (low.ahead, high.ahead) == (1, 0)
    assert low.estimated_wait_seconds == pytest.approx(4.0)
    assert high.estimated_wait_seconds == pytest.approx(2.0)
    assert low.waited_seconds == pytest.approx(0.5)
    assert h.engine.position("holder") is None


def test_wait_percentiles_count_immediate_grants_as_no_wait() -> None:
    h = Harness()
    h.ask(LOCAL_OLLAMA, "first")
    for request in ("second", "third", "fourth"):
        h.ask(LOCAL_OLLAMA, request)
    for waited, holder in ((1.0, "first"), (2.0, "second"), (4.0, "third")):
        h.clock.advance(waited)
        h.done(holder)

    group = h.engine.stats().groups[LOCAL_OLLAMA.id]
    # Waits: first 0, second 1, third 3, fourth 7 (all queued at the start).
    assert (group.wait_p50_seconds, group.wait_p95_seconds) == (1.0, 7.0)


def test_estimated_wait_is_unknown_before_any_slot_was_released(harness: Harness) -> None:
    harness.ask(LOCAL_OLLAMA, "holder")
    harness.ask(LOCAL_OLLAMA, "w")

    position = harness.engine.position("w")
    assert position is not None and position.estimated_wait_seconds is None


def test_stats_follow_every_step_in_the_seed_shape(harness: Harness) -> None:
    def seed_view() -> tuple[dict[str, int], dict[str, int], int, int]:
        view = harness.engine.stats().model_dump(by_alias=True)
        active = {g: n for g, n in view["activeByGroup"].items() if n}
        pending = {g: n for g, n in view["pendingByGroup"].items() if n}
        return active, pending, view["totalActive"], view["totalPending"]

    harness.ask(LOCAL_OLLAMA, "a")
    assert seed_view() == ({LOCAL_OLLAMA.id: 1}, {}, 1, 0)
    harness.ask(ANTHROPIC, "b")
    harness.ask(ANTHROPIC, "c")
    harness.ask(LOCAL_OLLAMA, "d")
    assert seed_view() == ({LOCAL_OLLAMA.id: 1, ANTHROPIC.id: 2}, {LOCAL_OLLAMA.id: 1}, 3, 1)
    harness.done("a")
    assert seed_view() == ({LOCAL_OLLAMA.id: 1, ANTHROPIC.id: 2}, {}, 3, 0)
    for request in ("b", "c", "d"):
        harness.done(request)
    assert seed_view() == ({}, {}, 0, 0)

    local = harness.engine.stats().groups[LOCAL_OLLAMA.id]
    assert (local.kind, local.limit, local.granted, local.released) == ("local-server", 1, 2, 2)
    assert (local.peak_active, harness.engine.stats().groups[ANTHROPIC.id].peak_active) == (1, 2)


def test_can_run_immediately_follows_group_and_global_room() -> None:
    h = Harness(global_limit=2)
    assert h.engine.can_run_immediately(LOCAL_OLLAMA.id)
    h.ask(LOCAL_OLLAMA, "a")
    assert not h.engine.can_run_immediately(LOCAL_OLLAMA.id)
    assert h.engine.can_run_immediately(ANTHROPIC.id)
    h.ask(ANTHROPIC, "b")
    assert not h.engine.can_run_immediately(ANTHROPIC.id)


def test_stats_snapshot_survives_pickling(harness: Harness) -> None:
    harness.ask(LOCAL_OLLAMA, "a")
    stats = harness.engine.stats()

    assert pickle.loads(pickle.dumps(stats)) == stats


# -- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("priority", [0, 11, -1, "5", 5.0, True])
def test_priority_outside_1_to_10_is_refused(priority: object) -> None:
    with pytest.raises(InvalidPriority) as caught:
        CallOptions(priority=priority)  # type: ignore[arg-type]

    assert str(caught.value) == (
        f"priority must be an integer from 1 to 10 (higher runs first), got {priority!r}"
    )


def test_unknown_group_is_refused_and_the_known_groups_named() -> None:
    engine = SlotEngine(epoch=1)
    engine.register(LOCAL_OLLAMA)

    with pytest.raises(UnknownGroup) as caught:
        engine.acquire("local-ollama-http://elsewhere:1", "x", CallOptions(request_id="r"))

    assert str(caught.value) == (
        "unknown concurrency group 'local-ollama-http://elsewhere:1'; registered groups: "
        f"'{LOCAL_OLLAMA.id}'. Register it first (ManagerClient.register) or add its "
        "model to the settings"
    )


def test_reused_lease_id_is_refused(harness: Harness) -> None:
    harness.engine.acquire(LOCAL_OLLAMA.id, "same", CallOptions(request_id="a"))
    harness.engine.acquire(LOCAL_OLLAMA.id, "waiting", CallOptions(request_id="b"))

    for lease_id in ("same", "waiting"):
        with pytest.raises(DuplicateLease, match=f"lease id '{lease_id}' is already"):
            harness.engine.acquire(LOCAL_OLLAMA.id, lease_id, CallOptions(request_id="c"))


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def submitted(self, group: str, kind: str) -> None:
        self.events.append(("submitted", kind))

    def granted(self, group: str, kind: str, waited: float, tenant: str) -> None:
        self.events.append(("granted", waited, tenant))

    def served(self, group: str, kind: str, tenant: str, seconds: float, cost: float) -> None:
        self.events.append(("served", tenant, seconds))

    def finished(self, group: str, kind: str, outcome: str) -> None:
        self.events.append(("finished", outcome))

    def levels(self, group: str, kind: str, active: int, pending: int) -> None:
        self.events.append(("levels", active, pending))

    def budget_left(self, group: str, kind: str, requests: int | None, tokens: int | None) -> None:
        self.events.append(("budget", requests, tokens))


def test_observer_sees_every_change_in_order() -> None:
    recorder = Recorder()
    h = Harness(observer=recorder, max_pending_per_group=1)
    h.ask(LOCAL_OLLAMA, "a", flow="tenant:team-a")
    h.ask(LOCAL_OLLAMA, "b", flow="job:01000000")
    with pytest.raises(QueueFull):
        h.ask(LOCAL_OLLAMA, "c")
    h.clock.advance(2.0)
    h.done("a")

    assert recorder.events == [
        ("submitted", "local-server"), ("granted", 0.0, "team-a"), ("levels", 1, 0),
        ("submitted", "local-server"), ("levels", 1, 1),
        ("submitted", "local-server"), ("finished", "rejected"), ("levels", 1, 1),
        ("served", "team-a", 2.0), ("finished", "released"), ("levels", 0, 1),
        ("granted", 2.0, ""), ("levels", 1, 0),
    ]  # fmt: skip


# -- callers that die -------------------------------------------------------------


def test_a_dead_callers_waiters_leave_and_its_slots_pass_on(harness: Harness) -> None:
    engine = harness.engine
    held = engine.acquire(LOCAL_OLLAMA.id, "held", CallOptions(request_id="h"), "worker-dead")
    engine.acquire(LOCAL_OLLAMA.id, "waits", CallOptions(request_id="w", priority=9), "worker-dead")
    engine.acquire(LOCAL_OLLAMA.id, "other", CallOptions(request_id="o"), "worker-alive")
    assert held is not None

    passed_on = engine.drop_caller("worker-dead")

    assert engine.take_left() == {"waits": None}
    assert [lease.id for lease in passed_on] == ["other"]
    stats = engine.stats()
    assert stats.groups[LOCAL_OLLAMA.id].abandoned == 2
    assert (stats.total_active, stats.total_pending) == (1, 0)
    assert engine.drop_caller("worker-dead") == []
    # Only the dead process's work went: the living one's lease is still its own.
    assert engine.drop_caller("worker-alive") == []
    assert engine.stats().total_active == 0


def test_an_acquire_that_arrives_after_its_callers_death_is_refused(harness: Harness) -> None:
    engine = harness.engine
    engine.drop_caller("worker-dead")

    with pytest.raises(CallerGone, match="died before it started"):
        engine.acquire(LOCAL_OLLAMA.id, "late", CallOptions(request_id="l"), "worker-dead")
    assert engine.stats().groups[LOCAL_OLLAMA.id].granted == 0
