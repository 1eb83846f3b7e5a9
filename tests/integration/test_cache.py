"""The response cache on the cluster: its actor on the head node, a loopback backend, a real
manager counting slots."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
from pydantic import SecretStr

from actors.client import ManagerClient
from actors.groups import classify
from actors.names import CACHE_NAME, NAMESPACE
from actors.options import CallOptions
from actors.settings import CacheSettings
from providers.actor import ProviderOptions, get_or_create_provider
from providers.client import ProviderClient
from providers.models import ChatMessage, ChatRequest
from providers.testing.fake_llm import FakeLLMServer, OpenAIDialect, Say
from providers.testing.probe_server import Received
from tests.integration.conftest import GPU_HOST, ManagerFactory
from tests.support.polling import eventually

KEY = "sk-cache-0123"
REQUEST = ChatRequest(
    model="gpt-4o-mini",
    messages=(ChatMessage(role="user", content="Capital of France?"),),
    temperature=0.0,
    max_tokens=16,
)
CACHED = CallOptions(cache=True)


def answer_to(request: Received) -> Say:
    return Say(f"{request.body['max_completion_tokens']} tokens at most")


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(OpenAIDialect(api_key=KEY), responder=answer_to) as server:
        yield server


@dataclass(frozen=True)
class Rig:
    provider: ProviderClient
    manager: ManagerClient
    group: str

    async def granted(self) -> int:
        return (await self.manager.stats()).groups[self.group].granted


def rig(server: FakeLLMServer, make_manager: ManagerFactory, path: Path) -> Rig:
    """A provider actor with the cache at ``path``, its group capped at 1 (so that every
    slot is counted by the time its call returns)."""
    spec = classify("openai", server.url + "/v1")
    manager = make_manager(group_limits={spec.id: 1})
    options = ProviderOptions(api_key=SecretStr(KEY), timeout=30, cache=CacheSettings(path=path))
    return Rig(get_or_create_provider(spec, options, manager), manager, spec.id)


async def test_a_repeated_request_is_answered_without_a_slot_or_the_backend(
    server: FakeLLMServer, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    cached = rig(server, make_manager, tmp_path / "answers.sqlite3")

    first = await cached.provider.chat(REQUEST, CACHED)
    again = await cached.provider.chat(REQUEST, CACHED)

    assert (first.cached, again.cached, again.text) == (False, True, first.text)
    assert (len(server.received), await cached.granted()) == (1, 1)


async def test_a_changed_parameter_misses_and_a_call_may_opt_out(
    server: FakeLLMServer, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    cached = rig(server, make_manager, tmp_path / "answers.sqlite3")
    await cached.provider.chat(REQUEST, CACHED)

    other = await cached.provider.chat(REQUEST.model_copy(update={"max_tokens": 17}), CACHED)
    opted_out = await cached.provider.chat(REQUEST, CallOptions(cache=False))
    sampled = await cached.provider.chat(REQUEST.model_copy(update={"temperature": 0.7}), CACHED)

    assert not (other.cached)
    assert not (opted_out.cached)
    assert not (sampled.cached)
    assert (len(server.received), await cached.granted()) == (4, 4)


async def test_answers_outlive_a_restart_of_the_cache(
    server: FakeLLMServer, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    cached = rig(server, make_manager, tmp_path / "answers.sqlite3")
    await cached.provider.chat(REQUEST, CACHED)
    cache = ray.get_actor(CACHE_NAME, namespace=NAMESPACE)

    async def stored() -> bool:
        # The answer goes to the cache after the call returned: a kill before it lands
        # would lose it, as a cache may.
        return bool((await cache.describe.remote())["entries"] == 1)

    await eventually(stored, "the answer stored")
    ray.kill(cache, no_restart=False)  # Ray restarts it; it opens the same file

    async def restarted() -> bool:
        try:
            await cache.describe.remote()
        except ray.exceptions.RayActorError:
            return False
        return True

    await eventually(restarted, "the cache actor's restart")
    again = await cached.provider.chat(REQUEST, CACHED)
    assert again.cached
    assert len(server.received) == 1


async def test_with_the_cache_killed_mid_work_every_call_still_gets_its_answer(
    server: FakeLLMServer, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    cached = rig(server, make_manager, tmp_path / "answers.sqlite3")
    await cached.provider.chat(REQUEST, CACHED)
    questions = [REQUEST.model_copy(update={"max_tokens": tokens}) for tokens in range(20, 40)]

    calls = [asyncio.ensure_future(cached.provider.chat(q, CACHED)) for q in questions]
    ray.kill(ray.get_actor(CACHE_NAME, namespace=NAMESPACE), no_restart=True)
    answers = await asyncio.gather(*calls)

    # Each was a miss (a new question, or a cache that is gone): the backend answered all.
    assert [a.text for a in answers] == [f"{q.max_tokens} tokens at most" for q in questions]
    assert len(server.received) == 1 + len(questions)
    # The next process to look finds no cache and starts a new one on the same file.
    again = await cached.provider.chat(REQUEST, CACHED)
    assert again.text == "16 tokens at most"


async def test_a_corrupt_store_is_set_aside_and_no_call_fails(
    server: FakeLLMServer, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "answers.sqlite3"
    path.write_bytes(b"not a database " * 1_000)
    cached = rig(server, make_manager, path)

    first = await cached.provider.chat(REQUEST, CACHED)
    again = await cached.provider.chat(REQUEST, CACHED)

    assert (first.cached, again.cached) == (False, True)  # a new store, in use
    assert (tmp_path / "answers.sqlite3.corrupt").read_bytes().startswith(b"not a database")


async def test_two_servers_serving_one_model_name_never_answer_for_each_other(
    make_manager: ManagerFactory, tmp_path: Path
) -> None:
    # Two fine-tunes, both served as "llama", on two servers (one of them on GPU host "a").
    request = REQUEST.model_copy(update={"model": "llama"})
    options = ProviderOptions(timeout=30, cache=CacheSettings(path=tmp_path / "answers.sqlite3"))
    manager = make_manager()
    with (
        FakeLLMServer(OpenAIDialect(), responder=lambda _: Say("from a")) as a,
        FakeLLMServer(OpenAIDialect(), responder=lambda _: Say("from b")) as b,
    ):
        providers = [
            get_or_create_provider(
                classify("openai-compatible", server.url + "/v1", host=host),
                options,
                manager,
            )
            for server, host in ((a, GPU_HOST), (b, None))
        ]
        answers = [await p.chat(request, CACHED) for p in (*providers, *providers)]

    assert [(r.text, r.cached) for r in answers] == [
        ("from a", False),
        ("from b", False),
        ("from a", True),
        ("from b", True),
    ]
    assert (len(a.received), len(b.received)) == (1, 1)
