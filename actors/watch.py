"""Learning that a caller died the moment Ray knows it, without polling.

Ray does not cancel an actor call whose caller died: a provider actor would
go on waiting for slots and calling its backend for a pipeline whose driver
was killed, and the manager would keep that pipeline's waiters queued. So a
callee records who asked (:class:`actors.callers.Caller`) and watches each
caller with one actor call kept pending on it, :meth:`Watched.watched`. That
call never returns while the caller lives; Ray fails it the moment the
caller's process dies (``ActorDiedError``), and that failure is the news.

Only named actors can be watched (a watcher finds them by name); drivers and
unnamed actors are recorded but not watched, and their leases end by their
ttl. Every raygate actor that calls another is named and :class:`Watched`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

import ray
from ray.exceptions import RayActorError

from actors.callers import Caller

log = logging.getLogger(__name__)


def current_caller() -> Caller:
    """This process as a caller (Ray must be initialized)."""
    context = ray.get_runtime_context()
    name = context.get_actor_name() if context.get_actor_id() else None
    return Caller(
        worker_id=context.get_worker_id(),
        actor_name=name or None,
        namespace=context.namespace if name else None,
    )


class Watched:
    """Mixed into a named actor so that those it calls can watch it."""

    async def watched(self, worker_id: str) -> None:
        """Never returns while this actor's process is ``worker_id``.

        Returns at once if it is not (the actor was restarted since: that
        caller is gone); otherwise the call fails when the process dies.
        """
        if worker_id == ray.get_runtime_context().get_worker_id():
            await asyncio.Event().wait()


class CallerWatch:
    """Calls ``on_death(caller)`` once for each watched caller that dies.

    ``watch`` may be called from any thread that runs an event loop; the
    watch runs on that loop.
    """

    def __init__(self, on_death: Callable[[Caller], None]) -> None:
        self._on_death = on_death
        self._lock = threading.Lock()
        self._watching: dict[str, asyncio.Task[None]] = {}

    def watch(self, caller: Caller | None) -> None:
        if caller is None or caller.actor_name is None:
            return
        with self._lock:
            if caller.worker_id in self._watching:
                return
            task = asyncio.get_running_loop().create_task(self._watch(caller))
            self._watching[caller.worker_id] = task

    async def _watch(self, caller: Caller) -> None:
        # Returning means that process is gone too (the actor was restarted since).
        died = True
        try:
            handle = await asyncio.to_thread(
                ray.get_actor, caller.actor_name, namespace=caller.namespace
            )
            await handle.watched.remote(caller.worker_id)
        except (RayActorError, ValueError):
            pass  # died, or no actor of that name is left
        except Exception:
            # Not a sign of death (e.g. an actor that is not Watched): stop watching.
            log.warning("cannot watch %s; its leases end by their ttl", caller, exc_info=True)
            died = False
        finally:
            with self._lock:
                del self._watching[caller.worker_id]
        if died:
            self._on_death(caller)


class CallerCalls:
    """The calls each caller has running in this actor; a dead caller's are cancelled."""

    def __init__(self) -> None:
        self._running: dict[str, set[asyncio.Task[object]]] = {}
        self._watch = CallerWatch(self._died)

    @contextlib.contextmanager
    def running(self, caller: Caller | None) -> Iterator[None]:
        """Around the body of one call made by ``caller``."""
        task = asyncio.current_task()
        if caller is None or task is None:
            yield
            return
        tasks = self._running.setdefault(caller.worker_id, set())
        tasks.add(task)
        self._watch.watch(caller)
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
