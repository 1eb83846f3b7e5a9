"""What a restarted manager must not forget, written down per group before it matters.

A manager restarted by Ray starts with an empty engine. Two things would be
lost: the groups registered at run time (their waiting acquires, retried by
Ray, would fail with UnknownGroup), and the slots still held by callers that
keep running (the new manager would grant them again, past the group's
limit). So each group's record, its spec and the ids of the leases it holds,
is written to a store outside the actor (Ray's GCS key-value store), one key
per group:

- a capped group's lease is handed to its caller only after a write that
  includes it (write-ahead), so no granted slot is missing from the store;
- releases and expiries are written too, without anyone waiting for them: a
  release lost in a crash only makes the new manager wait for that lease's
  ttl, on the safe side.

A restarted manager restores each record: the held leases are held again,
with a fresh ttl. Their holders renew them as usual (Ray retries the renewals
that were in flight) and release them when done; the leases of holders that
died meanwhile expire after one ttl. Until then the group is full, which is
the fencing: no slot is granted twice.

One key per group keeps recovery per group, so groups can later be spread
over several managers. Writes are coalesced: one thread writes every group
changed since its last write, so a burst of grants costs one write per group.
A change nobody waits for (a release) waits up to ``LAZY_SECONDS`` for one
that somebody does (the next grant), which then writes both: at one caller,
one write per acquire and release instead of two, and no grant waiting
behind the write of the release before it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from pydantic import TypeAdapter

from actors.groups import GroupSpec

log = logging.getLogger(__name__)

# After a failed write, wait this long before trying again (the store is Ray's GCS).
RETRY_SECONDS = 0.5
# How long a change nobody waits for may wait to be written with the next one.
LAZY_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class HeldLease:
    # The epoch of the manager that granted it, and the caller that holds it.
    epoch: int
    caller: str | None = None


@dataclass(frozen=True, slots=True)
class GroupRecord:
    spec: GroupSpec
    held: dict[str, HeldLease]


_RECORD = TypeAdapter(GroupRecord)


def encode(record: GroupRecord) -> bytes:
    return _RECORD.dump_json(record)


def decode(data: bytes) -> GroupRecord:
    return _RECORD.validate_json(data)


class Store(Protocol):
    """Bytes by key, outliving the manager."""

    def put(self, key: str, value: bytes) -> None: ...

    def load(self) -> dict[str, bytes]: ...

    def clear(self) -> None: ...


class Journal:
    """Writes the records of changed groups on a thread of its own.

    ``mark`` is cheap and may be called with the gate's lock held;
    ``flushed`` lets a coroutine wait until everything marked before it is
    in the store.
    """

    def __init__(self, store: Store, record: Callable[[str], GroupRecord]) -> None:
        self._store = store
        self._record = record
        self._changed = threading.Condition()
        self._dirty: set[str] = set()
        self._marked = 0  # bumped by every mark
        self._written = 0  # every mark up to this one is in the store
        self._flushes: list[tuple[int, asyncio.Future[None]]] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="raygate-journal", daemon=True)
        self._thread.start()

    def mark(self, groups: Iterable[str]) -> None:
        with self._changed:
            before = len(self._dirty)
            self._dirty.update(groups)
            if len(self._dirty) > before:
                self._marked += 1
                self._changed.notify()

    async def flushed(self) -> None:
        """Return once every group marked before this call has been written."""
        with self._changed:
            if self._written >= self._marked:
                return
            done = asyncio.get_running_loop().create_future()
            self._flushes.append((self._marked, done))
            self._changed.notify()
        await done

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._dirty or self._stopped)
                # Nobody waits for these changes yet: give the next one a moment to join.
                self._changed.wait_for(lambda: self._flushes or self._stopped, LAZY_SECONDS)
                if self._stopped:
                    return
                groups, self._dirty = self._dirty, set()
                version = self._marked
            self._write(groups)
            with self._changed:
                self._written = version
                done = [f for v, f in self._flushes if v <= version]
                self._flushes = [(v, f) for v, f in self._flushes if v > version]
            for future in done:
                future.get_loop().call_soon_threadsafe(_finish, future)

    def _write(self, groups: set[str]) -> None:
        for group in sorted(groups):
            # The record is read now, not when marked: it is at least as new.
            data = encode(self._record(group))
            while True:
                try:
                    self._store.put(group, data)
                    break
                except Exception:
                    log.warning("writing group %r's record failed; retrying", group, exc_info=True)
                    time.sleep(RETRY_SECONDS)


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
