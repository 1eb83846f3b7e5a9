"""Side-by-side measurements; run each as python -m benchmarks.NAME."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from pipelines.runtime import ray_running

if TYPE_CHECKING:
    from actors.client import ManagerClient


def on_embedded_ray(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on an embedded 2-CPU Ray on loopback; shut Ray down whatever happens.

    ``main`` is only created, not started, before Ray is: a benchmark that
    imports ray at its top must set the loopback switch first (see
    pipelines.runtime).
    """
    with ray_running(None, num_cpus=2):
        asyncio.run(main)


async def kill_manager(client: ManagerClient) -> tuple[float, float]:
    """Kill the manager for Ray to restart it; return when it was killed and how long
    until the restarted one answered."""
    epoch = (await client.stats()).epoch
    killed = time.monotonic()
    client.kill(restart=True)
    # The manager is another process: nothing to wait on but its answers.
    while (await client.stats()).epoch == epoch:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    return killed, time.monotonic() - killed
