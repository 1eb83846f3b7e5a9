"""The pipeline on a two-node cluster started with `ray start`: as a Ray job, and as a
command-line driver killed mid-run.

A second, separate cluster: a head and a GPU-host node "a", each a
`ray start --block` process stopped by its PID afterwards (`ray stop` would
stop every Ray on the machine, the test session's too). The nodes take the
loopback addresses 127.0.0.2 and 127.0.0.3: Ray turns 127.0.0.1 into the
machine's network address for multi-node clusters, but not the rest of
127.0.0.0/8, so the whole cluster talks over loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from actors.groups import classify
from pipelines.plateau import Service
from providers.supervisor import free_loopback_port
from providers.testing.fake_llm import FakeLLMServer, OpenAIDialect
from providers.testing.plateau_backend import plateau_answer
from tests.integration.conftest import cli, write_services
from tests.support.polling import eventually

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[2]


# Clusters started with `ray start` here require a token; each test cluster gets
# its own, given to its nodes in the environment (nothing read from ~/.ray).
TOKEN = secrets.token_hex(32)
HEADERS = {"authorization": f"Bearer {TOKEN}"}


def alive_nodes(dashboard: str, headers: dict[str, str]) -> int:
    answer = httpx.get(f"{dashboard}/api/v0/nodes", headers=headers).raise_for_status()
    return sum(node["state"] == "ALIVE" for node in answer.json()["data"]["result"]["result"])


def cluster_env() -> dict[str, str]:
    """The environment of a node, or of a driver joining from outside, of these clusters."""
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": TOKEN,
        # Job drivers run `python`: this interpreter, as on a node with raygate installed.
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # its loopback-only mode is one node
    env.pop("RAY_ADDRESS", None)
    return env


def ray_start(*flags: str, log: Path) -> subprocess.Popen[bytes]:
    env = cluster_env()
    ports = [
        f"--dashboard-agent-listen-port={free_loopback_port()}",
        f"--metrics-export-port={free_loopback_port()}",
    ]
    ray = str(Path(sys.executable).parent / "ray")
    command = [ray, "start", "--block", "--num-cpus=1", "--object-store-memory=200000000"]
    return subprocess.Popen(
        [*command, *ports, *flags], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def stop(node: subprocess.Popen[bytes]) -> None:
    node.send_signal(signal.SIGTERM)
    node.wait(timeout=60)


@dataclass(frozen=True)
class RayStartCluster:
    gcs: str
    dashboard: str
    jobs: JobSubmissionClient


@pytest.fixture(scope="module")
def started_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayStartCluster]:
    """A fresh `ray start` cluster: a head and GPU host "a"."""
    logs = tmp_path_factory.mktemp("ray-start")
    gcs, dash = free_loopback_port(), free_loopback_port()
    head = ray_start(
        "--head", "--node-ip-address=127.0.0.2", f"--port={gcs}", f"--dashboard-port={dash}",
        log=logs / "head.log",
    )  # fmt: skip
    gpu_node: subprocess.Popen[bytes] | None = None
    try:
        address, headers = f"http://127.0.0.1:{dash}", HEADERS
        asyncio.run(
            eventually(
                lambda: JobSubmissionClient(address, headers=headers),
                "the job server",
                timeout=120,
                errors=(Exception,),
                interval=0.5,
            )
        )
        gpu_node = ray_start(
            f"--address=127.0.0.2:{gcs}", "--node-ip-address=127.0.0.3",
            "--labels=raygate.io/gpu-host=a", log=logs / "gpu.log",
        )  # fmt: skip
        asyncio.run(
            eventually(
                lambda: alive_nodes(address, headers) == 2,
                "the GPU host to join",
                timeout=120,
                errors=(Exception,),
                interval=0.5,
            )
        )
        jobs = JobSubmissionClient(address, headers=headers)
        yield RayStartCluster(f"127.0.0.2:{gcs}", address, jobs)
    finally:
        if gpu_node is not None:
            stop(gpu_node)
        stop(head)


def run_job(jobs: JobSubmissionClient, entrypoint: str, **runtime_env: object) -> str:
    """Submit, wait until it ends, assert it succeeded; its logs."""
    job = jobs.submit_job(entrypoint=entrypoint, runtime_env=runtime_env or None)
    ended = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    asyncio.run(
        eventually(
            lambda: jobs.get_job_status(job) in ended,
            "the job to end",
            timeout=300,
            errors=(Exception,),
            interval=0.5,
        )
    )
    logs = jobs.get_job_logs(job)
    assert jobs.get_job_status(job) == JobStatus.SUCCEEDED, logs
    return logs


WHERE = """
import ray, sys
from ray.util.state import list_actors
ray.init()
actor = ray.get_actor(sys.argv[1], namespace="raygate")
print("actor-node", ray.get(actor.node_id.remote()))
for node in ray.nodes():
    if node["Alive"] and node["Labels"].get("raygate.io/gpu-host") == "a":
        print("gpu-node", node["NodeID"])
for listed in list_actors(filters=[("ray_namespace", "=", "raygate")]):
    print("listed", listed.name, listed.state)
"""


def test_an_embedded_ray_does_not_join_a_cluster_that_ray_start_left_running(
    tmp_path: Path,
) -> None:
    gcs = free_loopback_port()
    head = ray_start(
        "--head", "--node-ip-address=127.0.0.2", f"--port={gcs}",
        "--include-dashboard=false", log=tmp_path / "head.log",
    )  # fmt: skip
    try:
        probe = (
            "from pipelines.runtime import init_ray; init_ray(None, num_cpus=1); import ray; "
            "print(ray.get_runtime_context().gcs_address)"
        )
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        current = Path("/tmp/ray/ray_current_cluster")  # where ray.init() looks for one
        asyncio.run(
            eventually(
                lambda: f"127.0.0.2:{gcs}" in current.read_text(),
                "the ray start cluster",
                timeout=120,
                errors=(Exception,),
                interval=0.5,
            )
        )
        embedded = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env,
            cwd=REPO, check=True,
        )  # fmt: skip
    finally:
        stop(head)
    assert embedded.stdout.strip().splitlines()[-1] != f"127.0.0.2:{gcs}"


def test_submitted_pipeline_job_succeeds_with_its_local_server_on_the_gpu_host(
    started_cluster: RayStartCluster, tmp_path: Path
) -> None:
    jobs = started_cluster.jobs
    with FakeLLMServer(OpenAIDialect(), responder=plateau_answer) as backend:
        base_url = backend.url + "/v1"
        config = tmp_path / "raygate.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "models": {
                        "fake": {"provider": "openai-compatible", "base_url": base_url, "host": "a"}
                    },
                    "pipeline": {"model": "fake", "plateaus": 1, "mapping_types": ["data"]},
                }
            )
        )
        out = tmp_path / "out.jsonl"
        logs = run_job(
            jobs,
            f"python -m pipelines run examples/services.jsonl --out {out} --config {config}",
            working_dir=str(REPO),
            excludes=[".venv", ".git", "*.egg-info", ".*_cache", "__pycache__"],
        )

    assert [json.loads(line)["status"] for line in out.read_text().splitlines()] == ["ok"] * 5
    assert "5 services in" in logs
    group = classify("openai-compatible", base_url, host="a").id
    (script := tmp_path / "where.py").write_text(WHERE)
    where = run_job(jobs, f"python {script} 'provider:{group}'")
    found = dict(line.split() for line in where.splitlines() if line.startswith(("actor", "gpu")))
    assert found["actor-node"] == found["gpu-node"]
    # What `ray list actors` shows: the manager and the provider running, the run's
    # pipeline actor ended with its run.
    listed = {tuple(line.split()[1:]) for line in where.splitlines() if line.startswith("listed")}
    assert {("concurrency-manager", "ALIVE"), (f"provider:{group}", "ALIVE")} <= listed
    assert any(name.startswith("pipeline:") and state == "DEAD" for name, state in listed)


# Joins the cluster at argv[1] ("joined") and follows group argv[2] in its manager's
# stats: prints "queued" once a call runs and 3 or more wait, then "empty <time> <stats>"
# once nothing runs or waits any more.
OBSERVE = """
import sys, time, ray
from actors.names import MANAGER_NAME, NAMESPACE
from actors.ops import Stats
ray.init(address=sys.argv[1], log_to_driver=False)
print("joined", flush=True)
group = sys.argv[2]
while True:
    try:
        manager = ray.get_actor(MANAGER_NAME, namespace=NAMESPACE)
        break
    except ValueError:
        time.sleep(0.05)
queued = False
while True:
    stats = ray.get(manager.apply.remote([Stats()]))[0]
    level = (stats.active_by_group.get(group, 0), stats.pending_by_group.get(group, 0))
    if not queued and level[0] == 1 and level[1] >= 3:
        print("queued", flush=True)
        queued = True
    if queued and level == (0, 0):
        g = stats.groups[group]
        print("empty", time.time(), g.cancelled, g.expired, flush=True)
        break
    time.sleep(0.02)
"""


def fake_model_config(path: Path, base_url: str, **pipeline: object) -> Path:
    """Settings naming the loopback server at ``base_url`` model "fake", the job's model."""
    models = {"fake": {"provider": "openai-compatible", "base_url": base_url}}
    path.write_text(yaml.safe_dump({"models": models, "pipeline": {"model": "fake", **pipeline}}))
    return path


@contextlib.contextmanager
def killable_run(
    cluster: RayStartCluster, group: str, command: list[str]
) -> Iterator[Callable[[], list[str]]]:
    """The command-line run ``command`` joined to ``cluster``, and an observer of ``group``
    in its manager; entered once a call of the run runs and three wait. Yields ``kill``,
    which kills the run with `kill -9` and returns, once nothing of the run runs or
    waits, the time of that, and the group's cancelled and expired counts."""
    env = cluster_env()
    observer = subprocess.Popen(
        [sys.executable, "-c", OBSERVE, cluster.gcs, group],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert observer.stdout is not None
    assert observer.stdout.readline() == "joined\n"  # before the run starts
    driver = subprocess.Popen(
        [*command, "--address", cluster.gcs],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def kill() -> list[str]:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        out, _ = observer.communicate(timeout=60)
        return out.split()[1:]

    try:
        assert observer.stdout.readline() == "queued\n"
        yield kill
    finally:
        for process in (driver, observer):
            process.kill()
            process.wait()


def test_a_killed_drivers_calls_leave_the_queue_and_no_new_call_starts(
    started_cluster: RayStartCluster, tmp_path: Path
) -> None:
    """`kill -9` of a command-line run: its pipeline actor dies with it, so its provider
    actor cancels its calls, which leave the manager's queue within seconds; the
    backend sees no call start after the kill."""
    # Each call takes 10 s; the server stops working on one whose client hung up.
    with FakeLLMServer(
        OpenAIDialect(), hold=10.0, responder=plateau_answer, stop_on_disconnect=True
    ) as server:
        base_url = server.url + "/v1"
        group = classify("openai-compatible", base_url).id  # a local server: one at a time
        config = fake_model_config(
            tmp_path / "raygate.yaml", base_url, plateaus=1, mapping_types=["data"]
        )
        four = [Service(id=f"svc-{i}", name=f"Service {i}") for i in range(4)]
        services = write_services(tmp_path / "in.jsonl", four)
        command = cli(str(services), "--out", str(tmp_path / "out.jsonl"), "--config", str(config))
        with killable_run(started_cluster, group, command) as kill:
            asyncio.run(
                eventually(
                    lambda: len(server.received) == 1,
                    "the running call at the backend",
                    timeout=30,
                    errors=(Exception,),
                    interval=0.5,
                )
            )
            killed = time.time()
            emptied, cancelled, expired = kill()
        asyncio.run(
            eventually(
                lambda: server.abandoned,
                "the running call to be dropped at the backend",
                timeout=30,
                errors=(Exception,),
                interval=0.5,
            )
        )

    # Gone well before the running call's 10 s were up, when a waiter would have
    # got its slot; the waiters were cancelled (the running call gave its slot
    # back), none waited for a ttl.
    print(f"the dead run's calls left the manager {float(emptied) - killed:.2f}s after the kill")
    assert float(emptied) - killed < 10
    assert int(cancelled) >= 3
    assert int(expired) == 0
    assert len(server.received) == 1


def test_a_killed_drivers_short_calls_stop_starting_at_once(
    started_cluster: RayStartCluster, tmp_path: Path
) -> None:
    """`kill -9` of a command-line run whose calls take 0.2 s each, on a cap-1 server: its
    pipeline actor dies with it, Ray reports that worker's exit within milliseconds, and
    at most two more calls start at the backend (the lifeline alone took two seconds:
    ten calls for nobody)."""
    with FakeLLMServer(OpenAIDialect(), hold=0.2, responder=plateau_answer) as server:
        base_url = server.url + "/v1"
        group = classify("openai-compatible", base_url).id
        config = fake_model_config(tmp_path / "raygate.yaml", base_url, cache=False)
        command = cli("examples/services.jsonl", "--out", str(tmp_path / "out.jsonl"))
        with killable_run(started_cluster, group, [*command, "--config", str(config)]) as kill:
            deadline = time.monotonic() + 120
            while len(server.received) < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
            at_kill = len(server.received)
            _, _, expired = kill()

    started_after = len(server.received) - at_kill
    print(f"{started_after} calls started at the backend after the kill ({at_kill} before)")
    assert at_kill >= 10
    assert started_after <= 2
    assert int(expired) == 0
    assert server.max_in_flight == 1


def test_the_serve_config_deploys_the_endpoint_on_the_cluster(
    started_cluster: RayStartCluster, tmp_path: Path
) -> None:
    """`serve deploy serve/deploy.yaml`, with its port and settings path set for this cluster."""
    settings = tmp_path / "raygate.yaml"
    settings.write_text(yaml.safe_dump({"serve": {"api_keys": ["sk-deployed"]}}))
    config = yaml.safe_load((REPO / "serve" / "deploy.yaml").read_text())
    port = free_loopback_port()
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    config["applications"][0]["args"]["config"] = str(settings)
    (deploy := tmp_path / "deploy.yaml").write_text(yaml.safe_dump(config))
    serve_cli = str(Path(sys.executable).parent / "serve")
    env = cluster_env()
    subprocess.run(
        [serve_cli, "deploy", str(deploy), "--address", started_cluster.dashboard],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(
            eventually(
                lambda: httpx.get(f"{url}/readyz").status_code == 200,
                "the endpoint",
                timeout=120,
                errors=(Exception,),
                interval=0.5,
            )
        )
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer sk-deployed"})
        anonymous = httpx.get(f"{url}/v1/models")
    finally:
        subprocess.run(
            [serve_cli, "shutdown", "--address", started_cluster.dashboard, "--yes"],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    listed = [m["id"] for m in models.raise_for_status().json()["data"]]
    assert listed == ["smollm2-135m-instruct", "gemma-3-270m"]  # the embedded models
    assert anonymous.status_code == 401
