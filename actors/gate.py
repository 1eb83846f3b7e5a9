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
fits its budget (:meth:`actors.timekeeper.Timekeeper.next_wake`).

Every operation reaches the engine through :meth:`SlotGate.apply`, as a message
(see :mod:`actors.ops`): a list of them under one lock, a process's batch (see
:mod:`actors.courier`). An acquire there that must wait is answered ``Queued``;
its grant goes to its caller's mailbox (:mod:`actors.mailbox`), which the
caller's one waiting :meth:`SlotGate.collect` call empties. In-process callers
(:class:`actors.slots.LocalSlots`, tests) may instead await
:meth:`SlotGate.acquire`, whose future the grant resolves.

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
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar, cast

from actors.engine import SlotEngine
from actors.journal import Journal
from actors.leases import Lease
from actors.mailbox import Delivery, Mailboxes, Queued
from actors.ops import Acquire, Op
from actors.queueview import QueueView

T = TypeVar("T")


class SlotGate:
    def __init__(self, engine: SlotEngine, journal: Journal | None = None) -> None:
        self.engine = engine
        # Guards the engine: every call into it holds this lock (helpers named *_locked
        # expect it held).
        self.lock = threading.Lock()
        # Futures of queued acquires. Whoever pops an entry owns the clean-up.
        self._waiters: dict[str, asyncio.Future[Lease]] = {}
        # The grants of acquires that came in a batch, by caller.
        self._mail = Mailboxes()
        # Views waiting for the engine's version to move past theirs.
        self._watchers: list[tuple[int, asyncio.Future[None]]] = []
        # Callers waiting for a change of their waiters next in line: (caller, what it
        # knows, its future).
        self._lines: list[tuple[str, dict[str, str], asyncio.Future[dict[str, str]]]] = []
        self._journal = journal
        # Told (under the lock: it must only schedule) of every change of the queue: a
        # shard under another's global cap asks for slots or gives them back then.
        self.on_change: Callable[[], None] | None = None
        # The engine's version when the last operations were settled: an operation that
        # changed nothing a waiter, a view or the reaper could see (a renewal, a query)
        # wakes none of them.
        self._settled = engine.version
        self._journal_changes_locked()
        self._reaper = _Reaper(self)
        self._reaper.start()

    def apply(self, ops: Sequence[Op[object]]) -> list[object]:
        """Apply ``ops`` in order under one lock (see :mod:`actors.ops`); each one's answer,
        or the error it raised. A restarted manager knows of every grant and registration
        once this returns (journaled before the answers go)."""
        answers: list[object] = []
        granted: list[Lease] = []
        with self.lock:
            for op in ops:
                # An acquire that may wait: its grant goes to its caller's mailbox.
                mailed = op if isinstance(op, Acquire) and not op.started else None
                if mailed is not None:
                    if mailed.caller is None:
                        answers.append(ValueError("an acquire that may wait names its caller"))
                        continue
                    op = mailed = _waiting_from_now(mailed)
                try:
                    answer = self.engine.apply(op)
                except Exception as error:
                    answers.append(error)
                    continue
                if op.grants:
                    granted.extend(cast("list[Lease]", answer))
                    answer = None
                elif isinstance(answer, Lease):  # an acquire's: its expiry must be timed
                    granted.append(answer)
                elif mailed is not None:
                    self._mail.expect_locked(mailed.lease_id, cast(str, mailed.caller))
                    answer = Queued(self.engine.epoch)
                answers.append(answer)
            self._settle_locked(granted)
        return answers

    async def collect(self, caller: str, epoch: int | None, read: int, wait: float) -> Delivery:
        """The grants (and failures) of ``caller``'s waiters from its batches, numbered past
        ``read``: at once if there are any, else as soon as one comes, or after ``wait``
        seconds. Of a manager of another ``epoch`` (None: not known yet), the epoch, at
        once (see :mod:`actors.mailbox`)."""
        with self.lock:
            if epoch != self.engine.epoch:
                return Delivery(self.engine.epoch)
            items = self._mail.unread_locked(caller, read)
            if items:
                return Delivery(epoch, tuple(items))
            posted = self._mail.wait_locked(caller)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await posted
        finally:
            with self.lock:
                self._mail.stop_waiting_locked(caller, posted)
        with self.lock:
            return Delivery(epoch, tuple(self._mail.unread_locked(caller, read)))

    def forget_caller(self, caller: str) -> None:
        """``caller`` died (after its DropCaller): its mailbox goes."""
        with self.lock:
            self._mail.forget_locked(caller)

    async def acquire(self, op: Acquire) -> Lease:
        """A slot of ``op.group_id`` (or of a pool's groups), waiting at most
        ``options.queue_timeout`` for it (then AcquireTimeout), and until ``options.max_wait``
        has passed since the call was asked (then WaitTooLong: the estimate at its arrival
        had nothing to go by, or was wrong)."""
        patience = op.patience(time.time())
        op = _waiting_from_now(op)
        loop = asyncio.get_running_loop()
        with self.lock:
            lease = self.engine.acquire(
                op.group_id, op.lease_id, op.options, op.caller, started=op.started
            )
            if lease is not None:
                self._settle_locked([lease])
                return lease
            waiter: asyncio.Future[Lease] = loop.create_future()
            self._waiters[op.lease_id] = waiter
            self._settle_locked([])
        try:
            async with asyncio.timeout(None if patience is None else patience[0]):
                return await waiter
        except TimeoutError:
            self._abandon(op.lease_id, timed_out=True)
            assert patience is not None
            raise patience[1] from None
        except asyncio.CancelledError:
            self._abandon(op.lease_id)
            raise
        finally:
            with self.lock:
                self._waiters.pop(op.lease_id, None)

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

    def tick(self) -> None:
        with self.lock:
            self._deliver_locked(self.engine.timekeeper.tick())

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
                granted = self.engine.cancel(lease_id, timed_out=timed_out)
                self._settle_locked(granted)

    def _settle_locked(self, granted: list[Lease]) -> None:
        """After operations: journal what they changed; if they moved the queue (a grant,
        a waiter gone, new levels or a pause: the engine's version), end the waits of
        waiters that left, wake those granted, the views and the callers whose next in
        line changed, and let the reaper plan again, budgets may have moved."""
        for caller, recalls in self.engine.lending.take_mail().items():
            for recall in recalls:
                self._mail.recall_locked(caller, recall)
        left = self.engine.take_left()
        if not granted and not left and self.engine.version == self._settled:
            self._journal_changes_locked()  # a registration changes no level
            return
        self._settled = self.engine.version
        for lease_id, error in left.items():
            waiter = self._waiters.pop(lease_id, None)
            if waiter is not None:
                waiter.get_loop().call_soon_threadsafe(_end, waiter, error)
            else:
                self._mail.post_locked(lease_id, error)
        self._deliver_locked(granted)
        self._budget_changed_locked()

    def _journal_changes_locked(self) -> None:
        """After anything that may change a group's record."""
        changes = self.engine.groups.changes(self.engine.leases, self.engine.callers)
        if self._journal is not None and changes:
            self._journal.write(changes)

    def _budget_changed_locked(self) -> None:
        """After a change that may move a budgeted group's next grant sooner (a waiter
        queued, a slot freed, a correction): the reaper plans its wake again. Never from
        a tick, which would wake the reaper for ever."""
        if self.engine.budgeted:
            self._reaper.replan()

    def _changed_locked(self) -> None:
        """Wake the views waiting for a change, if there was one, and the callers whose
        waiters next in line changed."""
        if self.on_change is not None:
            self.on_change()
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
            else:
                self._mail.post_locked(lease.id, lease)
        if granted:
            self._reaper.wake_if_idle_locked()


def _waiting_from_now(op: Acquire) -> Acquire:
    """``op`` with its ``max_wait`` counted from now: what is left of it since the call was
    asked (wall clock, as ``asked_at`` is), which may be nothing."""
    options = op.options
    if options.max_wait is None or options.asked_at is None:
        return op
    left = max(0.0, options.max_wait - max(0.0, time.time() - options.asked_at))
    return replace(op, options=replace(options, max_wait=left))


def _of(caller: str, named: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {group: lease_id for group, (lease_id, w) in named.items() if w == caller}


def _resolve(future: asyncio.Future[T], value: T) -> None:
    """Run on the future's own loop; it may have ended meanwhile (cancelled, timed out)."""
    if not future.done():
        future.set_result(value)


def _end(future: asyncio.Future[T], error: BaseException | None) -> None:
    """End a wait on the future's own loop: with ``error``, or cancelled if None (its
    caller died, or gave it up through a message)."""
    if future.done():
        return
    if error is None:
        future.cancel()
    else:
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
        deadline = self._gate.engine.timekeeper.next_wake()
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
