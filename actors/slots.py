"""Where callers get slots from: the cluster's manager, an in-process gate, or nowhere.

Provider code asks a :class:`SlotSource` and does not care which one it has:
:class:`actors.client.ManagerClient` in a cluster, :class:`LocalSlots` for a
single process (and tests without Ray), :class:`NoSlots` when
``queue.enabled`` is false and every call goes straight to its backend. Besides
a slot, a provider tells its source what it learned (a server down, a 429, a
fallback taken) and asks what it needs (a group's info) as the manager's
operations (see :mod:`actors.ops`), through :meth:`SlotSource.ask`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

from actors.errors import UnknownGroup
from actors.gate import SlotGate
from actors.groups import GroupSpec, Pool, pool_of
from actors.leases import Lease, TokensUsed
from actors.ops import (
    Acquire,
    CanRun,
    FellBack,
    GroupInfoOf,
    Op,
    Register,
    Release,
    TakeOut,
    Throttled,
)
from actors.options import DEFAULT_OPTIONS, CallOptions
from actors.rotation import Out, least_busy, none_in_rotation
from actors.stats import GroupInfo

A = TypeVar("A")


class SlotSource(Protocol):
    def slot(
        self, group: str | Pool, options: CallOptions = DEFAULT_OPTIONS
    ) -> AbstractAsyncContextManager[Lease]:
        """One slot of ``group``, or of any group of a pool (the lease names which)."""
        ...

    def report_usage(self, lease: Lease, used: TokensUsed) -> None:
        """The tokens the call holding ``lease`` used, sent with its release to correct
        its group's budget (see :mod:`actors.budget`) and its flow's service (see
        :mod:`actors.fairshare`)."""
        ...

    async def ask(self, op: Op[A]) -> A:
        """One of the manager's operations (see :mod:`actors.ops`): its answer."""
        ...


class LocalSlots:
    """Slots from a gate in this process: the manager's rules without Ray."""

    def __init__(self, gate: SlotGate) -> None:
        self.gate = gate
        self._used: dict[str, TokensUsed] = {}

    def report_usage(self, lease: Lease, used: TokensUsed) -> None:
        self._used[lease.id] = used

    async def ask(self, op: Op[A]) -> A:
        [answer] = self.gate.apply([op])
        if isinstance(answer, Exception):
            raise answer
        return cast(A, answer)

    @asynccontextmanager
    async def slot(
        self, group: str | Pool, options: CallOptions = DEFAULT_OPTIONS
    ) -> AsyncIterator[Lease]:
        lease = await self.gate.acquire(Acquire(group, uuid.uuid4().hex, options.identified()))
        try:
            yield lease
        finally:
            self.gate.apply([Release(lease.id, lease.epoch, self._used.pop(lease.id, None))])


@dataclass
class _Server:
    """A group as the path without a queue sees it: its calls running from here, its
    weight (1: without the settings' weights) and its turn (see actors.rotation)."""

    group: str
    active: int = 0
    weight: float = 1.0
    turn: float = 0.0


class NoSlots:
    """No gating at all (``queue.enabled = false``): every call runs at once. A pool's
    calls take the server with the fewest calls running from here, alike ones in turn,
    skipping one found down until its cooldown passes, as the queue's do (see
    :mod:`actors.rotation`); with all of them out, a call fails at once with
    :class:`actors.errors.OutOfRotation`, as it would with the queue on."""

    def __init__(self) -> None:
        self._specs: dict[str, GroupSpec] = {}
        self._out: dict[str, Out] = {}
        self._servers: dict[str, _Server] = {}

    def report_usage(self, lease: Lease, used: TokensUsed) -> None:
        """Without a queue there is no budget or share to correct."""

    async def ask(self, op: Op[A]) -> A:
        """What the operations mean without a queue: a group registers unlimited, always
        runs at once, and is out of rotation here when found down; nobody else waits
        after a 429, and the metric ``llm_fallbacks`` alone counts fallbacks."""
        answer: object = None
        match op:
            case Register(spec=spec):
                self._specs[spec.id] = spec
                answer = self._info(spec.id)
            case GroupInfoOf(group_id=group_id) | Throttled(group_id=group_id):
                answer = self._info(group_id)
            case CanRun():
                answer = True
            case TakeOut(group_id=group_id, reason=reason, seconds=seconds):
                self._out[group_id] = Out(reason, time.monotonic() + seconds)
            case FellBack():
                pass
            case _:
                raise ValueError(f"{type(op).__name__} needs the queue (queue.enabled is false)")
        return cast(A, answer)

    def _info(self, group_id: str) -> GroupInfo:
        spec = self._specs.get(group_id)
        if spec is None:
            raise UnknownGroup(group_id, tuple(self._specs))
        return GroupInfo(
            id=spec.id, kind=spec.kind, limit=None, global_limit=None, epoch=0, lease_ttl=0.0
        )

    @asynccontextmanager
    async def slot(
        self, group: str | Pool, options: CallOptions = DEFAULT_OPTIONS
    ) -> AsyncIterator[Lease]:
        pool = pool_of(group)
        now = time.monotonic()
        out = none_in_rotation({g: self._out.get(g) for g in pool}, now)
        if out is not None:
            raise out
        up = [g for g in pool if g not in self._out or not self._out[g].excludes(now)]
        taken = least_busy([self._servers.setdefault(g, _Server(g)) for g in up])
        taken.active += 1
        try:
            yield Lease(
                id=uuid.uuid4().hex,
                group=taken.group,
                request_id=options.request_id or "",
                priority=options.priority,
                epoch=0,
                ttl=0.0,
            )
        finally:
            taken.active -= 1


def slots_of(manager: SlotSource | None) -> SlotSource:
    """Where a provider gets its slots: the cluster's manager (a ManagerClient), or none
    (``queue.enabled: false``)."""
    return manager if manager is not None else NoSlots()
