"""The embedded default: a real llama.cpp server with the packaged model, gated at limit 1."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from actors.client import ManagerClient
from actors.names import MANAGER_NAME, NAMESPACE
from actors.settings import PipelineSettings, ProviderSettings, Settings
from pipelines.job import summary
from pipelines.plateau import Service
from providers.actor import ProviderOptions, get_or_create_embedded_model
from providers.client import EmbeddedModelClient
from providers.llamacpp import EMBEDDED_MODEL_ID
from providers.models import ChatMessage, ChatRequest, JsonSchemaFormat
from tests.integration.conftest import (
    GPU_HOST,
    ManagerFactory,
    Nodes,
    cli,
    records,
    run,
    write_services,
)
from tests.support.polling import eventually

pytestmark = pytest.mark.slow

if importlib.util.find_spec("llama_cpp") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must install the local extra: the embedded model is tested there")
    pytest.skip("the local extra is not installed", allow_module_level=True)

CITY = JsonSchemaFormat(
    name="city",
    json_schema={
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
    },
)


def ask(question: str) -> ChatRequest:
    return ChatRequest(
        model="gemma-3-270m",
        messages=(ChatMessage(role="user", content=question),),
        max_tokens=48,
        temperature=0.0,
        response_format=CITY,
    )


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
async def embedded(
    make_manager: ManagerFactory,
) -> AsyncIterator[tuple[EmbeddedModelClient, ManagerClient]]:
    client = make_manager()
    actor = get_or_create_embedded_model(ProviderOptions(timeout=120), client, GPU_HOST)
    yield actor, client
    ray.kill(actor.handle)


async def test_json_schema_chat_returns_valid_json_from_the_gpu_host(
    cluster: Nodes, embedded: tuple[EmbeddedModelClient, ManagerClient]
) -> None:
    actor, _ = embedded

    response = await actor.chat(ask("Name a large city in France and its country."))

    assert await actor.node_id() == cluster.gpu
    assert json.loads(response.text) == response.data
    assert set(response.data) >= {"city", "country"}
    assert response.group.startswith("local-openai-compatible-http://127.0.0.1:")
    assert response.group.endswith(f"@{GPU_HOST}")


async def test_concurrent_requests_are_served_one_at_a_time(
    embedded: tuple[EmbeddedModelClient, ManagerClient],
) -> None:
    actor, client = embedded
    questions = [f"Name city number {i} of Europe and its country." for i in range(5)]

    responses = await asyncio.gather(*(actor.chat(ask(q)) for q in questions))

    assert all(isinstance(r.data, dict) for r in responses)
    group = (await client.stats()).groups[responses[0].group]
    assert (group.limit, group.granted, group.peak_active, group.active) == (1, 5, 1, 0)


async def test_server_process_is_gone_after_shutdown_and_after_a_kill(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager()
    first = get_or_create_embedded_model(ProviderOptions(), client, GPU_HOST)
    pid = await first.server_pid()
    assert not process_gone(pid)
    await first.shutdown()
    assert process_gone(pid)

    second = get_or_create_embedded_model(ProviderOptions(), client, GPU_HOST)
    pid = await second.server_pid()
    ray.kill(second.handle)  # SIGKILL: no clean-up code runs in the actor

    async def gone() -> bool:
        return process_gone(pid)

    await eventually(gone, "the orphaned llama.cpp server to exit", timeout=30)


# -- the model server dies mid-job --------------------------------------------------------

TWO_SERVICES = [
    Service(id="svc-pay", name="Payments", description="Takes card payments."),
    Service(id="svc-find", name="Search", description="Finds products in a catalogue."),
]


def small_job(**providers: Any) -> Settings:
    """2 services, 1 plateau, 1 mapping type: 6 calls on the embedded model of GPU host a."""
    return Settings(
        pipeline=PipelineSettings(embedded_host=GPU_HOST, plateaus=1, mapping_types=("data",)),
        providers=ProviderSettings(**providers),
    )


def embedded_actor() -> EmbeddedModelClient:
    name = f"provider:embedded-{EMBEDDED_MODEL_ID}@{GPU_HOST}"
    return EmbeddedModelClient(ray.get_actor(name, namespace=NAMESPACE), name)


async def kill_the_server_after(client: ManagerClient, calls: int, how: signal.Signals) -> str:
    """Once ``calls`` calls hold or held the slot, kill the server mid-call; say how it ended."""

    async def granted() -> bool:
        return sum(g.granted for g in (await client.stats()).groups.values()) >= calls

    await eventually(granted, f"{calls} calls granted", timeout=120)
    pid = await embedded_actor().server_pid()
    os.kill(pid, how)
    return f"killed by {how.name} (pid {pid})"


# A real model's job and a restart: 30-40 s alone, over 300 s beside a CPU-bound process.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
async def test_a_server_killed_mid_job_is_restarted_and_every_service_finishes(
    make_manager: ManagerFactory, tmp_path: Path, how: signal.Signals
) -> None:
    client = make_manager()
    job = asyncio.create_task(run(TWO_SERVICES, small_job(), tmp_path / "out.jsonl", client))

    ended = await kill_the_server_after(client, 2, how)
    outcome = await job

    assert [r.status for r in outcome.records] == ["ok", "ok"]
    assert outcome.server_restarts == [ended]
    assert f"model server restarted 1 time, after it was: {ended}" in summary(
        outcome, skipped=0, bad_lines=0
    )
    # The restarted server dies with its actor too.
    actor = embedded_actor()
    restarted = await actor.server_pid()
    ray.kill(actor.handle)

    async def gone() -> bool:
        return process_gone(restarted)

    await eventually(gone, "the restarted server to exit with its actor", timeout=30)


async def test_past_the_restart_bound_the_job_exits_1_and_each_service_names_the_crash(
    tmp_path: Path,
) -> None:
    services = write_services(tmp_path / "in.jsonl", TWO_SERVICES)
    config = tmp_path / "raygate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "pipeline": {"embedded_host": GPU_HOST, "plateaus": 1, "mapping_types": ["data"]},
                "providers": {"model_server_restarts": 0},
            }
        )
    )
    out = tmp_path / "out.jsonl"
    address = ray.get_runtime_context().gcs_address
    command = cli(str(services), "--out", str(out), "--config", str(config), "--address", address)
    job = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:

        async def manager_up() -> bool:
            return MANAGER_NAME in {a["name"] for a in ray.util.list_named_actors(True)}

        await eventually(manager_up, "the job to start the cluster's manager", timeout=120)
        client = ManagerClient(ray.get_actor(MANAGER_NAME, namespace=NAMESPACE))
        ended = await kill_the_server_after(client, 1, signal.SIGKILL)
        async with asyncio.timeout(300):
            output, errors = await job.communicate()
    finally:
        if job.returncode is None:
            job.kill()
            await job.wait()
    stdout, stderr = output.decode(), errors.decode()

    assert job.returncode == 1, stderr
    assert "2 services in" in stdout
    assert "0 ok, 2 failed" in stdout
    for record in records(out):
        assert record["status"] == "failed"
        assert (
            f"{ended}; not restarted again: 1 crash within 300s, at most 0 restarts"
            in (record["error"])
        )
    stats = await client.stats()
    assert (stats.total_active, stats.total_pending) == (0, 0)
