"""The pipeline as a Ray job on a two-node cluster started with `ray start`.

A second, separate cluster: a head and a GPU-host node "a", each a
`ray start --block` process stopped by its PID afterwards (`ray stop` would
stop every Ray on the machine, the test session's too). The nodes take the
loopback addresses 127.0.0.2 and 127.0.0.3: Ray turns 127.0.0.1 into the
machine's network address for multi-node clusters, but not the rest of
127.0.0.0/8, so the whole cluster talks over loopback.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from actors.groups import classify
from providers.supervisor import free_loopback_port
from tests.support.fake_llm import FakeLLMServer, OpenAIDialect
from tests.support.plateau_backend import plateau_answer

pytestmark = pytest.mark.ray

REPO = Path(__file__).parents[2]


def wait_for(what: str, check: Callable[[], object], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            if check():
                return
        except Exception as error:  # the cluster may still be coming up
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}; last error: {last!r}")
        time.sleep(0.5)


# Clusters started with `ray start` here require a token; each test cluster gets
# its own, given to its nodes in the environment (nothing read from ~/.ray).
TOKEN = secrets.token_hex(32)
HEADERS = {"authorization": f"Bearer {TOKEN}"}


def alive_nodes(dashboard: str, headers: dict[str, str]) -> int:
    answer = httpx.get(f"{dashboard}/api/v0/nodes", headers=headers).raise_for_status()
    return sum(node["state"] == "ALIVE" for node in answer.json()["data"]["result"]["result"])


def ray_start(*flags: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": TOKEN,
        # Job drivers run `python`: this interpreter, as on a node with raygate installed.
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # its loopback-only mode is one node
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


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[JobSubmissionClient]:
    """A job client of a fresh `ray start` cluster: a head and GPU host "a"."""
    gcs, dash = free_loopback_port(), free_loopback_port()
    head = ray_start(
        "--head", "--node-ip-address=127.0.0.2", f"--port={gcs}", f"--dashboard-port={dash}",
        log=tmp_path / "head.log",
    )  # fmt: skip
    gpu_node: subprocess.Popen[bytes] | None = None
    try:
        address, headers = f"http://127.0.0.1:{dash}", HEADERS
        wait_for("the job server", lambda: JobSubmissionClient(address, headers=headers))
        gpu_node = ray_start(
            f"--address=127.0.0.2:{gcs}", "--node-ip-address=127.0.0.3",
            '--resources={"gpu_host:a": 1}', log=tmp_path / "gpu.log",
        )  # fmt: skip
        wait_for("the GPU host to join", lambda: alive_nodes(address, headers) == 2)
        yield JobSubmissionClient(address, headers=headers)
    finally:
        if gpu_node is not None:
            stop(gpu_node)
        stop(head)


def run_job(jobs: JobSubmissionClient, entrypoint: str, **runtime_env: object) -> str:
    """Submit, wait until it ends, assert it succeeded; its logs."""
    job = jobs.submit_job(entrypoint=entrypoint, runtime_env=runtime_env or None)
    ended = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    wait_for("the job to end", lambda: jobs.get_job_status(job) in ended, timeout=300)
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
    if node["Alive"] and "gpu_host:a" in node["Resources"]:
        print("gpu-node", node["NodeID"])
for listed in list_actors(filters=[("ray_namespace", "=", "raygate")]):
    print("listed", listed.name, listed.state)
"""


def test_submitted_pipeline_job_succeeds_with_its_local_server_on_the_gpu_host(
    jobs: JobSubmissionClient, tmp_path: Path
) -> None:
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
        wait_for("the ray start cluster", lambda: f"127.0.0.2:{gcs}" in current.read_text())
        embedded = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env,
            cwd=REPO, check=True,
        )  # fmt: skip
    finally:
        stop(head)
    assert embedded.stdout.strip().splitlines()[-1] != f"127.0.0.2:{gcs}"
