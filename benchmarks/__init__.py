"""Side-by-side measurements; run each as python -m benchmarks.NAME."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from pipelines.runtime import init_ray


def on_embedded_ray(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on an embedded 2-CPU Ray on loopback; shut Ray down whatever happens.

    ``main`` is only created, not started, before Ray is: it must import ray
    inside (see pipelines.runtime).
    """
    init_ray(None, num_cpus=2)
    import ray

    try:
        asyncio.run(main)
    finally:
        ray.shutdown()
