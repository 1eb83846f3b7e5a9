"""A restarted manager's memory: the journal writes each change ahead and copies it
behind, a new engine restores the groups' records they make up."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.engine import SlotEngine
from actors.gate import SlotGate
from actors.journal import (
    Entries,
    FileStore,
    GroupRecord,
    HeldLease,
    Journal,
    held_entry,
    recorded,
    records,
    spec_entry,
)
from actors.ops import Acquire, Register, Release
from actors.options import CallOptions
from tests.unit.conftest import ANTHROPIC, EPOCH, LOCAL_OLLAMA, Harness

GROUP = LOCAL_OLLAMA.id


class MemoryStore:
    """A journal's store in memory; clearing ``open`` keeps writes from landing until set."""

    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}
        self.writes: list[Entries] = []
        self.open = threading.Event()
        self.open.set()

    def write(self, entries: Entries) -> None:
        self.open.wait()
        self.writes.append(entries)
        for key, value in entries.items():
            if value is None:
                self.records.pop(key, None)
            else:
                self.records[key] = value

    def load(self) -> dict[str, bytes]:
        return dict(self.records)

    def clear(self) -> None:
        self.records.clear()


def restarted(store: MemoryStore, **engine_kwargs: object) -> Harness:
    """A new engine (a later epoch) that restores every record in ``store``."""
    harness = Harness(**engine_kwargs)
    harness.engine.epoch = EPOCH + 1
    for record in records(store.load()).values():
        harness.engine.restore(record)
    return harness


@pytest.fixture
def store() -> MemoryStore:
    """The store written ahead."""
    return MemoryStore()


@pytest.fixture
def behind() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def gate(store: MemoryStore, behind: MemoryStore) -> Iterator[SlotGate]:
    engine = SlotEngine(epoch=EPOCH)
    engine.register(LOCAL_OLLAMA)
    gate = SlotGate(engine, Journal(store, behind))
    yield gate
    gate.close()


def record(store: MemoryStore, group: str) -> GroupRecord:
    """The group's record as written ahead to ``store``."""
    return records(store.records)[group]


def copied(behind: MemoryStore, group: str) -> GroupRecord:
    """The group's record as copied behind to ``behind``."""
    return {r.spec.id: r for r in recorded(MemoryStore(), behind)}[group]


def copy_behind(behind: MemoryStore, entries: Entries) -> None:
    journal = Journal(MemoryStore(), behind)
    journal.write(entries)
    journal.stop()


async def test_a_capped_lease_is_written_ahead_when_handed_out_and_copied_behind_later(
    gate: SlotGate, store: MemoryStore, behind: MemoryStore
) -> None:
    behind.open.clear()  # the copy behind stalls: no grant waits for it

    lease = await asyncio.wait_for(
        gate.acquire(Acquire(GROUP, "a", CallOptions(request_id="r"))), 5
    )

    assert record(store, GROUP).held == {lease.id: HeldLease(EPOCH)}
    assert GROUP not in behind.records
    behind.open.set()
    gate.close()  # writes what the copy behind lacks
    assert copied(behind, GROUP).held == {lease.id: HeldLease(EPOCH)}


async def test_a_waiter_granted_by_a_release_is_written_ahead_when_handed_out(
    gate: SlotGate, store: MemoryStore
) -> None:
    first = await gate.acquire(Acquire(GROUP, "a", CallOptions(request_id="r1")))
    waiting = asyncio.create_task(gate.acquire(Acquire(GROUP, "b", CallOptions(request_id="r2"))))
    await asyncio.sleep(0)

    gate.apply([Release(first.id, first.epoch)])
    second = await asyncio.wait_for(waiting, 5)

    assert record(store, GROUP).held == {second.id: HeldLease(EPOCH)}


def test_a_grant_and_a_release_write_their_own_lease_whatever_the_group_holds(
    store: MemoryStore,
) -> None:
    engine = SlotEngine(epoch=EPOCH, group_limits={GROUP: 1_000})
    engine.register(LOCAL_OLLAMA)
    gate = SlotGate(engine, Journal(store))
    try:
        held = gate.apply([Acquire(GROUP, f"l{n}", CallOptions(), "p") for n in range(500)])
        store.writes.clear()

        gate.apply([Acquire(GROUP, "one-more", CallOptions(), "p")])
        gate.apply([Release("l7", EPOCH)])
    finally:
        gate.close()

    assert store.writes == [
        dict([held_entry(GROUP, "one-more", HeldLease(EPOCH, "p", lent=True))]),
        dict([held_entry(GROUP, "l7", None)]),
    ]
    assert len(record(store, GROUP).held) == len(held) == 500


def test_the_copy_behind_writes_each_changed_group_once_a_window(
    store: MemoryStore, behind: MemoryStore
) -> None:
    """A GCS write is a round trip: a burst of grants and releases costs one a group."""
    engine = SlotEngine(epoch=EPOCH, group_limits={GROUP: 1_000})
    engine.register(LOCAL_OLLAMA)
    behind.open.clear()  # the burst all comes while the copy behind waits
    gate = SlotGate(engine, Journal(store, behind))
    try:
        gate.apply([Acquire(GROUP, f"l{n}", CallOptions(), "p") for n in range(200)])
        gate.apply([Release(f"l{n}", EPOCH) for n in range(100)])
    finally:
        behind.open.set()
        gate.close()

    assert [list(write) for write in behind.writes] == [[GROUP]] * len(behind.writes)
    assert len(behind.writes) <= 2
    assert copied(behind, GROUP).held.keys() == {f"l{n}" for n in range(100, 200)}


def test_register_returns_once_the_group_is_written(gate: SlotGate, store: MemoryStore) -> None:
    gate.apply([Register(ANTHROPIC)])

    assert record(store, ANTHROPIC.id).spec == ANTHROPIC


async def test_a_burst_of_grants_and_releases_ends_written_as_it_is(
    gate: SlotGate, store: MemoryStore, behind: MemoryStore
) -> None:
    leases = []
    for n in range(20):
        task = asyncio.create_task(
            gate.acquire(Acquire(GROUP, f"l{n}", CallOptions(request_id=f"r{n}")))
        )
        if n == 0:
            leases.append(await task)
        else:
            leases.append(task)
    for n in range(20):
        lease = leases[n] if n == 0 else await asyncio.wait_for(leases[n], 5)
        gate.apply([Release(lease.id, lease.epoch)])

    assert record(store, GROUP).held == {}
    gate.close()
    assert copied(behind, GROUP).held == {}


async def test_a_restarted_engine_holds_the_leases_until_their_holders_release(
    gate: SlotGate, store: MemoryStore
) -> None:
    held = await gate.acquire(Acquire(GROUP, "held", CallOptions(request_id="holder")))

    after = restarted(store)
    waiter = after.ask(LOCAL_OLLAMA, "new")

    assert not after.granted_now("new")  # the slot is still the old holder's
    assert after.engine.leases.renew(held.id, held.epoch)  # the holder lives on
    granted = after.engine.release(held.id, held.epoch)
    assert [lease.id for lease in granted] == [waiter]
    assert after.engine.stats().active_by_group[GROUP] == 1


async def test_a_restored_lease_whose_holder_died_expires_after_one_ttl(
    gate: SlotGate, store: MemoryStore
) -> None:
    await gate.acquire(Acquire(GROUP, "dead", CallOptions(request_id="holder")))

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
    first = await gate.acquire(Acquire(GROUP, "lost-answer", CallOptions(request_id="r")))

    after = restarted(store)
    again = after.engine.acquire(GROUP, "lost-answer", CallOptions(request_id="r"))

    assert again is not None
    assert (again.id, again.epoch) == (first.id, first.epoch)
    stats = after.engine.stats()
    assert (stats.active_by_group[GROUP], stats.total_pending) == (1, 0)


def test_a_group_registered_at_run_time_is_known_after_a_restart(store: MemoryStore) -> None:
    engine = SlotEngine(epoch=EPOCH)
    engine.register(LOCAL_OLLAMA)
    store.write(engine.groups.changes(engine.leases, engine.callers))

    after = SlotEngine(epoch=EPOCH + 1)
    for restored in records(store.load()).values():
        after.restore(restored)

    assert after.group_info(GROUP).limit == 1


async def test_a_restored_lease_keeps_its_caller_whose_death_frees_it(
    gate: SlotGate, store: MemoryStore
) -> None:
    held = await gate.acquire(Acquire(GROUP, "held", CallOptions(request_id="r"), "worker-1"))
    assert record(store, GROUP).held == {held.id: HeldLease(EPOCH, "worker-1", lent=True)}

    after = restarted(store)
    waiter = after.ask(LOCAL_OLLAMA, "new")
    passed_on = after.engine.drop_caller("worker-1")

    assert [lease.id for lease in passed_on] == [waiter]


def test_a_restart_restores_the_record_written_ahead_over_an_older_copy_behind() -> None:
    ahead, behind = MemoryStore(), MemoryStore()
    # Behind still holds a lease that ahead has written gone.
    gone = held_entry(GROUP, "gone", HeldLease(EPOCH))
    copy_behind(behind, dict([spec_entry(LOCAL_OLLAMA), gone]))
    ahead.write(dict([spec_entry(LOCAL_OLLAMA), held_entry(GROUP, "gone", None)]))
    copy_behind(behind, dict([spec_entry(ANTHROPIC)]))  # only behind: still restored

    records = {record.spec.id: record for record in recorded(ahead, behind)}

    assert records[GROUP].held == {}
    assert records[ANTHROPIC.id].spec == ANTHROPIC


def test_a_file_store_keeps_each_keys_last_value_and_outlives_its_writer(tmp_path: Path) -> None:
    path = tmp_path / "session" / "manager.journal"
    key = "local-openai-compatible-http://gpu-box:1234"
    first = FileStore(path)
    first.write({key: b"old", "gone": b"y"})
    first.write({key: b"new", "other": b"x", "gone": None})

    assert FileStore(path).load() == {key: b"new", "other": b"x"}  # a restarted manager's


def test_a_file_store_drops_a_put_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "manager.journal"
    store = FileStore(path)
    store.write({"a": b"kept"})
    store.write({"b": b"cut short"})
    path.write_bytes(path.read_bytes()[:-3])  # the process died inside the last write

    assert FileStore(path).load() == {"a": b"kept"}


def test_a_file_store_rewrites_itself_with_the_last_values_once_grown(tmp_path: Path) -> None:
    path = tmp_path / "manager.journal"
    store = FileStore(path, compact_at=1_000)
    for n in range(1_000):
        store.write({f"group-{n % 3}": f"record {n}".encode()})

    assert path.stat().st_size < 2_000
    assert FileStore(path).load() == {
        "group-0": b"record 999",
        "group-1": b"record 997",
        "group-2": b"record 998",
    }
    store.clear()
    assert FileStore(path).load() == {}
