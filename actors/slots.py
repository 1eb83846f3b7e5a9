"""Where callers get slots from: the cluster's manager, an in-process gate, or nowhere.

Provider code asks a :class:`SlotSource` and does not care which one it has:
:class:`actors.client.ManagerClient` in a cluster, :class:`LocalSlots` for a
single process (and tests without Ray), :class:`NoSlots` when
``queue.enabled`` is false and every call goes straight to its backend.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from actors.engine import Lease
from actors.errors import PoolUnavailable
from actors.gate import SlotGate
from actors.groups import GroupSpec, Pool, pool_of
from actors.leases import TokensUsed
from actors.options import DEFAULT_OPTIONS, CallOptions
from actors.stats import GroupInfo


class SlotSource(Protocol):
    async def register(self, spec: GroupSpec) -> GroupInfo: ...

    def slot(
        self, group: str | Pool, options: CallOptions = DEFAULT_OPTIONS
    ) -> AbstractAsyncContextManager[Lease]:
        """One slot of ``group``, or of any group of a pool (the lease names which)."""
        ...

    async def can_group_run_immediately(self, group: str) -> bool:
        """Would a call of ``group`` get its slot now, without waiting?"""
        ...

    def report_usage(self, lease: Lease, used: TokensUsed) -> None:
        """The tokens the call holding ``lease`` used, sent with its release to correct
        its group's budget (see :mod:`actors.budget`) and its flow's service (see
        :mod:`actors.waitqueue`)."""
        ...

    async def throttled(self, lease: Lease, retry_after: float | None) -> None:
        """The call holding ``lease`` got a 429, to be tried again ``retry_after`` seconds
        from now (see :mod:`actors.adaptive`)."""
        ...

    async def mark_out(self, group: str, reason: str, seconds: float) -> None:
        """The server of ``group`` is down: no grants there for ``seconds`` (see
        :meth:`actors.engine.SlotEngine.mark_out`)."""
        ...

    async def fell_back(self, model: str, fallback: str, reason: str) -> None:
        """A call of ``model`` went to its ``fallback``: ``reason``, the error's type (see
        :meth:`actors.engine.SlotEngine.fell_back`)."""
        ...


class LocalSlots:
    """Slots from a gate in this process: the manager's rules without Ray."""

    def __init__(self, gate: SlotGate) -> None:
        self.gate = gate
        self._used: dict[str, TokensUsed] = {}

    def report_usage(self, lease: Lease, used: TokensUsed) -> None:
        self._used[lease.id] = used

    async def throttled(self, lease: Lease, retry_after: float | None) -> None:
        self.gate.throttled(lease.group, lease.id, retry_after)

    async def mark_out(self, group: str, reason: str, seconds: float) -> None:
        self.gate.mark_out(group, reason, seconds)

    async def fell_back(self, model: str, fallback: str, reason: str) -> None:
        self.gate.fell_back(model, fallback, reason)

    async def register(self, spec: GroupSpec) -> GroupInfo:
        return self.gate.register(spec)

    async def can_group_run_immediately(self, group: str) -> bool:
        return self.gate.can_run_immediately(group)

    @asynccontextmanager
    async def slot(
        self, group: str | Pool, options: CallOptions = DEFAULT_OPTIONS
    ) -> AsyncIterator[Lease]:
        lease = await self.gate.acquire(group, uuid.uuid4().hex, options.identified())
        try:
            yield lease
        finally:
            self.gate.release(lease.id, lease.epoch, self._used.pop(lease.id, None))


class NoSlots:
    """No gating at all (``queue.enabled = false``): every call runs at once. A pool's
    calls take its servers in turn (weights apart), skipping a server found down until its
    time out passes; with all of them out, a call fails at once with
    :class:`actors.errors.PoolUnavailable`, as it would with the queue on."""

    def __init__(self) -> None:
        self._turn = 0
        # By group found down: why, and until when (time.monotonic()).
        self._out: dict[str, tuple[str, float]] = {}

    async def register(self, spec: GroupSpec) -> GroupInfo:
        return GroupInfo(
            id=spec.id, kind=spec.kind, limit=None, global_limit=None, epoch=0, lease_ttl=0.0
        )

    async def can_group_run_immediately(self, group: str) -> bool:
        return True

    def report_usage(self, lease: Lease, used: TokensUsed) -> None:
        """Without a queue there is no budget or share to correct."""

    async def throttled(self, lease: Lease, retry_after: float | None) -> None:
        """Without a queue nobody else waits: each call retries after its own 429."""

    async def mark_out(self, group: str, reason: str, seconds: float) -> None:
        self._out[group] = (reason, time.monotonic() + seconds)

    async def fell_back(self, model: str, fallback: str, reason: str) -> None:
        """Without a queue there are no stats: the metric ``llm_fallbacks`` counts them."""

    @asynccontextmanager
    async def slot(
        self, group: str | Pool, options: CallOptions = DEFAULT_OPTIONS
    ) -> AsyncIterator[Lease]:
        pool = pool_of(group)
        now = time.monotonic()
        up = [g for g in pool if g not in self._out or self._out[g][1] <= now]
        if not up:
            raise PoolUnavailable({g: self._out[g][0] for g in pool})
        taken, self._turn = up[self._turn % len(up)], self._turn + 1
        yield Lease(
            id=uuid.uuid4().hex,
            group=taken,
            request_id=options.request_id or "",
            priority=options.priority,
            epoch=0,
            ttl=0.0,
        )
