"""Side-by-side measurements; run each as python -m benchmarks.NAME."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from pipelines.runtime import ray_running


def on_embedded_ray(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on an embedded 2-CPU Ray on loopback; shut Ray down whatever happens.

    ``main`` is only created, not started, before Ray is: a benchmark that
    imports ray at its top must set the loopback switch first (see
    pipelines.runtime).
    """
    with ray_running(None, num_cpus=2):
        asyncio.run(main)
