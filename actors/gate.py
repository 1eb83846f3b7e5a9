"""The engine on an event loop: a waiter is a future that a freed slot resolves.

No polling anywhere. A queued acquire awaits its own future; whichever call
frees a slot (release, cancel, a reclaimed lease) gets the engine's new leases
back and resolves their futures on the spot. Expiry is one timer, set for the
earliest lease deadline and moved as deadlines change.

All methods must run on the one loop the gate lives on; the Ray actor hands
calls from its other threads to that loop (see :mod:`actors.manager`).
"""

from __future__ import annotations

import asyncio

from actors.engine import Lease, SlotEngine
from actors.errors import AcquireTimeout
from actors.waitqueue import DEFAULT_PRIORITY


class SlotGate:
    def __init__(self, engine: SlotEngine) -> None:
        self.engine = engine
        # Futures of queued acquires. Whoever pops an entry owns the clean-up.
        self._waiters: dict[str, asyncio.Future[Lease]] = {}
        self._expiry: asyncio.TimerHandle | None = None

    async def acquire(
        self,
        group: str,
        request_id: str,
        *,
        lease_id: str,
        priority: int = DEFAULT_PRIORITY,
        timeout: float | None = None,
    ) -> Lease:
        lease = self.engine.acquire(group, request_id, lease_id=lease_id, priority=priority)
        if lease is not None:
            self._arm_expiry()
            return lease
        waiter: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiters[lease_id] = waiter
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            self._abandon(lease_id, timed_out=True)
            raise AcquireTimeout(group, request_id, timeout or 0.0) from None
        except asyncio.CancelledError:
            self._abandon(lease_id)
            raise
        finally:
            self._waiters.pop(lease_id, None)

    def release(self, lease_id: str, epoch: int) -> None:
        self._hand_on(self.engine.release(lease_id, epoch))

    def cancel(self, lease_id: str) -> None:
        """A caller gave up on ``lease_id``: whether it waits, holds, or has not arrived yet."""
        waiter = self._waiters.get(lease_id)
        if waiter is None:
            self._hand_on(self.engine.cancel(lease_id))
            return
        self._abandon(lease_id)
        waiter.cancel()

    def renew(self, lease_id: str, epoch: int) -> bool:
        # The expiry timer may now fire early; it finds nothing due and re-arms.
        return self.engine.renew(lease_id, epoch)

    def reclaim_expired(self) -> None:
        self._hand_on(self.engine.reclaim_expired())

    def _abandon(self, lease_id: str, *, timed_out: bool = False) -> None:
        if self._waiters.pop(lease_id, None) is not None:
            self._hand_on(self.engine.cancel(lease_id, timed_out=timed_out))

    def _hand_on(self, granted: list[Lease]) -> None:
        for lease in granted:
            waiter = self._waiters.get(lease.id)
            # A cancelled waiter whose coroutine has not run yet: its _abandon
            # will find the lease held and pass it on.
            if waiter is not None and not waiter.done():
                waiter.set_result(lease)
        self._arm_expiry()

    def _arm_expiry(self) -> None:
        if self._expiry is not None:
            return
        deadline = self.engine.next_expiry()
        if deadline is None:
            return
        delay = max(0.0, deadline - self.engine.clock())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry = None
        self.reclaim_expired()
