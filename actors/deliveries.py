"""A process's side of its mailbox at the manager: the grants of its waiters.

An acquire that must wait is answered ``Queued`` in its batch (see
:mod:`actors.mailbox`); its grant comes later by mail. One task per client and
event loop keeps one collect call waiting at the manager and settles each
expected waiter's future with the grant or the error that came for it. A grant
for a waiter no longer expected (it gave up, or a slot passed on here got to
it first) is let go: the manager already knows (its cancel, or the hand-over).

After a manager restart the next collect says so (another epoch): every waiter
that was queued at the old manager is asked for again, in one batch, under its
own lease id and ask time; an acquire still in flight then is retried by Ray
and answers for itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ray.actor import ActorHandle

from actors.calls import Background, unwrap
from actors.courier import Send
from actors.errors import DuplicateLease
from actors.leases import Lease
from actors.lending import Recall
from actors.mailbox import Queued
from actors.ops import Acquire
from actors.watch import caller_of

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Expected:
    op: Acquire
    grant: asyncio.Future[Lease]
    # The epoch of the manager that queued it; None while its acquire is in flight.
    epoch: int | None = None


class Deliveries:
    def __init__(
        self,
        manager: ActorHandle,
        send: Send,
        recalled: Callable[[Recall], None],
        caller: str | None = None,
    ) -> None:
        self._manager = manager
        self._send = send
        # Whose mail: this process's, watched by the manager (see actors.watch), unless
        # it names another caller (a shard, see actors.capacity).
        self._caller = caller
        # Told each recall of lent slots that comes by mail (see actors.lending).
        self._recalled = recalled
        self._expected: dict[str, _Expected] = {}
        # The manager's epoch, as the last collect said.
        self._epoch: int | None = None
        self._collecting: asyncio.Task[None] | None = None
        self._asking = Background()

    def expect(self, op: Acquire, grant: asyncio.Future[Lease]) -> None:
        """``op`` is on its way (sent by the caller): its grant, or the error ending its
        wait, settles ``grant``, whether it comes with its answer or by mail."""
        self.listen()
        self._expected[op.lease_id] = _Expected(op, grant)

    def answered(self, lease_id: str, answer: object) -> None:
        """The answer to ``lease_id``'s acquire, from its batch."""
        expected = self._expected.get(lease_id)
        if expected is None:
            return
        if not isinstance(answer, Queued):
            self._settle(lease_id, answer)
            return
        expected.epoch = answer.epoch
        if self._epoch is not None and answer.epoch < self._epoch:
            self._ask_again([expected])  # queued by a manager that restarted since

    def gone(self, lease_id: str) -> None:
        """The waiter got its slot or gave up: its grant, if one still comes, is let go."""
        self._expected.pop(lease_id, None)

    def _settle(self, lease_id: str, answer: object) -> None:
        expected = self._expected.pop(lease_id, None)
        if expected is None or expected.grant.done():
            return
        if isinstance(answer, Lease):
            expected.grant.set_result(answer)
        elif isinstance(answer, BaseException):
            expected.grant.set_exception(answer)
        else:
            expected.grant.set_exception(TypeError(f"an acquire answered {answer!r}"))

    def listen(self) -> None:
        """Keep one collect call waiting, from one task: started again if it ended, or if
        it runs on another event loop than this call (one that may have closed)."""
        task = self._collecting
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._expected, self._epoch = {}, None
            self._collecting = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        read = -1
        try:
            while True:
                caller = self._caller or caller_of(self._manager).id
                delivery = await unwrap(self._manager.collect.remote(caller, self._epoch, read))
                if delivery.epoch != self._epoch:
                    self._epoch, read = delivery.epoch, -1
                    stale = [
                        expected
                        for expected in self._expected.values()
                        if expected.epoch not in (None, delivery.epoch)
                    ]
                    if stale:
                        self._ask_again(stale)
                for number, lease_id, answer in delivery.items:
                    read = number
                    if isinstance(answer, Recall):
                        self._recalled(answer)
                    else:
                        self._settle(lease_id, answer)
        except Exception as error:
            # The manager is gone for good (or Ray is): nothing will be granted, and each
            # waiter gets the error itself.
            log.debug("collecting grants from the manager failed", exc_info=True)
            expected, self._expected = self._expected, {}
            for waiting in expected.values():
                if not waiting.grant.done():
                    waiting.grant.set_exception(error)

    def _ask_again(self, stale: list[_Expected]) -> None:
        """Acquire ``stale`` again: they waited at a manager that has since restarted."""
        for expected in stale:
            expected.epoch = None
        self._asking.send(self._acquired_again([expected.op for expected in stale]))

    async def _acquired_again(self, ops: list[Acquire]) -> None:
        answers = await self._send(list(ops))
        for op, answer in zip(ops, answers, strict=True):
            expected = self._expected.get(op.lease_id)
            if isinstance(answer, DuplicateLease) and expected is not None:
                expected.epoch = self._epoch  # it waits there already (Ray's retry)
            else:
                self.answered(op.lease_id, answer)
