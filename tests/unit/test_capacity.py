"""A shard's part of a global cap another shard keeps: the engine grants within its
allowance, says what its calls want, and lets the slots that must go back go as calls end."""

from __future__ import annotations

from actors.holdings import Want
from actors.ops import Allow, Demand, HeldBy
from tests.unit.conftest import ANTHROPIC, LOCAL_OLLAMA, OPENAI, Harness


def shard() -> Harness:
    """A shard under a global cap of 10 that holds none of it yet."""
    harness = Harness(global_limit=10)
    harness.engine.apply(Allow(0))
    return harness


def allow(harness: Harness, slots: int, **kwargs: object) -> list[str]:
    return harness._record(harness.engine.apply(Allow(slots, **kwargs)))  # type: ignore[arg-type]


def test_a_shard_grants_nothing_past_the_slots_it_holds_and_says_who_waits_for_them() -> None:
    h = shard()
    h.ask(OPENAI, "low", priority=3)
    h.ask(ANTHROPIC, "high", priority=8)
    h.ask(LOCAL_OLLAMA, "first")
    h.ask(LOCAL_OLLAMA, "second")  # its group's limit (1) keeps it waiting, not the cap

    assert h.engine.apply(Demand()) == Want(held=0, blocked=3, best=8, given_up=0)
    # Each slot it is lent goes to its best waiter.
    assert allow(h, 1) == ["high"]
    assert h.engine.apply(Demand()) == Want(held=1, blocked=2, best=5, given_up=0)
    assert allow(h, 3) == ["first", "low"]
    assert h.engine.apply(Demand()) == Want(held=3, blocked=0, best=None, given_up=0)


def test_a_slot_that_goes_back_is_not_granted_again_here() -> None:
    h = shard()
    h.ask(OPENAI, "a")
    h.ask(OPENAI, "b")
    allow(h, 2, returning=1)
    h.ask(OPENAI, "waits")

    # One call ends: its slot is one that goes back, so the waiter here does not get it.
    assert h.done("a") == []
    assert h.engine.apply(Demand()) == Want(held=1, blocked=1, best=5, given_up=1)
    assert h.engine.holdings.allowance == 1
    # The next call's slot may back a new call.
    assert h.done("b") == ["waits"]


def test_slots_counted_before_calls_ended_are_lowered_by_those_calls() -> None:
    h = shard()
    h.ask(OPENAI, "a")
    h.ask(OPENAI, "b")
    allow(h, 2, returning=2)
    seen = h.engine.apply(Demand()).given_up
    h.done("a")  # gives its slot up while the shard counts 3 slots, 2 returning

    allow(h, 3, returning=2, seen=seen)

    assert (h.engine.holdings.allowance, h.engine.holdings.returning) == (2, 1)


def test_what_a_caller_holds_and_waits_for_is_told_by_its_id() -> None:
    h = Harness(global_limit=1)
    held = h.engine.acquire(OPENAI.id, "held-1", caller="shard:one")
    h.engine.acquire(OPENAI.id, "waits-1", caller="shard:one")
    h.engine.acquire(OPENAI.id, "waits-2", caller="someone-else")

    assert h.engine.apply(HeldBy("shard:one")) == ([held], ["waits-1"])
