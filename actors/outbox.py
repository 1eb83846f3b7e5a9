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
whichever batches the two travel in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from actors.engine import Lease
from actors.options import CallOptions
from actors.stats import GroupInfo

log = logging.getLogger(__name__)

BATCH_INTERVAL_SECONDS = 0.01


@dataclass(frozen=True)
class Ask:
    group: str
    lease_id: str
    options: CallOptions


@dataclass(frozen=True)
class Batch:
    """Acquires to count and leases to give back; the manager answers each acquire, in order,
    with its lease or the error that refused it."""

    acquires: tuple[Ask, ...] = ()
    # (lease id, epoch)
    releases: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Counted:
    """The manager's answer to a :class:`Batch`: each acquire's lease or error, in order,
    and the info of the batch's groups where calls now wait (after a 429, see
    :mod:`actors.adaptive`), whose next calls must ask and wait."""

    answers: list[Lease | Exception]
    gated: tuple[GroupInfo, ...] = ()


Send = Callable[[Batch], Awaitable[list[Lease | Exception]]]


@dataclass
class Outbox:
    """Queues acquires and releases and sends them, one :class:`Batch` in flight at a time
    and at most one per ``interval``."""

    send: Send
    interval: float = BATCH_INTERVAL_SECONDS
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _asks: list[tuple[Ask, asyncio.Future[Lease]]] = field(default_factory=list)
    _releases: list[tuple[str, int]] = field(default_factory=list)
    _sending: asyncio.Task[None] | None = None

    def acquire(self, ask: Ask) -> asyncio.Future[Lease]:
        """The grant, once the manager has answered."""
        grant: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._asks.append((ask, grant))
        self._wake()
        return grant

    def release(self, lease: Lease) -> None:
        self._releases.append((lease.id, lease.epoch))
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
            while self._asks or self._releases:
                started = self.clock()
                asks, self._asks = self._asks, []
                releases, self._releases = self._releases, []
                await self._send_one(asks, Batch(tuple(a for a, _ in asks), tuple(releases)))
                await self.sleep(self.interval - (self.clock() - started))
        finally:
            self._sending = None

    async def _send_one(self, asks: list[tuple[Ask, asyncio.Future[Lease]]], batch: Batch) -> None:
        try:
            answers = await self.send(batch)
        except Exception as exc:
            if batch.releases:
                log.warning(
                    "giving back %d leases failed; they expire after their ttl",
                    len(batch.releases),
                    exc_info=True,
                )
            answers = [exc] * len(asks)
        for (_, grant), answer in zip(asks, answers, strict=True):
            if grant.done():  # cancelled by a caller that stopped waiting for it
                continue
            if isinstance(answer, Exception):
                grant.set_exception(answer)
            else:
                grant.set_result(answer)
