"""One real local Ray instance for the whole session; a fresh, named manager per test."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from actors.client import ManagerClient
from actors.groups import GPU_HOST_LABEL, GroupSpec, classify
from actors.manager import get_or_create_manager
from actors.names import NAMESPACE
from actors.ops import Register
from actors.options import CallOptions
from actors.settings import QueueSettings, Settings
from actors.stats import QueueStats
from pipelines.job import Outcome, run_pipeline
from pipelines.plateau import Service
from pipelines.results import ResultsFile
from tests.support.polling import eventually

LOCAL_SERVER = classify("ollama", "http://localhost:11434")
REMOTE_API = classify("anthropic")


GPU_HOST = "a"


@dataclass(frozen=True)
class Nodes:
    head: str
    gpu: str
    # For tests that add and remove nodes of their own.
    cluster: Cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Nodes]:
    """A real two-node local cluster: a head, and a node that is GPU host "a"."""
    local = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    gpu = local.add_node(num_cpus=1, labels={GPU_HOST_LABEL: GPU_HOST})
    try:
        ray.init(address=local.address, namespace=NAMESPACE)
        local.wait_for_nodes()
        yield Nodes(head=local.head_node.node_id, gpu=gpu.node_id, cluster=local)
    finally:
        ray.shutdown()
        local.shutdown()


@pytest.fixture(scope="session")
def ray_session(cluster: Nodes) -> None:
    """Any test that needs Ray; they all share the one cluster."""


ManagerFactory = Callable[..., ManagerClient]


def manager_name() -> str:
    """A name no other manager of the session has (the real name is a singleton)."""
    return f"manager-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def manager_of(settings: Settings) -> Iterator[ManagerClient]:
    """A manager of ``settings`` (each of its shards) under its own name, killed after."""
    client = ManagerClient.create(settings, name=manager_name())
    try:
        yield client
    finally:
        client.kill()


@pytest.fixture
def make_manager(ray_session: None) -> Iterator[ManagerFactory]:
    """Start a manager under a unique name (the real name is a singleton); kill it after."""
    handles: list[Any] = []

    def make(*groups: GroupSpec, **queue: Any) -> ManagerClient:
        settings = Settings(queue=QueueSettings(**queue))
        handle = get_or_create_manager(settings, name=manager_name())
        handles.append(handle)
        for spec in groups:
            ray.get(handle.apply.remote([Register(spec)]))
        return ManagerClient(handle)

    yield make
    for handle in handles:
        ray.kill(handle)


async def run(
    services: list[Service],
    settings: Settings,
    out: Path | ResultsFile,
    manager: ManagerClient | None,
    priority: int = 5,
) -> Outcome:
    """The plateau job in this process, as the CLI runs it, writing to ``out``."""
    return await run_pipeline(
        services,
        out if isinstance(out, ResultsFile) else ResultsFile(out),
        settings,
        manager=manager,
        asking=CallOptions(priority=priority),
        progress_out=io.StringIO(),
    )


def cli(*args: str) -> list[str]:
    """The job's command line (``--address`` joins this session's cluster)."""
    return [sys.executable, "-m", "pipelines", "run", *args]


def write_services(path: Path, services: list[Service]) -> Path:
    path.write_text("".join(s.model_dump_json() + "\n" for s in services))
    return path


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines()]


async def settled(client: ManagerClient) -> QueueStats:
    """The manager's stats once no slot is held and nobody waits: this client's lent slots
    given back at once (its drain), other processes' after their linger (see actors.lent).
    A slot that leaked never comes back, and this fails."""
    await client.drain()

    async def idle() -> bool:
        stats = await client.stats()
        return (stats.total_active, stats.total_pending) == (0, 0)

    try:
        await eventually(idle, "every slot back and nobody waiting")
    except AssertionError as gave_up:
        stats = await client.stats()  # which slots stayed, for the run that finds one
        held = (stats.active_by_group, stats.pending_by_group, stats.epoch)
        raise AssertionError(f"{gave_up}; held, waiting by group, epoch: {held}") from None
    return await client.stats()


def pending_is(client: ManagerClient, group: str, count: int) -> Callable[[], Awaitable[bool]]:
    return _level_is(client, "pending_by_group", group, count)


def active_is(client: ManagerClient, group: str, count: int) -> Callable[[], Awaitable[bool]]:
    return _level_is(client, "active_by_group", group, count)


def _level_is(
    client: ManagerClient, level: str, group: str, count: int
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(getattr(await client.stats(), level).get(group) == count)

    return check


@pytest.fixture(autouse=True)
def no_named_actors_left(ray_session: None) -> Iterator[None]:
    """Kill the detached actors a test created (managers, providers of a CLI run)."""

    def named() -> set[str]:
        return {
            actor["name"]
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["namespace"] == NAMESPACE
        }

    before = named()
    yield
    for name in named() - before:
        # ValueError: killed by its own fixture a moment ago, the name still listed.
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace=NAMESPACE))
