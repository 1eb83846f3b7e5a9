"""A restarted manager's memory: the journal writes group records, a new engine restores them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from actors.engine import SlotEngine
from actors.gate import SlotGate
from actors.journal import GroupRecord, HeldLease, decode, encode
from actors.options import CallOptions
from tests.unit.conftest import ANTHROPIC, EPOCH, LOCAL_OLLAMA, Harness

GROUP = LOCAL_OLLAMA.id


class MemoryStore:
    """The journal's store in memory; ``hold`` keeps writes from landing until opened."""

    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}
        self.open = threading.Event()
        self.open.set()

    def put(self, key: str, value: bytes) -> None:
        self.open.wait()
        self.records[key] = value

    def load(self) -> dict[str, bytes]:
        return dict(self.records)

    def clear(self) -> None:
        self.records.clear()


def restarted(store: MemoryStore, **engine_kwargs: object) -> Harness:
    """A new engine (a later epoch) that restores every record in ``store``."""
    harness = Harness(**engine_kwargs)
    harness.engine.epoch = EPOCH + 1
    for data in store.load().values():
        harness.engine.restore(decode(data))
    return harness


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def gate(store: MemoryStore) -> Iterator[SlotGate]:
    engine = SlotEngine(epoch=EPOCH)
    engine.register(LOCAL_OLLAMA)
    gate = SlotGate(engine, store)
    yield gate
    gate.close()


def record(store: MemoryStore, group: str) -> GroupRecord:
    return decode(store.records[group])


async def test_a_capped_lease_is_handed_out_only_once_written(
    gate: SlotGate, store: MemoryStore
) -> None:
    store.open.clear()
    granted = asyncio.create_task(gate.acquire(GROUP, "a", CallOptions(request_id="r")))
    await asyncio.sleep(0.05)
    assert not granted.done()  # granted in the engine, not yet in the store

    store.open.set()
    lease = await asyncio.wait_for(granted, 5)

    assert record(store, GROUP).held == {lease.id: HeldLease(EPOCH)}


async def test_an_unlimited_groups_lease_does_not_wait_for_the_store(
    gate: SlotGate, store: MemoryStore
) -> None:
    await gate.registered(ANTHROPIC)
    store.open.clear()

    lease = await asyncio.wait_for(gate.acquire(ANTHROPIC.id, "a"), 5)

    assert lease.group == ANTHROPIC.id
    store.open.set()


async def test_register_returns_once_the_group_is_written(
    gate: SlotGate, store: MemoryStore
) -> None:
    await gate.registered(ANTHROPIC)

    assert record(store, ANTHROPIC.id).spec == ANTHROPIC


async def test_a_burst_of_grants_and_releases_ends_written_as_it_is(
    gate: SlotGate, store: MemoryStore
) -> None:
    leases = []
    for n in range(20):
        task = asyncio.create_task(gate.acquire(GROUP, f"l{n}", CallOptions(request_id=f"r{n}")))
        if n == 0:
            leases.append(await task)
        else:
            leases.append(task)
    for n in range(20):
        lease = leases[n] if n == 0 else await asyncio.wait_for(leases[n], 5)
        gate.release(lease.id, lease.epoch)
    await gate.registered(LOCAL_OLLAMA)  # waits for every write before it

    assert record(store, GROUP).held == {}


async def test_a_restarted_engine_holds_the_leases_until_their_holders_release(
    gate: SlotGate, store: MemoryStore
) -> None:
    held = await gate.acquire(GROUP, "held", CallOptions(request_id="holder"))

    after = restarted(store)
    waiter = after.ask(LOCAL_OLLAMA, "new")

    assert not after.granted_now("new")  # the slot is still the old holder's
    assert after.engine.renew(held.id, held.epoch)  # the holder lives on
    granted = after.engine.release(held.id, held.epoch)
    assert [lease.id for lease in granted] == [waiter]
    assert after.engine.stats().active_by_group[GROUP] == 1


async def test_a_restored_lease_whose_holder_died_expires_after_one_ttl(
    gate: SlotGate, store: MemoryStore
) -> None:
    await gate.acquire(GROUP, "dead", CallOptions(request_id="holder"))

    after = restarted(store, lease_ttl=10.0)
    after.ask(LOCAL_OLLAMA, "new")
    after.clock.advance(9.9)
    assert after.reclaim() == []

    after.clock.advance(0.2)
    assert after.reclaim() == ["new"]
    assert after.engine.stats().groups[GROUP].expired == 1


async def test_an_acquire_retried_after_its_grant_was_written_gets_that_lease(
    gate: SlotGate, store: MemoryStore
) -> None:
    first = await gate.acquire(GROUP, "lost-answer", CallOptions(request_id="r"))

    after = restarted(store)
    again = after.engine.acquire(GROUP, "lost-answer", CallOptions(request_id="r"))

    assert again is not None
    assert (again.id, again.epoch) == (first.id, first.epoch)
    stats = after.engine.stats()
    assert (stats.active_by_group[GROUP], stats.total_pending) == (1, 0)


def test_a_group_registered_at_run_time_is_known_after_a_restart(store: MemoryStore) -> None:
    engine = SlotEngine(epoch=EPOCH)
    engine.register(LOCAL_OLLAMA)
    for group in engine.take_changed():
        store.put(group, encode(engine.record(group)))

    after = SlotEngine(epoch=EPOCH + 1)
    for data in store.load().values():
        after.restore(decode(data))

    assert after.group_info(GROUP).limit == 1


async def test_a_restored_lease_keeps_its_caller_whose_death_frees_it(
    gate: SlotGate, store: MemoryStore
) -> None:
    held = await gate.acquire(GROUP, "held", CallOptions(request_id="r"), "worker-1")
    assert record(store, GROUP).held == {held.id: HeldLease(EPOCH, "worker-1")}

    after = restarted(store)
    waiter = after.ask(LOCAL_OLLAMA, "new")
    _, handed_on = after.engine.drop_caller("worker-1")

    assert [lease.id for lease in handed_on] == [waiter]
