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

import httpx
import pytest
import ray
import yaml
from pydantic import SecretStr

from actors.client import ManagerClient
from actors.names import MANAGER_NAME, NAMESPACE
from actors.settings import PipelineSettings, ProviderSettings, ServeSettings, Settings
from pipelines.answers import GREETINGS, check_record, judged, prompts, says_any
from pipelines.job import summary
from pipelines.plateau import Service, read_services
from providers.actor import ProviderOptions, embedded_actor_name, get_or_create_embedded_model
from providers.client import EmbeddedModelClient
from providers.llamacpp import DEFAULT_EMBEDDED, EMBEDDED_MODEL_ID, GEMMA, served
from providers.models import ChatMessage, ChatRequest, JsonSchemaFormat
from tests.integration.conftest import (
    GPU_HOST,
    ManagerFactory,
    Nodes,
    cli,
    records,
    run,
    settled,
    write_services,
)
from tests.support.polling import eventually
from tests.support.serve_app import serve_app

KEY = "sk-test-embedded"

pytestmark = pytest.mark.slow

if importlib.util.find_spec("llama_cpp") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must install the local extra: the embedded model is tested there")
    pytest.skip("the local extra is not installed", allow_module_level=True)

CITY = JsonSchemaFormat(
    name="city",
    json_schema={
        "type": "object",
        # Bounded, as the job's are: a small model's string may otherwise run on to the
        # token limit, and its JSON with it.
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "country": {"type": "string", "maxLength": 30},
        },
        "required": ["city", "country"],
    },
)


def ask(question: str) -> ChatRequest:
    return ChatRequest(
        model=EMBEDDED_MODEL_ID,
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
    name = embedded_actor_name(EMBEDDED_MODEL_ID, GPU_HOST)
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
    await settled(client)  # nothing held, nobody waiting


# -- its answers make sense (see pipelines.answers) ------------------------------------------

# Measured on this project's machine (docs/benchmarks.md, "The embedded models' answers"),
# at temperature 0: the default must not do worse.
DEFAULT_MODEL_PASSES = 11  # of the 15 prompts
JOB_RECORDS_PASSING = 3  # of the 5 services of examples/services.jsonl
REPO = Path(__file__).parents[2]


async def test_the_default_model_passes_the_answer_check_as_it_measured() -> None:
    async with served(DEFAULT_EMBEDDED) as backend:
        verdicts = [await judged(backend.chat, p) for p in prompts(DEFAULT_EMBEDDED.id)]

    failed = {v.prompt: v.problems for v in verdicts if not v.passed}
    assert len(verdicts) - len(failed) >= DEFAULT_MODEL_PASSES, failed


@pytest.mark.timeout(900)
async def test_the_main_job_from_an_empty_cache_writes_records_that_read_as_answers(
    make_manager: ManagerFactory, tmp_path: Path
) -> None:
    lines = (REPO / "examples" / "services.jsonl").read_text().splitlines()
    services, _ = read_services(lines)
    settings = Settings(pipeline=PipelineSettings(embedded_host=GPU_HOST, cache=False))

    outcome = await run(services, settings, tmp_path / "out.jsonl", make_manager())

    by_id = {record.service_id: record for record in outcome.records}
    problems = {s.id: check_record(s, by_id[s.id]) for s in services}
    assert [r.status for r in outcome.records] == ["ok"] * len(services)
    assert sum(not found for found in problems.values()) >= JOB_RECORDS_PASSING, problems


async def test_the_readme_http_example_answers_hello_and_gemma_stays_callable_by_its_id(
    ray_session: None,
) -> None:
    settings = Settings(serve=ServeSettings(api_keys=(SecretStr(KEY),)))
    hello = [{"role": "user", "content": "Hello"}]
    with serve_app(settings, KEY, EMBEDDED_MODEL_ID) as url:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
            greeted = await http.post(
                "/v1/chat/completions", json={"model": EMBEDDED_MODEL_ID, "messages": hello}
            )
            pinned = await http.post(
                "/v1/chat/completions",
                json={"model": GEMMA.id, "messages": hello, "max_tokens": 4},
            )

    answer = greeted.raise_for_status().json()
    assert says_any(answer["choices"][0]["message"]["content"], *GREETINGS), answer
    assert answer["choices"][0]["finish_reason"] == "stop"
    # The pretrained model answers by its id, from a server of its own.
    assert pinned.raise_for_status().json()["model"] == GEMMA.id
    assert pinned.json()["choices"][0]["finish_reason"] == "length"
