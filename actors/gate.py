"""The engine for asyncio callers on any thread: a waiter is a future that a freed slot resolves.

No polling anywhere. A queued acquire awaits its own future; whichever call
frees a slot (release, cancel, a reclaimed lease) gets the engine's new
leases back and resolves their futures.

Threads: the Ray actor runs acquires on one thread and event loop and
release/renew/stats on another (one per Ray concurrency group). The engine is
plain, fast Python, so one lock guards it and every call runs it right where
it arrives: a grant that finds room, or a release, costs no hop to another
thread. A future is only ever resolved on its own loop
(``call_soon_threadsafe``); a ``set_result`` from another loop's thread would
never wake its waiter. Expiry and budget are a reaper thread that sleeps
until the earliest lease deadline or the time a budgeted group's best waiter
fits its budget (:meth:`SlotEngine.next_wake`).

A queue view (:mod:`actors.queueview`) waits the same way: a future that the
next change of the engine's version resolves; and so does a process's
question which of its waiters is next in line (:meth:`SlotGate.next_in_line`),
answered when that changes.

With a journal, every change of a group's record is written ahead (see
:mod:`actors.journal`) under the lock, before anyone hears of it: a lease of
a capped group is returned only once written.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TypeVar

from actors.engine import Lease, SlotEngine
from actors.errors import AcquireTimeout
from actors.groups import GroupSpec, Pool
from actors.journal import Journal
from actors.leases import TokensUsed
from actors.options import DEFAULT_OPTIONS, CallOptions
from actors.queueview import QueueView
from actors.stats import GroupInfo, QueuePosition, QueueStats

T = TypeVar("T")


class SlotGate:
    def __init__(self, engine: SlotEngine, journal: Journal | None = None) -> None:
        self.engine = engine
        # Guards the engine: every call into it holds this lock (helpers named *_locked
        # expect it held).
        self.lock = threading.Lock()
        # Futures of queued acquires. Whoever pops an entry owns the clean-up.
        self._waiters: dict[str, asyncio.Future[Lease]] = {}
        # Views waiting for the engine's version to move past theirs.
        self._watchers: list[tuple[int, asyncio.Future[None]]] = []
        # Callers waiting for a change of their waiters next in line: (caller, what it
        # knows, its future).
        self._lines: list[tuple[str, dict[str, str], asyncio.Future[dict[str, str]]]] = []
        self._journal = journal
        self._journal_changes_locked()
        self._reaper = _Reaper(self)
        self._reaper.start()

    async def acquire(
        self,
        group: str | Pool,
        lease_id: str,
        options: CallOptions = DEFAULT_OPTIONS,
        caller: str | None = None,
        *,
        started: bool = False,
    ) -> Lease:
        """A slot of ``group`` (or of a pool's groups), waiting at most
        ``options.queue_timeout`` for it (``started``: see :meth:`SlotEngine.acquire`)."""
        return await self._granted(group, lease_id, options, caller, started)

    async def _granted(
        self,
        group: str | Pool,
        lease_id: str,
        options: CallOptions,
        caller: str | None,
        started: bool,
    ) -> Lease:
        loop = asyncio.get_running_loop()
        with self.lock:
            lease = self.engine.acquire(group, lease_id, options, caller, started=started)
            self._changed_locked()
            if lease is not None:
                self._journal_changes_locked()
                self._reaper.wake_if_idle_locked()
                return lease
            waiter: asyncio.Future[Lease] = loop.create_future()
            self._waiters[lease_id] = waiter
            self._budget_changed_locked()
        timeout = options.queue_timeout
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            self._abandon(lease_id, timed_out=True)
            raise AcquireTimeout(group, options.request_id or lease_id, timeout or 0.0) from None
        except asyncio.CancelledError:
            self._abandon(lease_id)
            raise
        finally:
            with self.lock:
                self._waiters.pop(lease_id, None)

    def release(self, lease_id: str, epoch: int, used: TokensUsed | None = None) -> None:
        with self.lock:
            self._deliver_locked(self.engine.release(lease_id, epoch, used))
            self._budget_changed_locked()

    def hand_over(
        self,
        group: str,
        lease_id: str,
        epoch: int,
        successor: str,
        caller: str | None = None,
        used: TokensUsed | None = None,
    ) -> None:
        """Release a slot its holder's process passed on (see :meth:`SlotEngine.hand_over`);
        a restarted manager knows the successor holds it once this returns."""
        with self.lock:
            self._deliver_locked(
                self.engine.hand_over(group, lease_id, epoch, successor, caller, used)
            )
            self._budget_changed_locked()

    async def next_in_line(self, caller: str, known: dict[str, str], wait: float) -> dict[str, str]:
        """By group, the waiter of ``caller`` that a slot it holds would pass to
        next (see :meth:`SlotEngine.next_in_line`), once that differs from ``known``:
        at once if it does, else at its next change, or after ``wait`` seconds."""
        changed: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        with self.lock:
            mine = _of(caller, self.engine.next_in_line())
            if mine != known:
                self.engine.hand_overs.answers += 1
                return mine
            self._lines.append((caller, known, changed))
        try:
            async with asyncio.timeout(wait):
                return await changed
        except TimeoutError:
            return known
        finally:
            with self.lock:
                self._lines = [line for line in self._lines if line[2] is not changed]

    def throttled(self, group: str, lease_id: str, retry_after: float | None) -> GroupInfo:
        with self.lock:
            info = self.engine.throttled(group, lease_id, retry_after)
            self._budget_changed_locked()
            self._changed_locked()
            return info

    def mark_out(self, group: str, reason: str, seconds: float) -> None:
        """See :meth:`SlotEngine.mark_out`: the waiters left without a group in rotation
        fail with its error."""
        with self.lock:
            failed, granted = self.engine.mark_out(group, reason, seconds)
            waiters = [(self._waiters.pop(i), e) for i, e in failed.items() if i in self._waiters]
            self._deliver_locked(granted)
            self._budget_changed_locked()
        for waiter, error in waiters:
            waiter.get_loop().call_soon_threadsafe(_fail, waiter, error)

    def fell_back(self, model: str, fallback: str, reason: str) -> None:
        """See :meth:`SlotEngine.fell_back`."""
        with self.lock:
            self.engine.fell_back(model, fallback, reason)
            self._changed_locked()

    def cancel(self, lease_id: str) -> None:
        """A caller gave up on ``lease_id``: whether it waits, holds, or has not arrived yet."""
        with self.lock:
            waiter = self._waiters.pop(lease_id, None)
            self._deliver_locked(self.engine.cancel(lease_id))
            self._budget_changed_locked()
        if waiter is not None:
            waiter.get_loop().call_soon_threadsafe(waiter.cancel)

    def drop_caller(self, caller: str) -> None:
        """``caller`` died: its waiters leave, its slots pass on."""
        with self.lock:
            dropped, granted = self.engine.drop_caller(caller)
            waiters = [self._waiters.pop(i) for i in dropped if i in self._waiters]
            self._deliver_locked(granted)
            self._budget_changed_locked()
        for waiter in waiters:
            waiter.get_loop().call_soon_threadsafe(waiter.cancel)

    def watched(self, caller: str) -> None:
        """See :meth:`SlotEngine.watched`."""
        with self.lock:
            self.engine.watched(caller)

    def unwatched(self, caller: str) -> None:
        """See :meth:`SlotEngine.unwatched`."""
        with self.lock:
            self.engine.unwatched(caller)

    def renew(self, lease_id: str, epoch: int) -> bool:
        with self.lock:
            return self.engine.renew(lease_id, epoch)

    def tick(self) -> None:
        with self.lock:
            self._deliver_locked(self.engine.tick())

    def register(self, spec: GroupSpec) -> GroupInfo:
        """Register ``spec``; a restarted manager knows the group once this returns."""
        with self.lock:
            info = self.engine.register(spec)
            self._journal_changes_locked()
            return info

    def group_info(self, group_id: str) -> GroupInfo:
        with self.lock:
            return self.engine.group_info(group_id)

    def can_run_immediately(self, group_id: str) -> bool:
        with self.lock:
            return self.engine.can_run_immediately(group_id)

    def stats(self) -> QueueStats:
        with self.lock:
            return self.engine.stats()

    def position(self, request_id: str) -> QueuePosition | None:
        with self.lock:
            return self.engine.position(request_id)

    async def view(self, after: int, first: int, wait: float) -> QueueView:
        """The queue view (``first`` waiters a group) once the engine's version differs
        from ``after``: at once if it does, else at the next change, or after ``wait``
        seconds at the latest."""
        changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self.lock:
            if self.engine.version == after:
                self._watchers.append((after, changed))
            else:
                changed.set_result(None)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await changed
        finally:
            with self.lock:
                self._watchers = [w for w in self._watchers if w[1] is not changed]
        with self.lock:
            return self.engine.view(first)

    def close(self) -> None:
        """Stop the reaper and journal threads (the actor never needs this; tests do)."""
        self._reaper.stop()
        if self._journal is not None:
            self._journal.stop()

    def _abandon(self, lease_id: str, *, timed_out: bool = False) -> None:
        with self.lock:
            if self._waiters.pop(lease_id, None) is not None:
                self._deliver_locked(self.engine.cancel(lease_id, timed_out=timed_out))
                self._budget_changed_locked()

    def _journal_changes_locked(self) -> None:
        """After anything that may change a group's record."""
        changed = self.engine.take_changed()
        if self._journal is not None and changed:
            self._journal.write({group: self.engine.record(group) for group in changed})

    def _budget_changed_locked(self) -> None:
        """After a change that may move a budgeted group's next grant sooner (a waiter
        queued, a slot freed, a correction): the reaper plans its wake again. Never from
        a tick, which would wake the reaper for ever."""
        if self.engine.budgeted:
            self._reaper.replan()

    def _changed_locked(self) -> None:
        """Wake the views waiting for a change, if there was one, and the callers whose
        waiters next in line changed."""
        version = self.engine.version
        waking = [changed for after, changed in self._watchers if after != version]
        if waking:
            self._watchers = [w for w in self._watchers if w[0] == version]
        for changed in waking:
            changed.get_loop().call_soon_threadsafe(_resolve, changed, None)
        if self._lines:
            named = self.engine.next_in_line()
            waiting = []
            for caller, known, future in self._lines:
                mine = _of(caller, named)
                if mine == known:
                    waiting.append((caller, known, future))
                else:
                    self.engine.hand_overs.answers += 1
                    future.get_loop().call_soon_threadsafe(_resolve, future, mine)
            self._lines = waiting

    def _deliver_locked(self, granted: list[Lease]) -> None:
        """Wake the waiters the engine just granted, and the views."""
        self._changed_locked()
        self._journal_changes_locked()
        for lease in granted:
            waiter = self._waiters.get(lease.id)
            if waiter is not None:
                # A waiter cancelled before this ran: its coroutine's _abandon finds the
                # lease held in the engine and passes it on.
                waiter.get_loop().call_soon_threadsafe(_resolve, waiter, lease)
        if granted:
            self._reaper.wake_if_idle_locked()


def _of(caller: str, named: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {group: lease_id for group, (lease_id, w) in named.items() if w == caller}


def _resolve(future: asyncio.Future[T], value: T) -> None:
    """Run on the future's own loop; it may have ended meanwhile (cancelled, timed out)."""
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[T], error: BaseException) -> None:
    """As :func:`_resolve`, with an error."""
    if not future.done():
        future.set_exception(error)


class _Reaper(threading.Thread):
    """Sleeps until the engine's next wake (a lease deadline, budget for a waiter), ticks
    the engine, repeats.

    Leases share one ttl, so a new lease never expires before those already
    held: a grant wakes the reaper only when it sleeps with no deadline at all.
    A waiter queued for budget may fit sooner than that: it wakes the reaper to
    plan again.
    """

    def __init__(self, gate: SlotGate) -> None:
        super().__init__(name="raygate-lease-reaper", daemon=True)
        self._gate = gate
        self._wake = threading.Event()
        self._idle = False
        self._stopped = False

    def run(self) -> None:
        clock = self._gate.engine.clock
        while not self._stopped:
            # Decided under the lock grants take, so a grant is never missed between.
            with self._gate.lock:
                deadline = self._plan_locked()
            self._wake.wait(None if deadline is None else max(0.0, deadline - clock()))
            self._wake.clear()
            self._gate.tick()

    def _plan_locked(self) -> float | None:
        """The next wake; with none, a grant must wake this thread."""
        deadline = self._gate.engine.next_wake()
        self._idle = deadline is None
        return deadline

    def replan(self) -> None:
        self._wake.set()

    def wake_if_idle_locked(self) -> None:
        if self._idle:
            self._idle = False
            self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        self.join()
