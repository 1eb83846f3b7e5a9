"""Ray's news of every worker process that exits, pushed by the GCS the moment it knows.

A caller's lifeline (see :mod:`actors.watch`) fails about two seconds after
its process died: that is how long Ray takes to give up on an object's dead
owner. The GCS knows sooner. The raylet of a node reports each worker
process that exits (a driver killed with ``kill -9``, an actor killed or
crashed, a task's worker) and the GCS publishes it on its worker channel,
keyed by the worker's id, which is a caller's :attr:`actors.callers.Caller.id`:
measured here, 4 ms after ``kill -9`` of a driver and 12 ms after
``ray.kill`` of an actor.

That channel is Ray's own (``ray._private``, as the dashboard uses it), so
it is an addition, never the only path: if it cannot be reached, or a node
is lost with its raylet (nobody reports its workers), the lifelines still
end the callers' work, two seconds later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import ray

log = logging.getLogger(__name__)

# After the channel answers nothing (the GCS restarting), how long before asking again.
RESUBSCRIBE_SECONDS = 1.0
BATCH = 1_000


class WorkerExits:
    """Calls ``on_exit(worker_id)`` for each worker process of the cluster that exits, from
    a task on the event loop that first calls :meth:`start`."""

    def __init__(self, on_exit: Callable[[str], None]) -> None:
        self._on_exit = on_exit
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Subscribe, once (call on an event loop); does nothing in a process without Ray."""
        if self._task is None and ray.is_initialized():
            self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        try:
            from ray._private.gcs_pubsub import GcsAioWorkerDeltaSubscriber

            subscriber = GcsAioWorkerDeltaSubscriber(address=ray.get_runtime_context().gcs_address)
        except Exception:
            log.warning(
                "cannot follow Ray's worker exits; a dead caller's work ends by its "
                "lifeline instead, about two seconds later",
                exc_info=True,
            )
            return
        while True:
            try:
                await subscriber.subscribe()
                while exits := await subscriber.poll(batch_size=BATCH):
                    for worker_id, _ in exits:
                        self._on_exit(worker_id.hex())
            except Exception:
                log.debug("the GCS's worker channel failed; subscribing again", exc_info=True)
            # An empty answer: the GCS is unavailable (restarting).
            await asyncio.sleep(RESUBSCRIBE_SECONDS)
