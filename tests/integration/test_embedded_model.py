"""The embedded default: a real llama.cpp server with the packaged model, gated at limit 1."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import ray

from actors.client import ManagerClient
from providers.actor import ProviderOptions, get_or_create_embedded_model
from providers.models import ChatMessage, ChatRequest, JsonSchemaFormat
from tests.integration.conftest import GPU_HOST, ManagerFactory, Nodes, wait_until

pytestmark = pytest.mark.ray

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
async def embedded(make_manager: ManagerFactory) -> AsyncIterator[tuple[Any, ManagerClient]]:
    client = make_manager()
    actor = get_or_create_embedded_model(ProviderOptions(timeout=120), client.handle, GPU_HOST)
    yield actor, client
    ray.kill(actor)


async def test_json_schema_chat_returns_valid_json_from_the_gpu_host(
    cluster: Nodes, embedded: tuple[Any, ManagerClient]
) -> None:
    actor, _ = embedded

    response = await actor.chat.remote(ask("Name a large city in France and its country."))

    assert await actor.node_id.remote() == cluster.gpu
    assert json.loads(response.text) == response.data
    assert set(response.data) >= {"city", "country"}
    assert response.group.startswith("local-openai-compatible-http://127.0.0.1:")
    assert response.group.endswith(f"@{GPU_HOST}")


async def test_concurrent_requests_are_served_one_at_a_time(
    embedded: tuple[Any, ManagerClient],
) -> None:
    actor, client = embedded
    questions = [f"Name city number {i} of Europe and its country." for i in range(5)]

    responses = await asyncio.gather(*(actor.chat.remote(ask(q)) for q in questions))

    assert all(isinstance(r.data, dict) for r in responses)
    group = (await client.stats()).groups[responses[0].group]
    assert (group.limit, group.granted, group.peak_active, group.active) == (1, 5, 1, 0)


async def test_server_process_is_gone_after_shutdown_and_after_a_kill(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager()
    first = get_or_create_embedded_model(ProviderOptions(), client.handle, GPU_HOST)
    pid = await first.server_pid.remote()
    assert not process_gone(pid)
    with pytest.raises(ray.exceptions.RayActorError):
        await first.shutdown.remote()
    assert process_gone(pid)

    second = get_or_create_embedded_model(ProviderOptions(), client.handle, GPU_HOST)
    pid = await second.server_pid.remote()
    ray.kill(second)  # SIGKILL: no clean-up code runs in the actor

    async def gone() -> bool:
        return process_gone(pid)

    await wait_until(gone, "the orphaned llama.cpp server to exit", timeout=30)
