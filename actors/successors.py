"""The caller's side of the hand-over (see docs/architecture.md): this process's waiters,
which of them the manager names next in line, and starting that one in a freed slot."""

from __future__ import annotations

import asyncio
import logging

from ray.actor import ActorHandle

from actors.calls import unwrap
from actors.leases import Lease
from actors.options import CallOptions
from actors.watch import caller_of

log = logging.getLogger(__name__)


class Successors:
    def __init__(self, manager: ActorHandle) -> None:
        self._manager = manager
        # This process's waiters of gated groups, each a future a release here may resolve
        # with its slot, with its options; and by group, the one the manager last named
        # next in line, followed by one task.
        self._waiting: dict[str, tuple[asyncio.Future[Lease], CallOptions]] = {}
        self._next: dict[str, str] = {}
        self._following: asyncio.Task[None] | None = None

    def waiter(self, lease_id: str, options: CallOptions) -> asyncio.Future[Lease]:
        """A waiter of this process: the future a slot handed over here resolves (until
        :meth:`gone`). Starts following the manager's word of who is next in line."""
        self._follow()
        passed: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiting[lease_id] = (passed, options)
        return passed

    def gone(self, lease_id: str) -> None:
        """The waiter got its slot, or gave up."""
        del self._waiting[lease_id]

    def hand_over(self, lease: Lease, *, cancelled: bool) -> str | None:
        """Start the waiter the manager named next in line for the group of ``lease``, in
        the slot of ``lease``, unless the call holding it was ``cancelled``; its lease id,
        or None."""
        successor = self._next.pop(lease.group, None)
        waiting = self._waiting.get(successor) if successor is not None else None
        if cancelled or successor is None or waiting is None or waiting[0].done():
            return None
        passed, options = waiting
        passed.set_result(
            Lease(
                id=successor,
                group=lease.group,
                request_id=options.request_id or successor,
                priority=options.priority,
                epoch=lease.epoch,
                ttl=lease.ttl,
            )
        )
        return successor

    def forget(self, group: str) -> None:
        """The group's next grant is the manager's to make (it waits for time too)."""
        self._next.pop(group, None)

    def named_next(self, group: str) -> str | None:
        """The request id of this process's waiter that the manager last named next in line
        for ``group`` (a freed slot here goes straight to it), or None."""
        waiting = self._waiting.get(self._next.get(group, ""))
        return None if waiting is None else waiting[1].request_id

    def _follow(self) -> None:
        """Keep ``_next`` told by the manager, from one task: started again if it ended, or
        if it runs on another event loop than this call (one that may have closed)."""
        task = self._following
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._next = {}
            self._following = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        known: dict[str, str] = {}
        try:
            while True:
                caller = caller_of(self._manager).id
                known = await unwrap(self._manager.next_in_line.remote(caller, known))
                self._next = dict(known)
        except Exception:
            # The manager is gone for good (or Ray is): releases go through it, if at all.
            self._next = {}
            log.debug("stopped following the waiters next in line", exc_info=True)
