"""Typed access to the ConcurrencyManager for callers anywhere in the cluster.

    client = ManagerClient.connect(settings)                 # a driver script
    async with client.slot(group, CallOptions(priority=8)) as lease:
        ...                                                   # the gated call

How a slot is waited for, kept and given back is :mod:`actors.slotkeeper`'s. Every
other operation is a message (see :mod:`actors.ops`) that :meth:`ManagerClient.ask`
sends; the friendly methods (``register``, ``stats``, ...) make one each.

With ``queue.shards`` above 1 the groups are split between several managers (see
:mod:`actors.shards`): the client sends each operation to its group's shard,
keeps a courier, a mailbox and lent slots for each, and merges what all of
them say of the whole queue (stats, the queue page's view, a request's
position).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TypeVar, cast

import ray
from ray.actor import ActorHandle

from actors.calls import cancellable, unwrap
from actors.courier import Courier
from actors.groups import GroupSpec, ModelEntry, Pool, model_entry, pool_of
from actors.leases import Lease, TokensUsed
from actors.manager import get_or_create_manager
from actors.names import MANAGER_NAME, NAMESPACE
from actors.ops import (
    Acquire,
    CanRun,
    FellBack,
    GroupInfoOf,
    HandOver,
    Op,
    OutlookOf,
    Position,
    Register,
    Stats,
    TakeOut,
    Throttled,
)
from actors.options import DEFAULT_OPTIONS, CallOptions
from actors.queueview import QueueView
from actors.settings import Settings, load_settings
from actors.shards import Routes, ViewVersions, merged_stats, merged_view, shard_name
from actors.slotkeeper import SlotKeeper
from actors.stats import GroupInfo, Outlook, QueuePosition, QueueStats
from actors.tickets import Ticket, Tickets

log = logging.getLogger(__name__)

A = TypeVar("A")


class ManagerClient:
    """The typed way to the cluster's manager (its shards). Picklable: it travels into
    actors and tasks as its handles, and starts afresh there."""

    def __init__(self, *handles: ActorHandle, routes: Routes | None = None) -> None:
        self.routes = routes if routes is not None else Routes(len(handles))
        if self.routes.count != len(handles):
            raise ValueError(f"{len(handles)} manager handles for {self.routes.count} shards")
        self.handles = handles
        # The first shard's: the manager itself when there is one shard.
        self.handle = handles[0]
        self._shards = tuple(_Shard(handle) for handle in handles)
        self._views = ViewVersions()
        self._tickets = Tickets()

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
        """The cluster's manager (each of its shards), the running one if any, else a new
        one with ``settings``; returns at once (no round trip, and no word if the running
        one's settings differ)."""
        routes = Routes(settings.queue.shards, settings.models)
        root = get_or_create_manager(settings, name=name)
        others = [
            get_or_create_manager(settings, name=name, shard=shard, root=root)
            for shard in range(1, routes.count)
        ]
        return cls(root, *others, routes=routes)

    @classmethod
    def running(cls, *, name: str = MANAGER_NAME) -> ManagerClient | None:
        """The cluster's manager if one runs, else None (nothing made); with several
        shards, one round trip for their number."""
        try:
            first = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return None
        settings: Settings = ray.get(first.settings.remote())
        if settings.queue.shards == 1:
            return cls(first)
        routes = Routes(settings.queue.shards, settings.models)
        others = [
            ray.get_actor(shard_name(shard, name), namespace=NAMESPACE)
            for shard in range(1, routes.count)
        ]
        return cls(first, *others, routes=routes)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuilt, (self.handles, self.routes))

    def kill(self, *, restart: bool = False) -> None:
        """Kill the manager (every shard); ``restart``: let Ray restart it, as after a
        crash (tests and benchmarks of crash safety)."""
        for handle in self.handles:
            ray.kill(handle, no_restart=not restart)

    # -- operations -----------------------------------------------------------------

    async def ask(self, op: Op[A]) -> A:
        """One operation (see :mod:`actors.ops`), sent to the shard of its group: its
        answer; raises its error. A group taken out of rotation or throttled waits for
        time too: its next grant is the manager's to make, not a hand-over here's, and
        after a 429 its calls from here ask and wait (its info, asked in the same call,
        says so). Stats and a request's position are every shard's, merged."""
        if isinstance(op, Stats) and len(self._shards) > 1:
            each = await asyncio.gather(*(shard.ask(op) for shard in self._shards))
            return cast(A, merged_stats(each))
        if isinstance(op, Position) and len(self._shards) > 1:
            found = await asyncio.gather(*(shard.ask(op) for shard in self._shards))
            return cast(A, next((at for at in found if at is not None), None))
        return await self._shard_of(op).ask(op)

    async def apply(self, ops: list[Op[object]]) -> list[object]:
        """Operations in this client's next manager call (one shard's), with whatever else
        it sends meanwhile (see :mod:`actors.courier`): each one's answer, or the error it
        raised."""
        shards = {self._shard_of(op) for op in ops}
        if len(shards) > 1:
            raise ValueError("one batch goes to one shard: these operations' groups differ")
        return await shards.pop().apply(ops)

    def _shard_of(self, op: Op[object]) -> _Shard:
        if len(self._shards) == 1:
            return self._shards[0]
        match op:
            case Acquire(group_id=group):
                return self._shards[self.routes.of_pool(pool_of(group))]
            case Register(spec=spec):
                return self._shards[self.routes.of_group(spec.id)]
            case GroupInfoOf() | CanRun() | TakeOut() | Throttled() | HandOver():
                return self._shards[self.routes.of_group(op.group_id)]
            case OutlookOf(group_id=group):
                return self._shards[self.routes.of_pool(pool_of(group))]
            case FellBack(model=model):
                return self._shards[self.routes.of_model(model)]
        raise ValueError(
            f"{type(op).__name__} names no group, and {len(self._shards)} shards decide for "
            "the groups: a slot's own operations go by its slot (ManagerClient.slot)"
        )

    async def register(self, spec: GroupSpec) -> GroupInfo:
        return await self.ask(Register(spec))

    async def group_info(self, group_id: str) -> GroupInfo:
        shard = self._shards[self.routes.of_group(group_id)]
        info = shard.groups.get(group_id)
        return info if info is not None else await shard.ask(GroupInfoOf(group_id))

    async def take_out(self, group_id: str, reason: str, seconds: float) -> None:
        """The server of ``group_id`` is down: out of rotation for ``seconds``."""
        await self.ask(TakeOut(group_id, reason, seconds))

    async def stats(self) -> QueueStats:
        return await self.ask(Stats())

    async def position(self, request_id: str) -> QueuePosition | None:
        return await self.ask(Position(request_id))

    async def can_group_run_immediately(self, group_id: str) -> bool:
        return await self.ask(CanRun(group_id))

    async def can_run_immediately(
        self, model_id: str, models: Mapping[str, ModelEntry] | None = None
    ) -> bool:
        """Would a call of ``model_id`` (on any server of its pool) get a slot now?
        ``models`` as for :meth:`outlook`."""
        return (await self.outlook(model_id, models=models)).runs_now

    async def outlook(
        self,
        model_id: str,
        options: CallOptions = DEFAULT_OPTIONS,
        models: Mapping[str, ModelEntry] | None = None,
    ) -> Outlook:
        """What a new call of ``model_id`` at ``options`` would meet now: whether it runs
        at once, the slots free, who waits by priority, its estimated wait. ``models``:
        the registry to find it in (by default this client's settings'; a
        providers.discovery.Catalog's to know the names the servers list)."""
        return await self.ask(OutlookOf(await self._model_pool(model_id, models), options))

    # -- slots by model id (see actors.tickets) --------------------------------------

    async def acquire_slot(
        self,
        model_id: str,
        options: CallOptions = DEFAULT_OPTIONS,
        models: Mapping[str, ModelEntry] | None = None,
    ) -> Ticket:
        """Wait for a slot of ``model_id`` (of any server of its pool) and hold it until
        :meth:`release_slot`; ``models`` as for :meth:`outlook`."""
        pool = await self._model_pool(model_id, models)
        group = pool[0] if len(pool) == 1 else pool
        return await self._tickets.take(model_id, self.slot(group, options))

    async def release_slot(self, ticket: Ticket) -> None:
        """Give back the slot of a ticket :meth:`acquire_slot` gave this client; a ticket
        released already, or another client's, raises TicketNotHeld and releases nothing."""
        await self._tickets.give_back(ticket)

    async def _model_pool(self, model_id: str, models: Mapping[str, ModelEntry] | None) -> Pool:
        """The groups of ``model_id``'s servers, each known to its shard."""
        specs = model_entry(self.routes.models if models is None else models, model_id).specs()
        for spec in specs:
            if spec.id not in self._shards[self.routes.of_group(spec.id)].groups:
                await self.register(spec)
        return tuple(spec.id for spec in specs)

    # -- slots -------------------------------------------------------------------

    def slot(
        self, group: str | Pool, options: CallOptions = DEFAULT_OPTIONS
    ) -> AbstractAsyncContextManager[Lease]:
        """See :meth:`actors.slotkeeper.SlotKeeper.slot`."""
        return self._shards[self.routes.of_pool(pool_of(group))].slots.slot(group, options)

    def report_usage(self, lease: Lease, used: TokensUsed) -> None:
        """See :meth:`actors.slotkeeper.SlotKeeper.report_usage`."""
        self._shards[self.routes.of_group(lease.group)].slots.report_usage(lease, used)

    def named_next(self, group: str) -> str | None:
        """See :meth:`actors.slotkeeper.SlotKeeper.named_next`."""
        return self._shards[self.routes.of_group(group)].slots.named_next(group)

    async def drain(self) -> None:
        """Give back the slots lent to this process and kept idle (see actors.lending), and
        wait until every call this client sent without waiting has been answered."""
        await asyncio.gather(*(shard.slots.drain() for shard in self._shards))

    # -- queries -------------------------------------------------------------------

    async def view(self, after: int = -1, first: int = 50, wait: float = 0.0) -> QueueView:
        """The queue page's view, once it differs from version ``after`` (at most
        ``wait`` seconds later); see :mod:`actors.queueview`. Of several shards, their
        views merged, as soon as one of them changed."""
        if len(self.handles) == 1:
            return await _view(self.handle, after, first, wait)
        since = self._views.of(after, len(self.handles))
        waits = [
            asyncio.ensure_future(_view(handle, known, first, wait))
            for handle, known in zip(self.handles, since, strict=True)
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for still in waits:
                still.cancel()
        views = [
            w.result() if w.done() and not w.cancelled() else await _view(handle, -1, first, 0.0)
            for w, handle in zip(waits, self.handles, strict=True)
        ]
        return merged_view(views, self._views.note(views))


class _Shard:
    """One manager shard as this process sees it: its handle, what it said of its groups,
    the courier of its operations and this process's slots there."""

    def __init__(self, handle: ActorHandle) -> None:
        self.handle = handle
        # What this client last heard of each group (a throttled group waits from then on).
        self.groups: dict[str, GroupInfo] = {}
        self._courier = Courier(self._call)
        self.slots = SlotKeeper(handle, self.groups, self.ask, self.apply, self._courier)

    async def ask(self, op: Op[A]) -> A:
        ops: list[Op[object]] = [op]
        if isinstance(op, TakeOut | Throttled):
            self.slots.forget(op.group_id)
            ops.append(GroupInfoOf(op.group_id))
        answer = (await self.apply(ops))[0]
        if isinstance(answer, Exception):
            raise answer
        return cast(A, answer)

    async def apply(self, ops: list[Op[object]]) -> list[object]:
        """What the answers say of a group (its info) is kept for this client's next slots."""
        answers = [await answer for answer in self._courier.send(ops)]
        for answer in answers:
            if isinstance(answer, GroupInfo):
                self.groups[answer.id] = answer
        return answers

    async def _call(self, ops: list[Op[object]]) -> list[object]:
        answers: list[object] = await unwrap(self.handle.apply.remote(ops))
        return answers


async def _view(handle: ActorHandle, after: int, first: int, wait: float) -> QueueView:
    view: QueueView = await cancellable(handle.view.remote(after, first, wait))
    return view


def _rebuilt(handles: Sequence[ActorHandle], routes: Routes) -> ManagerClient:
    return ManagerClient(*handles, routes=routes)
