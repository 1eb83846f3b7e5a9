"""Acquires that come in a batch and must wait: answered Queued, their grants mailed to
their caller, which one waiting collect call per process empties."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from actors.engine import SlotEngine
from actors.errors import OutOfRotation
from actors.gate import SlotGate
from actors.leases import Lease
from actors.mailbox import Delivery, Queued
from actors.ops import Acquire, Cancel, DropCaller, Release, Stats, TakeOut
from actors.options import CallOptions
from tests.unit.conftest import EPOCH, LOCAL_OLLAMA

GROUP = LOCAL_OLLAMA.id


@pytest.fixture
def gate() -> Iterator[SlotGate]:
    engine = SlotEngine(epoch=EPOCH)
    engine.register(LOCAL_OLLAMA)
    gate = SlotGate(engine)
    yield gate
    gate.close()


def asked(lease_id: str, caller: str = "p1", priority: int = 5) -> Acquire:
    return Acquire(GROUP, lease_id, CallOptions(request_id=lease_id, priority=priority), caller)


def held(gate: SlotGate) -> Lease:
    """The group's only slot, held by process p0."""
    [lease] = gate.apply([asked("holder", "p0")])
    assert isinstance(lease, Lease)
    return lease


async def test_an_acquire_that_finds_room_is_answered_with_its_lease(gate: SlotGate) -> None:
    [lease] = gate.apply([asked("a")])

    assert isinstance(lease, Lease)
    assert lease.id == "a"


async def test_a_waiting_acquire_is_queued_and_its_grant_mailed_to_its_caller(
    gate: SlotGate,
) -> None:
    holder = held(gate)

    assert gate.apply([asked("a"), asked("b", "p2")]) == [Queued(EPOCH), Queued(EPOCH)]
    gate.apply([Release(holder.id, holder.epoch)])

    delivery = await gate.collect("p1", EPOCH, read=-1, wait=0)
    [(number, lease_id, lease)] = delivery.items
    assert (number, lease_id) == (0, "a")
    assert isinstance(lease, Lease)
    assert lease.id == "a"
    # Nothing for the other process yet: its waiter is still queued.
    assert (await gate.collect("p2", EPOCH, read=-1, wait=0)).items == ()


async def test_a_collect_waits_for_the_next_grant_without_polling(gate: SlotGate) -> None:
    holder = held(gate)
    gate.apply([asked("a")])
    collecting = asyncio.create_task(gate.collect("p1", EPOCH, read=-1, wait=30))
    await asyncio.sleep(0.01)
    assert not collecting.done()

    gate.apply([Release(holder.id, holder.epoch)])

    delivery = await asyncio.wait_for(collecting, timeout=5)
    assert [lease_id for _, lease_id, _ in delivery.items] == ["a"]


async def test_items_stay_until_the_caller_says_it_read_them(gate: SlotGate) -> None:
    """A reply lost on its way is sent again: only the items up to ``read`` are dropped."""
    holder = held(gate)
    gate.apply([asked("a"), asked("b")])
    gate.apply([Release(holder.id, holder.epoch)])
    first = await gate.collect("p1", EPOCH, read=-1, wait=0)
    assert await gate.collect("p1", EPOCH, read=-1, wait=0) == first

    [(number, _, lease)] = first.items
    assert isinstance(lease, Lease)
    gate.apply([Release(lease.id, lease.epoch)])
    second = await gate.collect("p1", EPOCH, read=number, wait=0)
    assert [(n, lease_id) for n, lease_id, _ in second.items] == [(1, "b")]


async def test_a_collect_that_names_another_epoch_gets_the_managers_at_once(
    gate: SlotGate,
) -> None:
    """A caller that knows no epoch yet, or an old one (the manager restarted), learns it."""
    assert await gate.collect("p1", None, read=-1, wait=30) == Delivery(EPOCH)
    assert await gate.collect("p1", EPOCH - 1, read=5, wait=30) == Delivery(EPOCH)


async def test_a_waiter_failed_by_the_manager_gets_its_error_by_mail(gate: SlotGate) -> None:
    held(gate)
    gate.apply([asked("a")])

    gate.apply([TakeOut(GROUP, "connection refused", 30.0)])

    [(_, lease_id, error)] = (await gate.collect("p1", EPOCH, read=-1, wait=0)).items
    assert lease_id == "a"
    assert isinstance(error, OutOfRotation)


async def test_a_cancelled_waiter_gets_no_mail_and_its_slot_passes_on(gate: SlotGate) -> None:
    holder = held(gate)
    gate.apply([asked("a"), asked("b")])

    gate.apply([Cancel("a"), Release(holder.id, holder.epoch)])

    items = (await gate.collect("p1", EPOCH, read=-1, wait=0)).items
    assert [lease_id for _, lease_id, _ in items] == ["b"]


async def test_a_dead_callers_mailbox_goes_with_its_waiters(gate: SlotGate) -> None:
    holder = held(gate)
    gate.apply([asked("a"), asked("b", "p2")])
    collecting = asyncio.create_task(gate.collect("p1", EPOCH, read=-1, wait=30))
    await asyncio.sleep(0.01)

    gate.apply([DropCaller("p1")])
    gate.forget_caller("p1")

    assert (await asyncio.wait_for(collecting, timeout=5)).items == ()
    gate.apply([Release(holder.id, holder.epoch)])
    assert [lease_id for _, lease_id, _ in (await gate.collect("p2", EPOCH, -1, 0)).items] == ["b"]
    [stats] = gate.apply([Stats()])
    assert stats.total_pending == 0


async def test_an_acquire_that_may_wait_must_name_its_caller(gate: SlotGate) -> None:
    [error] = gate.apply([Acquire(GROUP, "anonymous", CallOptions())])

    assert isinstance(error, ValueError)
    assert str(error) == "an acquire that may wait names its caller"
