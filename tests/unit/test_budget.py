"""Requests- and tokens-per-minute budgets in the engine, on a fake clock."""

from __future__ import annotations

import pytest

from actors.budget import MARGIN_SECONDS, TRIP_SECONDS, Bucket, BudgetLimits, estimate_tokens
from actors.leases import TokensUsed
from pipelines.view import render
from providers.testing.fake_llm import Say
from providers.testing.probe_server import Received
from providers.testing.rate_limits import USAGE, ProviderLimits
from tests.unit.conftest import ANTHROPIC, OPENAI, Harness


def budgeted(rpm: int | None = None, tpm: int | None = None) -> Harness:
    """OpenAI's group (no concurrency limit) with a budget."""
    return Harness(group_budgets={OPENAI.id: BudgetLimits(rpm=rpm, tpm=tpm)})


def test_a_bucket_refills_at_its_rate_up_to_a_minutes_worth_less_the_margin() -> None:
    assert Bucket.full(60, now=0.0).capacity == 60 * (1 - MARGIN_SECONDS / 60)  # 59.5
    bucket = Bucket(60, level=0.0, at=0.0)

    assert bucket.ready_at(1, now=0.0) == pytest.approx(1.0)  # one a second
    assert bucket.left(now=30.0) == 30
    assert bucket.left(now=600.0) == 59
    assert bucket.ready_at(1_000, now=600.0) == 600.0  # larger than a minute: a full bucket


def test_the_estimate_is_the_prompt_at_four_characters_a_token_plus_max_tokens() -> None:
    assert estimate_tokens(prompt_chars=401, max_tokens=100) == 201


def test_requests_past_the_rpm_wait_until_the_bucket_refills() -> None:
    h = budgeted(rpm=60)
    for i in range(61):
        h.ask(OPENAI, f"r{i}")

    # 59.5 requests in the full bucket: 59 go at once (and answer), the next in half a second.
    assert [i for i in range(61) if not h.granted_now(f"r{i}")] == [59, 60]
    for i in range(59):
        h.done(f"r{i}")
    assert h.engine.timekeeper.next_wake() == pytest.approx(h.clock.now + 0.5)
    h.clock.advance(0.49)
    assert h._record(h.engine.timekeeper.tick()) == []
    h.clock.advance(0.01)
    assert h._record(h.engine.timekeeper.tick()) == ["r59"]
    h.clock.advance(1.0)  # one a second from then on
    assert h._record(h.engine.timekeeper.tick()) == ["r60"]


def test_with_the_bucket_empty_the_highest_priority_gets_the_next_tokens() -> None:
    h = budgeted(rpm=2)
    h.ask(OPENAI, "first")  # the bucket holds 1.98 requests: empty after this one
    for request, priority in (("low", 2), ("high", 9), ("mid", 5), ("high-2", 9)):
        h.ask(OPENAI, request, priority)

    order = []
    for _ in range(4):
        h.clock.advance(30)
        order += h._record(h.engine.timekeeper.tick())

    # Budget, not slots, held them back; it goes by priority, first come within one.
    assert order == ["high", "high-2", "mid", "low"]


def test_a_small_call_does_not_pass_a_large_one_waiting_for_tokens() -> None:
    h = budgeted(tpm=1_000)
    h.ask(OPENAI, "big", tokens=900)
    h.done("big")  # it used what it was charged
    h.ask(OPENAI, "bigger", tokens=800)  # 100 left: waits
    h.ask(OPENAI, "tiny", tokens=10)  # would fit, but someone waits before it

    assert (h.granted_now("bigger"), h.granted_now("tiny")) == (False, False)
    h.clock.advance(42.5)  # 91.7 left + 708.3 refilled: "bigger" fits, "tiny" after it
    assert h._record(h.engine.timekeeper.tick()) == ["bigger"]


def test_a_call_on_its_way_holds_its_charge_until_it_answers() -> None:
    h = budgeted(rpm=60)
    start = h.clock.now
    for i in range(59):
        h.ask(OPENAI, f"r{i}")  # 0.5 of a request left, 59 calls on their way
    h.ask(OPENAI, "late")

    # However long they take, the bucket does not refill what they were charged.
    h.clock.advance(TRIP_SECONDS / 2)
    assert (h._record(h.engine.timekeeper.tick()), h.engine.timekeeper.next_wake()) == (
        [],
        start + TRIP_SECONDS,
    )
    # One answered: it reached the provider, whose bucket refills it from now.
    assert h.done("r0") == []
    assert h.engine.timekeeper.next_wake() == pytest.approx(h.clock.now + 0.5)
    h.clock.advance(0.5)
    assert h._record(h.engine.timekeeper.tick()) == ["late"]


def test_a_call_is_held_no_longer_than_its_trip_time() -> None:
    h = budgeted(rpm=60)
    start = h.clock.now
    for i in range(59):
        h.ask(OPENAI, f"r{i}")
    h.ask(OPENAI, "late")

    # None answers; by TRIP_SECONDS after their grant they have reached the provider.
    assert h.engine.timekeeper.next_wake() == start + TRIP_SECONDS
    h.clock.advance(TRIP_SECONDS)
    assert h._record(h.engine.timekeeper.tick()) == []  # 0.5 of a request: half a second to go
    h.clock.advance(0.5)
    assert h._record(h.engine.timekeeper.tick()) == ["late"]


def test_a_provider_idle_until_the_first_calls_reach_it_refuses_none_after_them() -> None:
    """The provider's full bucket starts refilling when a call reaches it, raygate's when
    the call is granted: with three seconds between, the holds keep the two in step."""
    h = budgeted(rpm=60)
    provider = ProviderLimits(rpm=60, clock=h.clock)
    call = Received("/v1/chat/completions", {}, {"messages": [{"content": "hi"}]})
    for i in range(69):
        h.ask(OPENAI, f"r{i}")
    sent = list(h.leases)  # 59: the full bucket
    h.clock.advance(3.0)  # their trip

    while True:
        for request in sent:
            assert provider(call) == Say("ok", *USAGE), request
            h.done(request)  # answered at once
        if (wake := h.engine.timekeeper.next_wake()) is None:
            break
        h.clock.now = wake
        sent = h._record(h.engine.timekeeper.tick())

    assert (provider.served, provider.limited) == (69, 0)


def test_the_usage_an_answer_reports_corrects_the_estimate() -> None:
    h = budgeted(tpm=1_000)
    h.ask(OPENAI, "a", tokens=600)
    h.ask(OPENAI, "b", tokens=600)
    assert not h.granted_now("b")

    lease = h.leases.pop("a")
    # It used 100 of the 600 it was charged: 500 come back, and "b" fits now.
    used = TokensUsed(input=60, output=40)
    assert h._record(h.engine.release(lease.id, lease.epoch, used)) == ["b"]
    stats = h.engine.stats().groups[OPENAI.id]
    assert (stats.tpm, stats.tokens_left) == (1_000, int(Bucket.full(1_000, 0).capacity) - 700)


def test_a_budgeted_group_is_gated_and_an_unbudgeted_one_is_not() -> None:
    h = budgeted(rpm=10)
    assert h.engine.group_info(OPENAI.id).gated
    assert not Harness().engine.group_info(OPENAI.id).gated


def test_a_budget_wait_under_a_full_global_cap_waits_for_a_release_not_the_clock() -> None:
    h = Harness(global_limit=1, group_budgets={OPENAI.id: BudgetLimits(rpm=60)})
    h.ask(OPENAI, "a")
    h.ask(OPENAI, "b")

    assert h.engine.timekeeper.next_wake() == h.engine.leases.next_expiry()  # the lease's ttl only
    h.clock.advance(5)
    assert h.done("a") == ["b"]


def test_the_stats_table_shows_what_each_budget_has_left() -> None:
    h = budgeted(rpm=60, tpm=1_000)
    h.ask(OPENAI, "a", tokens=100)

    rows = {line.split()[0]: line for line in render(h.engine.stats()).splitlines()}

    assert rows[OPENAI.id].endswith("58/60 rpm, 891/1000 tpm")  # less the margin
    assert rows[ANTHROPIC.id].endswith(" -")


def test_a_waiters_estimated_wait_counts_the_budget_it_waits_for() -> None:
    h = budgeted(rpm=60)
    for i in range(62):
        h.ask(OPENAI, f"r{i}")  # 59 granted, 3 waiting; no slot released yet

    position = h.engine.position("r61")

    # The third in line: 3 requests to come in, 0.5 of one already there, 1 a second.
    assert position is not None
    assert position.ahead == 2
    assert position.estimated_wait_seconds == pytest.approx(2.5)
