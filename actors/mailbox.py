"""Grants to the waiters of a batch, kept per caller process until it collects them.

An acquire that comes in a batch (see :mod:`actors.courier`) and must wait is
answered at once with :class:`Queued`: a manager call that waited for every
waiter would cost one call per acquire again. Its grant, when a freed slot
comes its way, goes to its caller's mailbox here, and so does the error that
ends its wait (its server taken out of rotation). Each caller process keeps
one call waiting in :meth:`SlotGate.collect`, which returns as soon as its
mailbox holds anything: every grant to that process since its last call,
together.

Nothing is lost between two calls: each item is numbered, and a call names
the last number its caller has read, so only those items are dropped (a reply
that never arrived is sent again). A mailbox lives as long as its caller: a
dead caller's goes with its waiters and leases (see :mod:`actors.watch`). A
restarted manager has no mailboxes; a caller that learns of the new epoch
from its next call asks again for the waiters it still expects (see
:mod:`actors.deliveries`), under their own lease ids and ask times, so they
queue in the order they first asked and the grants journaled before the
restart are theirs again.

Every method here expects the gate's lock held (``_locked``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from actors.leases import Lease
from actors.lending import Recall


@dataclass(frozen=True, slots=True)
class Queued:
    """An acquire's answer: waiting, at the manager of ``epoch``; its grant comes by mail."""

    epoch: int


# One item of a mailbox: its number, the lease id, and its grant or the error ending it;
# or a recall of lent slots (no lease id).
Mail = tuple[int, str, Lease | Exception | Recall]


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one collect call returns: the manager's epoch and the caller's unread items.
    An epoch other than the one asked about means the manager restarted (no items)."""

    epoch: int
    items: tuple[Mail, ...] = ()


@dataclass(slots=True)
class _Mailbox:
    items: list[Mail] = field(default_factory=list)
    numbered: int = 0
    # The collect call waiting for the next item, if one waits.
    waiting: asyncio.Future[None] | None = None


class Mailboxes:
    def __init__(self) -> None:
        self._boxes: dict[str, _Mailbox] = {}
        # The waiters whose grant goes by mail: lease id -> its caller.
        self._posted: dict[str, str] = {}

    def expect_locked(self, lease_id: str, caller: str) -> None:
        """``lease_id`` waits; its grant or failure goes to ``caller``'s mailbox."""
        self._posted[lease_id] = caller

    def post_locked(self, lease_id: str, answer: Lease | Exception | None) -> None:
        """End the wait of ``lease_id`` if it waits by mail: its grant or error goes to its
        caller; None (its caller cancelled it, or died) posts nothing."""
        caller = self._posted.pop(lease_id, None)
        if caller is not None and answer is not None:
            self._post_locked(caller, lease_id, answer)

    def recall_locked(self, caller: str, recall: Recall) -> None:
        """Mail ``caller`` that the manager calls its lent slots back (see actors.lending)."""
        self._post_locked(caller, "", recall)

    def _post_locked(self, caller: str, lease_id: str, item: Lease | Exception | Recall) -> None:
        box = self._boxes.setdefault(caller, _Mailbox())
        box.items.append((box.numbered, lease_id, item))
        box.numbered += 1
        if box.waiting is not None:
            waiting, box.waiting = box.waiting, None
            waiting.get_loop().call_soon_threadsafe(_wake, waiting)

    def unread_locked(self, caller: str, read: int) -> list[Mail]:
        """``caller``'s items numbered past ``read`` (those up to it are dropped)."""
        box = self._boxes.get(caller)
        if box is None:
            return []
        if box.items and box.items[0][0] <= read:
            box.items = [item for item in box.items if item[0] > read]
        return list(box.items)

    def wait_locked(self, caller: str) -> asyncio.Future[None]:
        """A future the next item posted to ``caller`` resolves (one waits at a time: a
        newer call takes the place of an older one, which then returns empty)."""
        box = self._boxes.setdefault(caller, _Mailbox())
        if box.waiting is not None:
            box.waiting.get_loop().call_soon_threadsafe(_wake, box.waiting)
        box.waiting = asyncio.get_running_loop().create_future()
        return box.waiting

    def stop_waiting_locked(self, caller: str, waiting: asyncio.Future[None]) -> None:
        box = self._boxes.get(caller)
        if box is not None and box.waiting is waiting:
            box.waiting = None

    def forget_locked(self, caller: str) -> None:
        """``caller`` died: its mailbox goes (its waiters and leases are the engine's to
        end)."""
        box = self._boxes.pop(caller, None)
        if box is not None and box.waiting is not None:
            box.waiting.get_loop().call_soon_threadsafe(_wake, box.waiting)
        self._posted = {lease: c for lease, c in self._posted.items() if c != caller}


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
