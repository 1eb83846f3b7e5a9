"""Learning that a caller died the moment Ray knows it, without polling.

Ray does not cancel an actor call whose caller died: a provider actor would
go on waiting for slots and calling its backend for a pipeline whose driver
was killed, and the manager would keep that pipeline's waiters queued. So
every call to a raygate actor names its caller process (:class:`Caller`),
and the callee watches each caller process through a *lifeline*. Once per
process and callee, before its first call there (:func:`caller_of`), the
caller makes two calls that stay pending on the callee:

- ``lifeline()``, which the callee does not answer while the caller lives.
  Its object ref is owned by the caller, so when the caller's process dies
  (a driver killed with ``kill -9``, an actor killed or lost with its node)
  Ray fails that ref with ``OwnerDiedError``, about two seconds later;
- ``watch(caller, [ref])``, in which the callee awaits that ref: its failure
  is the news. The callee then ends the lifeline call, which nobody waits
  for any more, and the watch call returns.

Sooner news comes from Ray's own channel of worker exits (see
:mod:`actors.exits`), which a callee follows from its first lifeline on:
within milliseconds of a caller's death where the caller's node reports it
(all but a lost node). Whichever comes first ends the caller's work, once.

Drivers, tasks, Serve replicas and actors, named or not, are watched alike,
and the calls themselves carry only the caller's id (an object ref in every
call would cost each one a borrower record in Ray). A callee that Ray
restarts with its calls retried (the manager) gets both calls again; one
restarted without them (a provider actor) fails them, and the caller makes
them anew before its next call there. Only a detached actor may host
lifelines: a pending call keeps a non-detached actor alive after its last
handle is gone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

import ray
from ray import ActorID, ObjectRef
from ray.actor import ActorHandle
from ray.exceptions import OwnerDiedError

from actors.bounded import Bounded
from actors.callers import Caller
from actors.errors import CallerGone
from actors.exits import WorkerExits

log = logging.getLogger(__name__)

# How many dead callers a callee remembers (a call of theirs may still arrive).
DEAD_MEMORY = 65_536


class _Lifelines:
    """This process as a caller, and its watch calls, one per callee actor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._caller: Caller | None = None
        self._watches: dict[ActorID, concurrent.futures.Future[None]] = {}

    def caller_of(self, callee: ActorHandle) -> Caller:
        context = ray.get_runtime_context()
        worker_id = context.get_worker_id()
        with self._lock:
            caller = self._caller
            if caller is None or caller.id != worker_id:  # a new Ray session here
                name = context.get_actor_name() if context.get_actor_id() else None
                caller = self._caller = Caller(worker_id, name or None)
                self._watches.clear()
            watch = self._watches.get(callee._actor_id)
            # A watch call that ended: the callee restarted without it.
            if watch is None or watch.done():
                lifeline = callee.lifeline.remote(worker_id)
                watch = callee.watch.remote(caller, [lifeline]).future()
                self._watches[callee._actor_id] = watch
        return caller


_LIFELINES = _Lifelines()


def caller_of(callee: ActorHandle) -> Caller:
    """This process as a caller of the actor ``callee``, watched there from now on."""
    return _LIFELINES.caller_of(callee)


class LifelineHost:
    """Mixed into a detached actor that watches its callers through a :class:`CallerWatch`."""

    _watch: CallerWatch

    async def lifeline(self, caller_id: str) -> None:
        """Called once by each caller process; returns after that process died."""
        await self._watch.lifeline(caller_id)

    async def watch(self, caller: Caller, lifeline: list[ObjectRef[None]]) -> None:
        """Called once by each caller process, with its lifeline's ref; returns after
        that process died, or when the ref belongs to this actor's previous life."""
        await self._watch.follow(caller, lifeline[0])


class CallerWatch:
    """Calls ``on_death(caller)`` once for each caller whose lifeline fails.

    Safe to use from any thread that runs an event loop.
    """

    def __init__(self, on_death: Callable[[Caller], None]) -> None:
        self._on_death = on_death
        self._lock = threading.Lock()
        self._lifelines: dict[str, concurrent.futures.Future[None]] = {}
        self._dead: Bounded[str, None] = Bounded(DEAD_MEMORY)
        self._exits = WorkerExits(self.exited)

    def gone(self, caller_id: str) -> bool:
        """Whether the caller ``caller_id`` is known to have died."""
        with self._lock:
            return caller_id in self._dead

    async def lifeline(self, caller_id: str) -> None:
        self._exits.start()
        with self._lock:
            if caller_id in self._dead:
                return
            end = self._lifelines.setdefault(caller_id, concurrent.futures.Future())
        await asyncio.wrap_future(end)

    async def follow(self, caller: Caller, lifeline: ObjectRef[None]) -> None:
        """Await ``lifeline``; if Ray fails it because its owner died, ``caller`` died."""
        try:
            await lifeline
        except OwnerDiedError:
            self._died(caller)
        except Exception:
            # The lifeline was hosted by this actor before it restarted; the
            # caller makes a new one before its next call.
            log.info("lost the lifeline of %s until its next call", caller, exc_info=True)

    def exited(self, worker_id: str) -> None:
        """Ray reports that the process of ``worker_id`` exited: if it is a caller here (a
        caller's id is its worker id), it died."""
        with self._lock:
            known = worker_id in self._lifelines
        if known:
            self._died(Caller(worker_id))

    def _died(self, caller: Caller) -> None:
        with self._lock:
            if caller.id in self._dead:
                return  # told by both the worker channel and the lifeline
            self._dead.add(caller.id)
            end = self._lifelines.pop(caller.id, None)
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
        if self.watch.gone(caller.id):
            raise CallerGone(str(caller))
        tasks = self._running.setdefault(caller.id, set())
        tasks.add(task)
        try:
            yield
        finally:
            tasks.discard(task)
            if not tasks and self._running.get(caller.id) is tasks:
                del self._running[caller.id]

    def _died(self, caller: Caller) -> None:
        tasks = self._running.pop(caller.id, set())
        if tasks:
            log.warning("%s died: cancelling its %d calls", caller, len(tasks))
        for task in tasks:
            task.cancel()
