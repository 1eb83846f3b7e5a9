"""The ConcurrencyManager Ray actor: one per cluster, a thin shell over SlotGate.

Why two Ray concurrency groups: acquires wait in the default group, while
release, cancel, renew and the queries run in ``control``, on a thread and
event loop of their own, so no number of waiting acquires can delay them. The
gate is safe to call from both (see :mod:`actors.gate`).

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
(``max_task_retries=-1``): waiting acquires queue again under their own lease
and request ids and priorities, before any new arrival and in the order they
first asked (``CallOptions.asked_at``), and an acquire whose grant was
journaled but never answered gets that lease. A manager created anew (not
restarted by Ray) clears its name's journal.

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
from actors.engine import Lease, SlotEngine
from actors.gate import SlotGate
from actors.groups import GroupSpec, Pool, resolve_model
from actors.journal import FileStore, Journal, recorded
from actors.leases import TokensUsed
from actors.metrics import QueueMetrics
from actors.names import HEAD_NODE, MANAGER_NAME, NAMESPACE, named_actor
from actors.options import DEFAULT_OPTIONS, CallOptions, Packed
from actors.outbox import Batch, Counted
from actors.queueview import QueueView
from actors.settings import Settings
from actors.stats import GroupInfo, QueuePosition, QueueStats
from actors.telemetry import configure_telemetry
from actors.watch import CallerWatch, LifelineHost

CONTROL = "control"
MAX_CONCURRENT_CALLS = 200_000
# How long a caller's question of its next in line waits unanswered before it asks again.
NEXT_IN_LINE_WAIT_SECONDS = 60.0


@ray.remote(
    concurrency_groups={CONTROL: 64},
    max_concurrency=MAX_CONCURRENT_CALLS,
    max_restarts=-1,
    max_task_retries=-1,
    num_cpus=0,
)
class ConcurrencyManager(LifelineHost):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
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
            fair=queue.fairness == "fair",
            observer=QueueMetrics(),
            restarted_at=time.time() if restarted else None,
            models=settings.models,
        )
        name = context.get_actor_name() or MANAGER_NAME
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
        for entry in settings.models.values():
            for spec in entry.specs():
                engine.register(spec)
        self._gate = SlotGate(engine, Journal(ahead, behind))
        self._watch = CallerWatch(lambda caller: self._gate.drop_caller(caller.id))
        # Callers of the manager before the restart, some of which died meanwhile
        # (Ray retries no call for a dead caller). __init__ runs on the actor's loop.
        self._following = {
            asyncio.get_running_loop().create_task(
                self._follow(Caller(caller_id), ray.cloudpickle.loads(data))
            )
            for caller_id, data in lifelines.items()
        }

    async def acquire(
        self,
        group: str | Pool,
        lease_id: str,
        options: CallOptions | Packed = DEFAULT_OPTIONS,
        caller: str | None = None,
    ) -> Lease:
        """A slot of ``group``, or of any group of a pool (the lease names which), for the
        lease ``lease_id``, asked with ``options`` (as
        :class:`CallOptions`, or packed: see :meth:`CallOptions.packed`) by the process
        whose :class:`Caller` id is ``caller``, once it is granted."""
        if not isinstance(options, CallOptions):
            options = CallOptions.unpacked(options)
        return await self._gate.acquire(group, lease_id, options, caller)

    async def count(self, batch: Batch, caller: str | None = None) -> Counted:
        """Releases and acquires of groups where nobody waits, many in one call (see
        :mod:`actors.outbox`); each acquire answered, in order, with its lease or its error.
        The calls already run: each is counted even if its group waits by now."""
        for lease_id, epoch in batch.releases:
            self._gate.release(lease_id, epoch)
        asks = (
            self._gate.acquire(a.group, a.lease_id, a.options, caller, started=True)
            for a in batch.acquires
        )
        answers = await asyncio.gather(*asks, return_exceptions=True)
        infos = (self._gate.group_info(g) for g in {a.group for a in batch.acquires})
        return Counted(
            # Only a cancelled count ends an acquire with less than an Exception.
            [a if isinstance(a, Lease | Exception) else RuntimeError(repr(a)) for a in answers],
            tuple(info for info in infos if info.gated),
        )

    @ray.method(concurrency_group=CONTROL)
    async def mark_out(self, group: str, reason: str, seconds: float) -> None:
        """A caller found the server of ``group`` down (see :meth:`SlotEngine.mark_out`)."""
        self._gate.mark_out(group, reason, seconds)

    @ray.method(concurrency_group=CONTROL)
    async def fell_back(self, model: str, fallback: str, reason: str) -> None:
        """A call of ``model`` went to its ``fallback`` (see :meth:`SlotEngine.fell_back`)."""
        self._gate.fell_back(model, fallback, reason)

    @ray.method(concurrency_group=CONTROL)
    async def throttled(self, group: str, lease_id: str, retry_after: float | None) -> GroupInfo:
        """A call of ``group`` got a 429 (see :mod:`actors.adaptive`)."""
        return self._gate.throttled(group, lease_id, retry_after)

    async def watch(self, caller: Caller, lifeline: list[ObjectRef[None]]) -> None:
        # The lifeline is kept outside the actor too, for the manager's next life.
        data = ray.cloudpickle.dumps(lifeline[0])
        await asyncio.to_thread(self._lifelines.put, caller.id, data)
        await self._follow(caller, lifeline[0])

    async def _follow(self, caller: Caller, lifeline: ObjectRef[None]) -> None:
        # While Ray would report this caller's death, its leases outlive their ttl.
        self._gate.watched(caller.id)
        try:
            await self._watch.follow(caller, lifeline)
        finally:
            self._gate.unwatched(caller.id)
            await asyncio.to_thread(self._lifelines.delete, caller.id)

    @ray.method(concurrency_group=CONTROL)
    async def release(self, lease_id: str, epoch: int, used: TokensUsed | None = None) -> None:
        self._gate.release(lease_id, epoch, used)

    @ray.method(concurrency_group=CONTROL)
    async def hand_over(
        self,
        group: str,
        lease_id: str,
        epoch: int,
        successor: str,
        caller: str | None = None,
        used: TokensUsed | None = None,
    ) -> None:
        """Release ``lease_id``, whose process (``caller``, its id) passed its slot
        straight to ``successor``, the waiter :meth:`next_in_line` named (see
        :meth:`SlotEngine.hand_over`)."""
        self._gate.hand_over(group, lease_id, epoch, successor, caller, used)

    async def next_in_line(
        self, caller: str, known: dict[str, str], wait: float = NEXT_IN_LINE_WAIT_SECONDS
    ) -> dict[str, str]:
        """By group, the caller's (by id) own waiter that a slot it holds may pass straight
        to, once that differs from ``known`` (or after ``wait`` seconds). Not in the control
        group: a call of every caller process waits here."""
        return await self._gate.next_in_line(caller, known, wait)

    @ray.method(concurrency_group=CONTROL)
    async def cancel(self, lease_id: str) -> None:
        self._gate.cancel(lease_id)

    @ray.method(concurrency_group=CONTROL)
    async def renew(self, lease_id: str, epoch: int) -> bool:
        return self._gate.renew(lease_id, epoch)

    @ray.method(concurrency_group=CONTROL)
    async def register(self, spec: GroupSpec) -> GroupInfo:
        return self._gate.register(spec)

    @ray.method(concurrency_group=CONTROL)
    async def group_info(self, group_id: str) -> GroupInfo:
        return self._gate.group_info(group_id)

    @ray.method(concurrency_group=CONTROL)
    async def can_run_immediately(self, model_id: str) -> bool:
        """Would a call of ``model_id`` (on any server of its pool) get a slot now?"""
        groups = [
            self._gate.register(spec) for spec in resolve_model(self._settings.models, model_id)
        ]
        return any(self._gate.can_run_immediately(info.id) for info in groups)

    @ray.method(concurrency_group=CONTROL)
    async def can_group_run_immediately(self, group_id: str) -> bool:
        return self._gate.can_run_immediately(group_id)

    @ray.method(concurrency_group=CONTROL)
    async def stats(self) -> QueueStats:
        return self._gate.stats()

    async def view(self, after: int = -1, first: int = 50, wait: float = 0.0) -> QueueView:
        """The queue as the queue page shows it, once it differs from version ``after``
        (see :meth:`SlotGate.view`). Not in the control group, whose 64 places a
        page's view, waiting for a change, must not take."""
        return await self._gate.view(after, first, wait)

    @ray.method(concurrency_group=CONTROL)
    async def position(self, request_id: str) -> QueuePosition | None:
        return self._gate.position(request_id)

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


def get_or_create_manager(settings: Settings, *, name: str = MANAGER_NAME) -> ActorHandle:
    """The handle of the cluster's manager, on the head node: the running one if any, else
    a new one with ``settings``. Returns at once (no round trip). Wrapped by
    :class:`actors.client.ManagerClient`, which is what the rest of raygate passes."""
    return named_actor(ConcurrencyManager, name, settings, placement=HEAD_NODE)
