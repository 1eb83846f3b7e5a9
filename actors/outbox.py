"""The acquires and releases of groups where nobody waits, many in one manager call.

A group with no limit under no global cap never makes a caller wait: the
caller starts its call at once and the manager only counts it. Counting
still cost one manager call per acquire and one per release, about 1 ms of
the manager's CPU and 0.3 ms of the caller's each on a 2-core machine, which
for a remote API's hundreds of calls a second was most of what raygate
added to them. So a client sends them in batches: one manager call at a
time, carrying every acquire and release that came since the previous one,
and at most one per ``BATCH_INTERVAL_SECONDS``. A lone call goes at once, as
it did; under load, a batch holds what came in the interval, and the manager's
counts of these groups lag by at most that interval. Nobody waits for them meanwhile: not
the call, which started at once, nor anyone else, since the group has no
limit.

A release is queued only once its acquire's grant is back (with the epoch
of the manager that granted it), so it never overtakes its acquire,
whichever batches the two travel in. The batches are lists of the manager's
operations (see :mod:`actors.ops`): acquires of calls already ``started``, and
releases.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from actors.leases import Lease
from actors.ops import Acquire, Op, Release

log = logging.getLogger(__name__)

BATCH_INTERVAL_SECONDS = 0.01

# Sends operations to the manager; answers each, in order, with its answer or its error.
Send = Callable[[list[Op[object]]], Awaitable[list[object]]]


@dataclass
class Outbox:
    """Queues acquires and releases and sends them, one list in flight at a time and at most
    one per ``interval``."""

    send: Send
    interval: float = BATCH_INTERVAL_SECONDS
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    # Each operation queued, with the future of an acquire's grant (None for a release).
    _ops: list[tuple[Op[object], asyncio.Future[Lease] | None]] = field(default_factory=list)
    _sending: asyncio.Task[None] | None = None

    def acquire(self, op: Acquire) -> asyncio.Future[Lease]:
        """The grant, once the manager has answered (``op.started``: it counts the call)."""
        grant: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._ops.append((op, grant))
        self._wake()
        return grant

    def release(self, lease: Lease) -> None:
        self._ops.append((Release(lease.id, lease.epoch), None))
        self._wake()

    async def drain(self) -> None:
        """Wait until everything queued so far has been answered."""
        while self._sending is not None:
            await asyncio.shield(self._sending)

    def _wake(self) -> None:
        if self._sending is None:
            self._sending = asyncio.create_task(self._send_all())

    async def _send_all(self) -> None:
        try:
            while self._ops:
                started = self.clock()
                ops, self._ops = self._ops, []
                await self._send_one(ops)
                await self.sleep(self.interval - (self.clock() - started))
        finally:
            self._sending = None

    async def _send_one(self, ops: list[tuple[Op[object], asyncio.Future[Lease] | None]]) -> None:
        try:
            answers = await self.send([op for op, _ in ops])
        except Exception as exc:
            answers = [exc] * len(ops)
        released = [a for (_, grant), a in zip(ops, answers, strict=True) if grant is None]
        if any(isinstance(answer, Exception) for answer in released):
            log.warning("giving back leases failed; they expire after their ttl: %r", released)
        for (_, grant), answer in zip(ops, answers, strict=True):
            if grant is None or grant.done():  # a release, or a grant nobody awaits now
                continue
            if isinstance(answer, Exception):
                grant.set_exception(answer)
            else:
                grant.set_result(cast(Lease, answer))
