"""A group's rate learned from its provider's 429s, and the pause they ask for, on a fake clock."""

from __future__ import annotations

import pytest

from actors.adaptive import BACKOFF, MIN_SAMPLE, RECOVERY_CALLS
from actors.budget import BudgetLimits
from actors.options import CallOptions
from pipelines.view import render
from tests.unit.conftest import ANTHROPIC, OPENAI, Harness


def flood(h: Harness, calls: int) -> None:
    """``calls`` calls of OpenAI's group (no limit, no budget), each granted at once."""
    for i in range(calls):
        h.ask(OPENAI, f"r{i}")
    assert all(h.granted_now(f"r{i}") for i in range(calls))


def throttled(h: Harness, request: str, retry_after: float | None = 1.0) -> None:
    h.engine.throttled(OPENAI.id, h.leases[request].id, retry_after)


def test_a_429_pauses_the_whole_group_until_its_retry_after() -> None:
    h = Harness()
    h.ask(OPENAI, "a")
    assert not h.engine.group_info(OPENAI.id).gated

    info = h.engine.throttled(OPENAI.id, h.leases["a"].id, retry_after=2.0)
    h.ask(OPENAI, "b")

    # From now on its callers ask and wait; nobody is granted before the provider said.
    assert info.gated
    assert not h.granted_now("b")
    stats = h.engine.stats().groups[OPENAI.id]
    assert (stats.paused_seconds, stats.throttled, stats.learned_rpm) == (2.0, 1, None)
    assert h.engine.timekeeper.next_wake() == h.clock.now + 2.0
    h.clock.advance(2.0)
    assert h._record(h.engine.timekeeper.tick()) == ["b"]


def test_the_first_429_after_a_flood_sets_the_rate_to_the_last_minutes_grants() -> None:
    h = Harness()
    flood(h, 40)

    throttled(h, "r0", retry_after=1.0)
    for request in ("x", "y"):
        h.ask(OPENAI, request)

    rate = 40  # a minute: one in 1.5 s
    assert h.engine.stats().groups[OPENAI.id].learned_rpm == rate
    # The provider's bucket is empty: ours starts empty too (and the pause is shorter).
    assert h.engine.timekeeper.next_wake() == pytest.approx(h.clock.now + 60 / rate)
    h.clock.advance(60 / rate)
    assert h._record(h.engine.timekeeper.tick()) == ["x"]
    h.clock.advance(60 / rate)
    assert h._record(h.engine.timekeeper.tick()) == ["y"]


def test_a_429_after_fewer_calls_than_the_sample_only_pauses() -> None:
    h = Harness()
    flood(h, MIN_SAMPLE - 1)

    throttled(h, "r0")

    assert h.engine.stats().groups[OPENAI.id].learned_rpm is None


def test_the_rate_is_lowered_once_a_round_and_comes_back_with_each_call_that_succeeds() -> None:
    h = Harness()
    flood(h, 40)
    throttled(h, "r0")  # 40 a minute
    h.clock.advance(2.0)
    h.ask(OPENAI, "later")  # granted after that: its 429 lowers the rate
    throttled(h, "later")
    throttled(h, "r1")  # granted before that lowering: nothing new
    assert h.engine.stats().groups[OPENAI.id].learned_rpm == 40 * BACKOFF  # 32

    for i in range(2, 40):
        h.done(f"r{i}")  # 38 calls without a 429: +40 * (1 - BACKOFF) / RECOVERY_CALLS each
    h.done("later")  # its 429 is no success
    rpm = 40 * BACKOFF + 38 * 40 * (1 - BACKOFF) / RECOVERY_CALLS
    assert h.engine.stats().groups[OPENAI.id].learned_rpm == round(rpm)  # 33.52


def test_a_calls_429_is_no_success_to_learn_from() -> None:
    h = Harness()
    flood(h, 40)
    throttled(h, "r0")

    h.done("r0")

    assert h.engine.stats().groups[OPENAI.id].learned_rpm == 40


def test_the_learned_rate_never_passes_the_configured_one() -> None:
    h = Harness(group_budgets={OPENAI.id: BudgetLimits(rpm=30)})
    flood(h, 29)  # all the configured bucket holds
    throttled(h, "r0")  # the provider's limit is lower than configured
    assert h.engine.stats().groups[OPENAI.id].learned_rpm == 29

    for i in range(1, 29):
        h.done(f"r{i}")
    for i in range(200):  # enough successes to climb past 30
        h.clock.advance(10.0)
        h.ask(OPENAI, f"s{i}")
        h.done(f"s{i}")

    assert h.engine.stats().groups[OPENAI.id].learned_rpm == 30


def test_a_call_that_already_started_is_counted_even_while_its_group_is_paused() -> None:
    """A caller that still took the group for one where nobody waits started its call."""
    h = Harness()
    flood(h, 40)
    throttled(h, "r0", retry_after=30.0)

    lease = h.engine.acquire(OPENAI.id, "started", CallOptions(), started=True)

    assert lease is not None
    assert h.engine.stats().groups[OPENAI.id].active == 41


def test_after_the_pause_the_highest_priority_goes_first() -> None:
    h = Harness()
    h.ask(OPENAI, "a")
    throttled(h, "a", retry_after=5.0)
    for request, priority in (("low", 1), ("high", 9), ("mid", 5)):
        h.ask(OPENAI, request, priority)

    h.clock.advance(5.0)

    assert h._record(h.engine.timekeeper.tick()) == ["high", "mid", "low"]


def test_the_stats_table_shows_the_learned_rate_and_the_pause() -> None:
    h = Harness()
    flood(h, 40)
    throttled(h, "r0", retry_after=4.0)

    rows = {line.split()[0]: line for line in render(h.engine.stats()).splitlines()}

    assert rows[OPENAI.id].endswith("0/40 rpm (learned), paused 4.0 s")
    assert rows[ANTHROPIC.id].endswith(" -")
