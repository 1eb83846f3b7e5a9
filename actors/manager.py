"""The ConcurrencyManager Ray actor: one per cluster (or one per shard of the groups, with
``queue.shards``: see :mod:`actors.shards`), a thin shell over SlotGate.

Why two Ray concurrency groups: every process's batches of operations (see
:mod:`actors.courier`) run in ``control``, on a thread and event loop of their
own, while the calls that wait (each process's collect of its grants, its
question of its next in line, the queue page's view) wait in the default
group, so no number of them can delay a batch. The gate is safe to call from
both (see :mod:`actors.gate`).

Why ``max_concurrency`` is so high: Ray lets an async actor run 1,000 calls at
once by default and holds the rest in an overflow queue of its own, which is
not FIFO. Every waiting acquire must reach the engine's queue, where priority
and arrival decide; ``queue.max_pending_per_group`` is the bound users set.

Crash safety: the actor is detached and restarted by Ray (``max_restarts=-1``).
Every group's spec and the leases a capped group holds are journaled, a
lease before it is handed out, to a file on the head node and behind that
to Ray's GCS key-value store (see :mod:`actors.journal`). A restarted
manager starts a new epoch, restores the groups and holds their leases
again for one ttl; their holders renew and release them as before. Ray
retries the calls that were in flight against the new actor
(``max_task_retries=-1``), and each process asks again for the waiters it
still expects (see :mod:`actors.deliveries`): they queue again under their own
lease and request ids and priorities, before any new arrival and in the order
they first asked (``CallOptions.asked_at``), and an acquire whose grant was
journaled but never delivered gets that lease. A manager created anew (not
restarted by Ray) clears its name's journal.

A shard is a manager like any other, under its own name (``concurrency-manager-1``)
with its own journal and lifelines: it registers only the settings' models whose
servers it decides for, and restarts alone. Under a global cap, the first shard
keeps it and the others hold its slots (see :mod:`actors.capacity`).

Dead callers: an acquire names its caller process, which the manager watches
through the lifeline it hosts for it (see :mod:`actors.watch`): when Ray
reports that process dead, the manager drops its waiters and frees its
leases at once. Each lifeline's ref is kept in the GCS store too: Ray
retries the lifeline and watch calls of a live caller after a restart, but
nothing for a caller that died meanwhile, so a restarted manager follows
the stored ones itself, and the leases it restored for a dead holder end
within seconds, not at their ttl.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import ray
from ray import ObjectRef
from ray.actor import ActorHandle
from ray.experimental import internal_kv

from actors.callers import Caller
from actors.capacity import CAPACITY, ShardCapacity
from actors.engine import SlotEngine
from actors.gate import SlotGate
from actors.journal import Entries, FileStore, Journal, recorded
from actors.mailbox import Delivery
from actors.metrics import QueueMetrics
from actors.names import HEAD_NODE, MANAGER_NAME, NAMESPACE, named_actor
from actors.ops import DropCaller, Op, Unwatched, Watched
from actors.queueview import QueueView
from actors.settings import Settings
from actors.shards import Routes, shard_name
from actors.telemetry import configure_telemetry
from actors.watch import CallerWatch, LifelineHost

CONTROL = "control"
MAX_CONCURRENT_CALLS = 200_000
# How long a caller's question of its next in line waits unanswered before it asks again.
NEXT_IN_LINE_WAIT_SECONDS = 60.0
# How long a caller's collect of its grants waits for one before it asks again.
COLLECT_WAIT_SECONDS = 60.0


@ray.remote(
    concurrency_groups={CONTROL: 64},
    max_concurrency=MAX_CONCURRENT_CALLS,
    max_restarts=-1,
    max_task_retries=-1,
    num_cpus=0,
)
class ConcurrencyManager(LifelineHost):
    def __init__(self, settings: Settings, shard: int = 0, root: ActorHandle | None = None) -> None:
        self._settings = settings
        # The settings' models whose servers this shard decides for (see actors.shards).
        models = Routes(settings.queue.shards, settings.models).own_models(shard)
        configure_telemetry(settings.telemetry)
        queue = settings.queue
        context = ray.get_runtime_context()
        with warnings.catch_warnings():
            # Ray's own property reads its deprecated actor_id; the answer is sound.
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = context.was_current_actor_reconstructed
        engine = SlotEngine(
            epoch=time.time_ns(),
            lease_ttl=queue.lease_ttl_seconds,
            global_limit=queue.concurrency,
            max_pending_per_group=queue.max_pending_per_group,
            group_limits=settings.group_limits(),
            group_budgets=queue.group_budgets,
            group_weights=settings.group_weights(),
            adaptive=queue.adaptive,
            hand_over=queue.hand_over,
            lend=queue.lend,
            fair=queue.fairness == "fair",
            observer=QueueMetrics(),
            restarted_at=time.time() if restarted else None,
            models=models,
        )
        name = context.get_actor_name() or shard_name(shard)
        ahead, behind = FileStore(_journal_file(name)), GcsStore(f"{name}/groups/")
        self._lifelines = GcsStore(f"{name}/callers/")
        lifelines = {}
        if restarted:
            for record in recorded(ahead, behind):
                engine.restore(record)
            lifelines = self._lifelines.load()
        else:
            for store in (ahead, behind, self._lifelines):
                store.clear()
        for entry in models.values():
            for spec in entry.specs():
                engine.register(spec)
        # A global cap over several shards: the first keeps it, the others hold its slots.
        capped = queue.shards > 1 and queue.concurrency is not None
        if capped and root is None:
            engine.register(CAPACITY)
        self._gate = SlotGate(engine, Journal(ahead, behind))
        if capped and root is not None:
            self._capacity = ShardCapacity(root, self._gate, name, queue.lease_ttl_seconds)
        self._watch = CallerWatch(self._dropped)
        # Callers of the manager before the restart, some of which died meanwhile
        # (Ray retries no call for a dead caller). __init__ runs on the actor's loop.
        self._following = {
            asyncio.get_running_loop().create_task(
                self._follow(Caller(caller_id), ray.cloudpickle.loads(data))
            )
            for caller_id, data in lifelines.items()
        }

    def _dropped(self, caller: Caller) -> None:
        """Ray reported ``caller`` dead."""
        self._gate.apply([DropCaller(caller.id)])
        self._gate.forget_caller(caller.id)

    @ray.method(concurrency_group=CONTROL)
    async def apply(self, ops: list[Op[object]]) -> list[object]:
        """A batch of operations (see :mod:`actors.ops`), in order under one lock: each
        one's answer, or the error it raised. An acquire that must wait is answered
        ``Queued``; its grant comes by :meth:`collect`."""
        return self._gate.apply(ops)

    async def collect(
        self, caller: str, epoch: int | None, read: int, wait: float = COLLECT_WAIT_SECONDS
    ) -> Delivery:
        """The grants of the caller's (by id) waiters, past item ``read`` (see
        :meth:`SlotGate.collect`). Not in the control group: a call of every caller
        process waits here."""
        return await self._gate.collect(caller, epoch, read, wait)

    async def watch(self, caller: Caller, lifeline: list[ObjectRef[None]]) -> None:
        # The lifeline is kept outside the actor too, for the manager's next life.
        data = ray.cloudpickle.dumps(lifeline[0])
        await asyncio.to_thread(self._lifelines.put, caller.id, data)
        await self._follow(caller, lifeline[0])

    async def _follow(self, caller: Caller, lifeline: ObjectRef[None]) -> None:
        # While Ray would report this caller's death, its leases outlive their ttl.
        self._gate.apply([Watched(caller.id)])
        try:
            await self._watch.follow(caller, lifeline)
        finally:
            self._gate.apply([Unwatched(caller.id)])
            await asyncio.to_thread(self._lifelines.delete, caller.id)

    async def next_in_line(
        self, caller: str, known: dict[str, str], wait: float = NEXT_IN_LINE_WAIT_SECONDS
    ) -> dict[str, str]:
        """By group, the caller's (by id) own waiter that a slot it holds may pass straight
        to, once that differs from ``known`` (or after ``wait`` seconds). Not in the control
        group: a call of every caller process waits here."""
        return await self._gate.next_in_line(caller, known, wait)

    async def view(self, after: int = -1, first: int = 50, wait: float = 0.0) -> QueueView:
        """The queue as the queue page shows it, once it differs from version ``after``
        (see :meth:`SlotGate.view`). Not in the control group, whose 64 places a
        page's view, waiting for a change, must not take."""
        return await self._gate.view(after, first, wait)

    @ray.method(concurrency_group=CONTROL)
    async def settings(self) -> Settings:
        return self._settings


def _journal_file(name: str) -> Path:
    """Where the manager called ``name`` writes its journal ahead: in this Ray session's
    directory on its node (the head node), so that a new cluster never reads an old one's."""
    context = ray.get_runtime_context()
    session: str = context.get_session_name()
    return Path(context.get_temp_dir()) / session / "raygate" / f"{quote(name, safe='')}.journal"


class GcsStore:
    """Bytes by key in Ray's GCS key-value store, under ``prefix``: the journal's groups,
    the callers' lifelines."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    def put(self, key: str, value: bytes) -> None:
        internal_kv._internal_kv_put(self._prefix + key, value, namespace=NAMESPACE)

    def write(self, entries: Entries) -> None:
        for key, value in entries.items():
            if value is None:
                self.delete(key)
            else:
                self.put(key, value)

    def load(self) -> dict[str, bytes]:
        records = {}
        for key in self._keys():
            value = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
            if value is not None:
                records[key.decode().removeprefix(self._prefix)] = value
        return records

    def delete(self, key: str) -> None:
        internal_kv._internal_kv_del(self._prefix + key, namespace=NAMESPACE)

    def clear(self) -> None:
        for key in self._keys():
            internal_kv._internal_kv_del(key, namespace=NAMESPACE)

    def _keys(self) -> list[bytes]:
        keys: list[bytes] = internal_kv._internal_kv_list(self._prefix, namespace=NAMESPACE)
        return keys


def get_or_create_manager(
    settings: Settings,
    *,
    name: str = MANAGER_NAME,
    shard: int = 0,
    root: ActorHandle | None = None,
) -> ActorHandle:
    """The handle of the cluster's manager (its shard ``shard``, see actors.shards; every
    other than the first knows the first's handle, ``root``), on the head node: the
    running one if any, else a new one with ``settings``. Returns at once (no round
    trip). Wrapped by :class:`actors.client.ManagerClient`, which is what the rest of
    raygate passes."""
    return named_actor(
        ConcurrencyManager, shard_name(shard, name), settings, shard, root, placement=HEAD_NODE
    )
