"""Learning that a caller died the moment Ray knows it, without polling.

Ray does not cancel an actor call whose caller died: a provider actor would
go on waiting for slots and calling its backend for a pipeline whose driver
was killed, and the manager would keep that pipeline's waiters queued. So
every call to a raygate actor names its caller (:class:`Caller`), and the
callee watches each caller process through a *lifeline*:

- the caller, once per process and callee, calls the callee's ``lifeline``
  method, which does not return while the caller lives, and keeps the object
  ref of that call (:func:`caller_of`); the ref travels inside every
  ``Caller`` it sends;
- the callee awaits that ref. Ray owns an object by the process that made
  the call, so when that process dies (a driver killed with ``kill -9``, an
  actor killed or lost with its node) Ray fails the ref with
  ``OwnerDiedError``, about two seconds later: that failure is the news;
- the callee then ends the lifeline call, which nobody waits for any more.

Drivers, tasks, Serve replicas and actors, named or not, are watched alike.
Only a detached actor may host lifelines: a pending call keeps a
non-detached actor alive after its last handle is gone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import ray
from ray.exceptions import OwnerDiedError

from actors.callers import Caller
from actors.errors import CallerGone

log = logging.getLogger(__name__)

# How many dead callers a callee remembers (a call of theirs may still arrive).
DEAD_MEMORY = 65_536


class _Lifelines:
    """This process's lifelines, one per callee actor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._worker: str | None = None
        self._callers: dict[Any, tuple[Caller, concurrent.futures.Future[Any]]] = {}

    def caller_of(self, callee: Any) -> Caller:
        context = ray.get_runtime_context()
        worker = context.get_worker_id()
        with self._lock:
            if worker != self._worker:  # a new Ray session in this process
                self._callers.clear()
                self._worker = worker
            known = self._callers.get(callee._actor_id)
            # A lifeline that ended belongs to a callee that restarted without it.
            if known is None or known[1].done():
                lifeline = callee.lifeline.remote(worker)
                name = context.get_actor_name() if context.get_actor_id() else None
                known = (Caller(worker, lifeline, name or None), lifeline.future())
                self._callers[callee._actor_id] = known
            return known[0]


_LIFELINES = _Lifelines()


def caller_of(callee: Any) -> Caller:
    """This process as a caller of the actor ``callee`` (its lifeline is made on first use)."""
    return _LIFELINES.caller_of(callee)


class LifelineHost:
    """Mixed into a detached actor that watches its callers through a :class:`CallerWatch`."""

    _watch: CallerWatch

    async def lifeline(self, worker_id: str) -> None:
        """Called by each caller process once; returns after that process died."""
        await self._watch.lifeline(worker_id)


class CallerWatch:
    """Calls ``on_death(caller)`` once for each watched caller that dies.

    ``watch`` may be called from any thread that runs an event loop; the
    watch runs on that loop.
    """

    def __init__(self, on_death: Callable[[Caller], None]) -> None:
        self._on_death = on_death
        self._lock = threading.Lock()
        self._watching: dict[str, asyncio.Task[None]] = {}
        self._lifelines: dict[str, concurrent.futures.Future[None]] = {}
        self._dead: OrderedDict[str, None] = OrderedDict()

    def watch(self, caller: Caller | None) -> None:
        if caller is None or caller.lifeline is None:
            return
        with self._lock:
            if caller.worker_id in self._watching:
                return
            task = asyncio.get_running_loop().create_task(self._watch(caller))
            self._watching[caller.worker_id] = task

    def gone(self, worker_id: str) -> bool:
        """Whether the process ``worker_id`` is known to have died."""
        with self._lock:
            return worker_id in self._dead

    async def lifeline(self, worker_id: str) -> None:
        with self._lock:
            if worker_id in self._dead:
                return
            end = self._lifelines.setdefault(worker_id, concurrent.futures.Future())
        await asyncio.wrap_future(end)

    async def _watch(self, caller: Caller) -> None:
        died = False
        try:
            await caller.lifeline
        except OwnerDiedError:
            died = True
        except Exception:
            # The lifeline was hosted by this actor before it restarted; the
            # caller makes a new one with its next call.
            log.info("lost the lifeline of %s until its next call", caller, exc_info=True)
        finally:
            with self._lock:
                del self._watching[caller.worker_id]
        if died:
            self._died(caller)

    def _died(self, caller: Caller) -> None:
        with self._lock:
            self._dead[caller.worker_id] = None
            if len(self._dead) > DEAD_MEMORY:
                self._dead.popitem(last=False)
            end = self._lifelines.pop(caller.worker_id, None)
        self._on_death(caller)
        if end is not None:
            end.set_result(None)


class CallerCalls:
    """The calls each caller has running in this actor; a dead caller's are cancelled."""

    def __init__(self) -> None:
        self._running: dict[str, set[asyncio.Task[object]]] = {}
        self.watch = CallerWatch(self._died)

    @contextlib.contextmanager
    def running(self, caller: Caller | None) -> Iterator[None]:
        """Around the body of one call made by ``caller``.

        Raises CallerGone for a call that arrives after its caller died.
        """
        task = asyncio.current_task()
        if caller is None or task is None:
            yield
            return
        if self.watch.gone(caller.worker_id):
            raise CallerGone(str(caller))
        tasks = self._running.setdefault(caller.worker_id, set())
        tasks.add(task)
        self.watch.watch(caller)
        try:
            yield
        finally:
            tasks.discard(task)
            if not tasks and self._running.get(caller.worker_id) is tasks:
                del self._running[caller.worker_id]

    def _died(self, caller: Caller) -> None:
        tasks = self._running.pop(caller.worker_id, set())
        if tasks:
            log.warning("%s died: cancelling its %d calls", caller, len(tasks))
        for task in tasks:
            task.cancel()
