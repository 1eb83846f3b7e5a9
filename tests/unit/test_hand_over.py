"""A holder's process passing its slot straight to its own waiter next in line: the engine
names that waiter, and counts the hand-over it hears of afterwards, on a fake clock."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from actors.budget import BudgetLimits
from actors.engine import SlotEngine
from actors.errors import LeaseRetired
from actors.gate import SlotGate
from actors.journal import GroupRecord, HeldLease
from actors.leases import Lease
from actors.ops import Acquire, Release
from actors.options import CallOptions
from tests.unit.conftest import EPOCH, LOCAL_OLLAMA, FakeClock

GROUP = LOCAL_OLLAMA.id
_ids = itertools.count(1)


class Processes:
    """An engine whose callers are named processes, each asking for its own slots."""

    def __init__(self, **engine_kwargs: object) -> None:
        self.clock = FakeClock()
        self.engine = SlotEngine(epoch=EPOCH, clock=self.clock, **engine_kwargs)  # type: ignore[arg-type]
        self.engine.register(LOCAL_OLLAMA)

    def ask(self, caller: str, priority: int = 5) -> tuple[str, Lease | None]:
        lease_id = f"{caller}-{next(_ids)}"
        options = CallOptions(priority=priority, request_id=lease_id)
        return lease_id, self.engine.acquire(GROUP, lease_id, options, caller)

    def held(self, caller: str) -> Lease:
        _, lease = self.ask(caller)
        assert lease is not None
        return lease

    def levels(self) -> tuple[int, int]:
        stats = self.engine.stats()
        return stats.active_by_group[GROUP], stats.pending_by_group[GROUP]


def test_the_waiter_a_release_would_grant_is_named_to_its_process_while_it_holds_a_slot() -> None:
    p = Processes()
    p.held("a")
    p.ask("b", priority=5)
    best, _ = p.ask("a", priority=8)

    assert p.engine.next_in_line() == {GROUP: (best, "a")}


def test_no_waiter_is_named_while_the_best_belongs_to_a_process_holding_no_slot() -> None:
    p = Processes()
    p.held("a")
    p.ask("a", priority=5)
    p.ask("b", priority=9)  # b's call goes next, and only the manager can grant it

    assert p.engine.next_in_line() == {}


@pytest.mark.parametrize(
    "engine_kwargs",
    [
        {"global_limit": 4},  # a freed slot may go to another group's waiter
        {"group_budgets": {GROUP: BudgetLimits(rpm=600)}},  # the grant waits for time too
        {"hand_over": False},
    ],
    ids=["global cap", "budget", "hand-over off"],
)
def test_no_waiter_is_named_where_the_next_grant_is_the_managers_to_time(
    engine_kwargs: dict[str, object],
) -> None:
    p = Processes(group_limits={GROUP: 1}, **engine_kwargs)
    p.held("a")
    p.ask("a")

    assert p.engine.next_in_line() == {}


def test_a_hand_over_gives_the_holders_slot_to_the_named_waiter_and_counts_both() -> None:
    p = Processes()
    holder = p.held("a")
    successor, _ = p.ask("a", priority=8)
    p.ask("b", priority=5)

    granted = p.engine.hand_overs.hand_over(GROUP, holder.id, holder.epoch, successor, "a")

    assert [lease.id for lease in granted] == [successor]
    assert p.levels() == (1, 1)
    group = p.engine.stats().groups[GROUP]
    assert (group.released, group.granted, group.handed_over) == (1, 2, 1)
    assert p.engine.stats().overtaken == 0
    # The successor's process holds a slot no more: nobody is named until it does.
    assert p.engine.next_in_line() == {}


def test_a_successor_overtaken_on_the_way_keeps_the_slot_and_the_limit_holds() -> None:
    p = Processes()
    holder = p.held("a")
    named, _ = p.ask("a", priority=5)
    better, _ = p.ask("b", priority=9)  # arrives while the notice naming `named` travels

    granted = p.engine.hand_overs.hand_over(GROUP, holder.id, holder.epoch, named, "a")

    # The named call runs already in a's process: it is counted, past nobody's slot.
    assert [lease.id for lease in granted] == [named]
    assert p.engine.stats().overtaken == 1
    assert p.levels() == (1, 1)
    # The one that overtook it is next.
    assert [lease.id for lease in p.engine.release(granted[0].id, granted[0].epoch)] == [better]


def test_a_successor_whose_wait_timed_out_meanwhile_is_counted_as_holding_the_slot() -> None:
    p = Processes()
    holder = p.held("a")
    successor, _ = p.ask("a")
    p.engine.cancel(successor, timed_out=True)

    granted = p.engine.hand_overs.hand_over(GROUP, holder.id, holder.epoch, successor, "a")

    assert [lease.id for lease in granted] == [successor]
    assert p.levels() == (1, 0)
    assert p.engine.release(successor, holder.epoch) == []
    assert p.levels() == (0, 0)


def test_a_successor_its_process_cancelled_gets_no_slot_and_the_next_waiter_does() -> None:
    p = Processes()
    holder = p.held("a")
    successor, _ = p.ask("a", priority=8)
    other, _ = p.ask("b", priority=5)
    p.engine.cancel(successor)  # crossed the hand-over on its way

    granted = p.engine.hand_overs.hand_over(GROUP, holder.id, holder.epoch, successor, "a")

    assert [lease.id for lease in granted] == [other]
    assert p.levels() == (1, 0)


def test_a_successor_granted_by_the_manager_already_leaves_the_freed_slot_to_the_next() -> None:
    p = Processes(group_limits={GROUP: 2})
    first, second = p.held("a"), p.held("a")
    successor, _ = p.ask("a", priority=8)
    other, _ = p.ask("b", priority=5)
    (normal,) = p.engine.release(second.id, second.epoch)  # the manager granted it
    assert normal.id == successor

    granted = p.engine.hand_overs.hand_over(GROUP, first.id, first.epoch, successor, "a")

    assert [lease.id for lease in granted] == [other]
    assert p.levels() == (2, 0)


def test_the_successor_holds_its_slot_under_the_epoch_its_process_was_granted() -> None:
    p = Processes()
    holder = p.held("a")
    successor, _ = p.ask("a")
    old_epoch = holder.epoch - 1  # a lease restored by a restarted manager keeps its epoch

    p.engine.hand_overs.hand_over(GROUP, holder.id, holder.epoch, successor, "a")
    assert p.engine.leases.renew(successor, holder.epoch)
    assert not p.engine.leases.renew(successor, old_epoch)


def test_a_successor_granted_meanwhile_after_a_restart_is_held_under_the_handed_epoch() -> None:
    """The slot handed over was restored from the manager's last life, and the manager
    granted the successor a slot of its own meanwhile: its process made its lease with the
    handed slot's epoch, and its release under that epoch frees the slot (else held by a
    live process, it would never come back)."""
    engine = SlotEngine(epoch=EPOCH, group_limits={GROUP: 2})
    restored = HeldLease(epoch=EPOCH - 1, caller="a")
    engine.restore(GroupRecord(LOCAL_OLLAMA, {"a-restored": restored}))
    granted = engine.acquire(GROUP, "a-next", CallOptions(), "a")
    assert granted is not None
    assert granted.epoch == EPOCH

    engine.hand_overs.hand_over(GROUP, "a-restored", EPOCH - 1, "a-next", "a")
    engine.release("a-next", EPOCH - 1)

    assert engine.stats().total_active == 0


async def test_a_process_is_told_when_a_better_waiter_of_another_takes_its_place() -> None:
    engine = SlotEngine(epoch=EPOCH)
    engine.register(LOCAL_OLLAMA)
    gate = SlotGate(engine)
    try:
        holder = await gate.acquire(Acquire(GROUP, "a-holder", CallOptions(), "a"))
        mine = asyncio.create_task(gate.acquire(Acquire(GROUP, "a-next", CallOptions(), "a")))
        told = await asyncio.wait_for(gate.next_in_line("a", {}, wait=30), timeout=5)
        assert told == {GROUP: "a-next"}

        question = asyncio.create_task(gate.next_in_line("a", told, wait=30))
        await asyncio.sleep(0)
        assert not question.done()  # nothing changed for a
        theirs = asyncio.create_task(
            gate.acquire(Acquire(GROUP, "b-next", CallOptions(priority=9), "b"))
        )

        assert await asyncio.wait_for(question, timeout=5) == {}
        gate.apply([Release(holder.id, holder.epoch)])
        assert (await asyncio.wait_for(theirs, timeout=5)).id == "b-next"
        mine.cancel()
    finally:
        gate.close()


def test_an_acquire_arriving_after_its_slot_was_handed_over_and_released_gets_no_slot() -> None:
    # The successor's acquire was slow to arrive (or Ray retried it after a restart): the
    # hand-over granted it first, and its call ran and gave the slot back meanwhile.
    p = Processes()
    holder = p.held("a")
    successor = "a-late"
    p.engine.hand_overs.hand_over(GROUP, holder.id, EPOCH, successor, "a")
    p.engine.release(successor, EPOCH)

    with pytest.raises(LeaseRetired):
        p.engine.acquire(GROUP, successor, CallOptions(request_id=successor), "a")
    assert p.levels() == (0, 0)
    assert p.engine.stats().late_acquires == 1
