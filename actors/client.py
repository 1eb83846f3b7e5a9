"""Typed access to the ConcurrencyManager for callers anywhere in the cluster.

    client = ManagerClient.connect(settings)                 # a driver script
    async with client.slot(group, CallOptions(priority=8)) as lease:
        ...                                                   # the gated call

How a slot is waited for, kept and given back is :mod:`actors.slotkeeper`'s. Every
other operation is a message (see :mod:`actors.ops`) that :meth:`ManagerClient.ask`
sends; the friendly methods (``register``, ``stats``, ...) make one each.
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from typing import TypeVar, cast

import ray
from ray.actor import ActorHandle

from actors.calls import cancellable, unwrap
from actors.courier import Courier
from actors.groups import GroupSpec, Pool
from actors.leases import Lease, TokensUsed
from actors.manager import get_or_create_manager
from actors.names import MANAGER_NAME, NAMESPACE
from actors.ops import (
    CanRun,
    GroupInfoOf,
    Op,
    Position,
    Register,
    Stats,
    TakeOut,
    Throttled,
)
from actors.options import DEFAULT_OPTIONS, CallOptions
from actors.queueview import QueueView
from actors.settings import Settings, load_settings
from actors.slotkeeper import SlotKeeper
from actors.stats import GroupInfo, QueuePosition, QueueStats

log = logging.getLogger(__name__)

A = TypeVar("A")


class ManagerClient:
    """The typed way to the cluster's manager. Picklable: it travels into actors and tasks
    as its handle, and starts afresh there."""

    def __init__(self, handle: ActorHandle) -> None:
        self.handle = handle
        # What this client last heard of each group (a throttled group waits from then on).
        self._groups: dict[str, GroupInfo] = {}
        self._courier = Courier(self._call)
        self._slots = SlotKeeper(handle, self._groups, self.ask, self.apply, self._courier)

    @classmethod
    def connect(
        cls, settings: Settings | None = None, *, name: str = MANAGER_NAME
    ) -> ManagerClient:
        """From a driver: get or create the cluster's manager (blocks for one round trip).

        A manager that is already running keeps the settings it was created
        with; if they differ from ``settings``, this says so in the log.
        """
        settings = settings if settings is not None else load_settings()
        client = cls.create(settings, name=name)
        if ray.get(client.handle.settings.remote()) != settings:
            log.warning(
                "the running manager %r was created with other settings; it keeps them. "
                "To apply new ones, kill it (ray.kill) and connect again",
                name,
            )
        return client

    @classmethod
    def create(cls, settings: Settings, *, name: str = MANAGER_NAME) -> ManagerClient:
        """The cluster's manager, the running one if any, else a new one with ``settings``;
        returns at once (no round trip, and no word if the running one's settings differ)."""
        return cls(get_or_create_manager(settings, name=name))

    @classmethod
    def running(cls, *, name: str = MANAGER_NAME) -> ManagerClient | None:
        """The cluster's manager if one runs, else None (nothing made)."""
        try:
            return cls(ray.get_actor(name, namespace=NAMESPACE))
        except ValueError:
            return None

    def __reduce__(self) -> tuple[type[ManagerClient], tuple[ActorHandle]]:
        return (ManagerClient, (self.handle,))

    def kill(self, *, restart: bool = False) -> None:
        """Kill the manager; ``restart``: let Ray restart it, as after a crash (tests and
        benchmarks of crash safety)."""
        ray.kill(self.handle, no_restart=not restart)

    # -- operations -----------------------------------------------------------------

    async def ask(self, op: Op[A]) -> A:
        """One operation (see :mod:`actors.ops`): its answer; raises its error. A group
        taken out of rotation or throttled waits for time too: its next grant is the
        manager's to make, not a hand-over here's, and after a 429 its calls from here
        ask and wait (its info, asked in the same call, says so)."""
        ops: list[Op[object]] = [op]
        if isinstance(op, TakeOut | Throttled):
            self._slots.forget(op.group_id)
            ops.append(GroupInfoOf(op.group_id))
        answer = (await self.apply(ops))[0]
        if isinstance(answer, Exception):
            raise answer
        return cast(A, answer)

    async def apply(self, ops: list[Op[object]]) -> list[object]:
        """Operations in this client's next manager call, with whatever else it sends
        meanwhile (see :mod:`actors.courier`): each one's answer, or the error it raised.
        What the answers say of a group (its info) is kept for this client's next slots."""
        answers = [await answer for answer in self._courier.send(ops)]
        for answer in answers:
            if isinstance(answer, GroupInfo):
                self._groups[answer.id] = answer
        return answers

    async def _call(self, ops: list[Op[object]]) -> list[object]:
        answers: list[object] = await unwrap(self.handle.apply.remote(ops))
        return answers

    async def register(self, spec: GroupSpec) -> GroupInfo:
        return await self.ask(Register(spec))

    async def group_info(self, group_id: str) -> GroupInfo:
        info = self._groups.get(group_id)
        return info if info is not None else await self.ask(GroupInfoOf(group_id))

    async def take_out(self, group_id: str, reason: str, seconds: float) -> None:
        """The server of ``group_id`` is down: out of rotation for ``seconds``."""
        await self.ask(TakeOut(group_id, reason, seconds))

    async def stats(self) -> QueueStats:
        return await self.ask(Stats())

    async def position(self, request_id: str) -> QueuePosition | None:
        return await self.ask(Position(request_id))

    async def can_group_run_immediately(self, group_id: str) -> bool:
        return await self.ask(CanRun(group_id))

    async def can_run_immediately(self, model_id: str) -> bool:
        """Would a call of ``model_id`` (on any server of its pool) get a slot now?"""
        return await unwrap(self.handle.can_run_immediately.remote(model_id))

    # -- slots -------------------------------------------------------------------

    def slot(
        self, group: str | Pool, options: CallOptions = DEFAULT_OPTIONS
    ) -> AbstractAsyncContextManager[Lease]:
        """See :meth:`actors.slotkeeper.SlotKeeper.slot`."""
        return self._slots.slot(group, options)

    def report_usage(self, lease: Lease, used: TokensUsed) -> None:
        """See :meth:`actors.slotkeeper.SlotKeeper.report_usage`."""
        self._slots.report_usage(lease, used)

    def named_next(self, group: str) -> str | None:
        """See :meth:`actors.slotkeeper.SlotKeeper.named_next`."""
        return self._slots.named_next(group)

    async def drain(self) -> None:
        """Give back the slots lent to this process and kept idle (see actors.lending), and
        wait until every call this client sent without waiting has been answered."""
        await self._slots.drain()

    # -- queries -------------------------------------------------------------------

    async def view(self, after: int = -1, first: int = 50, wait: float = 0.0) -> QueueView:
        """The queue page's view, once it differs from version ``after`` (at most
        ``wait`` seconds later); see :mod:`actors.queueview`."""
        view: QueueView = await cancellable(self.handle.view.remote(after, first, wait))
        return view
