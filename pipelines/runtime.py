"""Starting or joining Ray the same way from every raygate command line."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

# Ray's single-machine mode: an embedded instance listens on loopback only,
# instead of on the machine's network address. Ray reads it at import time.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_ray(address: str | None, *, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (or ``$RAY_ADDRESS``), else start a local Ray on loopback.

    For the embedded case, call this before anything in the process imports
    ray, so that Ray sees the loopback switch.
    """
    embedded = address is None and not os.environ.get("RAY_ADDRESS")
    if embedded:
        # Not inside a submitted job (which sets RAY_ADDRESS): start one here.
        os.environ.setdefault(LOOPBACK_ONLY_ENV, "0")
    import ray  # after the switch above

    from actors.names import NAMESPACE

    ray.init(
        # "local": a new instance, even where a `ray start` cluster runs (None would join it).
        address="local" if embedded else address,
        namespace=NAMESPACE,
        include_dashboard=False,
        log_to_driver=False,
        num_cpus=num_cpus if embedded else None,
    )


@contextlib.contextmanager
def ray_running(address: str | None, *, num_cpus: int | None = None) -> Iterator[None]:
    """Ray started or joined as :func:`init_ray` does, for the body; shut down after it."""
    init_ray(address, num_cpus=num_cpus)
    import ray

    try:
        yield
    finally:
        ray.shutdown()
