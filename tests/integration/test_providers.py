"""Provider actors on a real two-node cluster, gated by the manager, against loopback fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest
import ray
from pydantic import SecretStr
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.client import ManagerClient
from actors.groups import GroupSpec, ModelEntry, Provider, ServerEntry, classify
from actors.names import NAMESPACE
from actors.settings import Settings
from providers.actor import ProviderOptions, get_or_create_provider
from providers.client import ProviderClient
from providers.errors import AuthenticationFailed, NoGpuHost
from providers.models import ChatMessage, ChatRequest
from providers.routing import provider_in_reach
from providers.testing.fake_llm import AnthropicDialect, Fail, FakeLLMServer, OllamaDialect
from tests.integration.conftest import GPU_HOST, REMOTE_API, ManagerFactory, Nodes, settled
from tests.support.polling import eventually

KEY = "sk-ant-integration-0123"
REQUEST = ChatRequest(model="m", messages=(ChatMessage(role="user", content="hi"),))

ProviderFactory = Callable[[GroupSpec, ProviderOptions, ManagerClient], ProviderClient]


@pytest.fixture
def make_provider(ray_session: None) -> Iterator[ProviderFactory]:
    providers: list[ProviderClient] = []

    def make(spec: GroupSpec, options: ProviderOptions, client: ManagerClient) -> ProviderClient:
        providers.append(get_or_create_provider(spec, options, client))
        return providers[-1]

    yield make
    for provider in providers:
        ray.kill(provider.handle)


@pytest.fixture
def local_ollama() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(OllamaDialect(), hold=0.02) as server:
        yield server


@dataclass
class LocalRig:
    client: ManagerClient
    spec: GroupSpec
    actor: ProviderClient


@pytest.fixture
def local(
    make_manager: ManagerFactory, make_provider: ProviderFactory, local_ollama: FakeLLMServer
) -> LocalRig:
    """A fresh manager, and the provider actor of the local Ollama on GPU host "a"."""
    client = make_manager()
    spec = classify("ollama", local_ollama.url, host=GPU_HOST)
    return LocalRig(client, spec, make_provider(spec, ProviderOptions(timeout=30), client))


@pytest.fixture
def anthropic() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(AnthropicDialect(api_key=KEY), hold=0.3) as server:
        yield server


async def test_local_server_actor_runs_on_its_gpu_host_and_one_call_at_a_time(
    cluster: Nodes, local: LocalRig, local_ollama: FakeLLMServer
) -> None:
    assert await local.actor.node_id() == cluster.gpu
    responses = await asyncio.gather(*(local.actor.chat(REQUEST) for _ in range(20)))

    assert [r.text for r in responses] == ["ok"] * 20
    assert local_ollama.max_in_flight == 1
    group = (await local.client.stats()).groups[local.spec.id]
    assert (group.kind, group.limit, group.granted, group.active) == ("local-server", 1, 20, 0)


async def test_remote_api_calls_overlap_while_the_local_group_stays_at_one(
    make_manager: ManagerFactory,
    make_provider: ProviderFactory,
    local_ollama: FakeLLMServer,
    anthropic: FakeLLMServer,
) -> None:
    client = make_manager()
    local_spec = classify("ollama", local_ollama.url, host=GPU_HOST)
    remote_spec = classify("anthropic", anthropic.url)
    local = make_provider(local_spec, ProviderOptions(timeout=30), client)
    remote = make_provider(remote_spec, ProviderOptions(api_key=SecretStr(KEY), timeout=30), client)

    await asyncio.gather(
        *(remote.chat(REQUEST) for _ in range(20)),
        *(local.chat(REQUEST) for _ in range(20)),
    )

    # 20 calls that each take 0.3 s at the server: they ran side by side.
    assert anthropic.max_in_flight > 1
    assert local_ollama.max_in_flight == 1
    # The remote group's acquires reach the manager in the provider actor's batches,
    # maybe after their calls' answers.
    await eventually(counted(client, remote_spec.id, 20), "the remote calls counted")
    stats = await client.stats()
    assert stats.groups[remote_spec.id].limit is None
    assert stats.groups[local_spec.id].granted == 20


async def test_stream_through_the_actor_holds_the_slot_until_the_end(local: LocalRig) -> None:
    request = REQUEST.model_copy(update={"stream": True})

    pieces = [piece async for piece in local.actor.stream(request)]

    assert "".join(p.text for p in pieces) == "ok"
    assert pieces[-1].finish_reason == "stop"
    group = (await settled(local.client)).groups[local.spec.id]
    assert (group.granted, group.released, group.active) == (1, 1, 0)


async def test_can_run_immediately_follows_the_groups_slot(local: LocalRig) -> None:
    assert await local.actor.can_run_immediately()
    async with local.client.slot(local.spec.id):
        assert not await local.actor.can_run_immediately()


async def test_typed_provider_error_crosses_the_actor_boundary(
    make_manager: ManagerFactory, make_provider: ProviderFactory, anthropic: FakeLLMServer
) -> None:
    client = make_manager()
    spec = classify("anthropic", anthropic.url)
    actor = make_provider(spec, ProviderOptions(api_key=SecretStr("sk-wrong"), timeout=30), client)
    anthropic.script(Fail(401, "invalid x-api-key"))

    with pytest.raises(AuthenticationFailed, match=r"anthropic: invalid x-api-key \(HTTP 401\)"):
        await actor.chat(REQUEST)

    async def given_back() -> bool:  # in the provider actor's next batch (see actors.outbox)
        group = (await client.stats()).groups[spec.id]
        return (group.granted, group.released, group.active) == (1, 1, 0)

    await eventually(given_back, "the failed call's slot given back")


def counted(client: ManagerClient, group: str, granted: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await client.stats()).groups[group].granted == granted

    return check


@ray.remote(num_cpus=0)
class Asker:
    """A caller on one node that asks a model through whatever provider is in its reach."""

    async def ask(self, settings: Settings, model: str, manager: ManagerClient) -> tuple[str, str]:
        # The client travelled here pickled, as its handle.
        provider, name = await provider_in_reach(settings, model, manager)
        response = await provider.chat(REQUEST.model_copy(update={"model": name}))
        return type(provider).__name__, response.text


async def test_a_caller_calls_a_backend_itself_only_where_it_can_reach_it(
    cluster: Nodes,
    make_manager: ManagerFactory,
    local_ollama: FakeLLMServer,
    anthropic: FakeLLMServer,
) -> None:
    """A remote API from any node; the GPU host's loopback server only from the GPU host,
    through its provider actor from elsewhere; every call gated by the manager either way."""
    client = make_manager()
    settings = Settings(
        models={
            "gpu-ollama": ModelEntry(provider="ollama", base_url=local_ollama.url, host=GPU_HOST),
            "claude": ModelEntry(provider="anthropic", base_url=anthropic.url),
        },
        api_keys={Provider.ANTHROPIC: SecretStr(KEY)},
    )
    askers = {
        node: Asker.options(  # type: ignore[attr-defined]
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        ).remote()
        for node in (cluster.head, cluster.gpu)
    }
    try:
        answers = {
            (where, model): await askers[node].ask.remote(settings, model, client)
            for where, node in (("head", cluster.head), ("gpu", cluster.gpu))
            for model in ("gpu-ollama", "claude")
        }
    finally:
        for asker in askers.values():
            ray.kill(asker)

    assert answers == {
        ("head", "gpu-ollama"): ("ProviderClient", "ok"),
        ("head", "claude"): ("GatedProvider", "ok"),
        ("gpu", "gpu-ollama"): ("GatedProvider", "ok"),
        ("gpu", "claude"): ("GatedProvider", "ok"),
    }
    await eventually(counted(client, REMOTE_API.id, 2), "the remote calls counted")
    local_group = classify("ollama", local_ollama.url, host=GPU_HOST).id
    assert (await client.stats()).groups[local_group].granted == 2


async def test_a_host_no_node_is_labelled_is_a_clear_error_and_a_pool_serves_without_it(
    make_manager: ManagerFactory, local_ollama: FakeLLMServer
) -> None:
    client = make_manager()
    on_a = ServerEntry(provider="ollama", base_url=local_ollama.url, host=GPU_HOST)
    settings = Settings(
        models={
            "nowhere": ModelEntry(provider="ollama", base_url=local_ollama.url, host="z"),
            "pooled": ModelEntry(servers=(on_a, on_a.model_copy(update={"host": "z"}))),
        }
    )

    with pytest.raises(NoGpuHost) as missing:
        await provider_in_reach(settings, "nowhere", client)
    assert "no live node is labelled raygate.io/gpu-host=z" in str(missing.value)
    assert "ray start --labels raygate.io/gpu-host=z" in str(missing.value)
    nowhere = settings.models["nowhere"].specs()[0]
    with pytest.raises(ValueError, match="Failed to look up actor"):  # none made to pend
        ray.get_actor(f"provider:{nowhere.id}", namespace=NAMESPACE)

    pool, name = await provider_in_reach(settings, "pooled", client)
    try:
        response = await pool.chat(REQUEST.model_copy(update={"model": name}))
        assert response.text == "ok"
        assert response.group == on_a.spec().id
    finally:
        ray.kill(ray.get_actor(f"provider:{on_a.spec().id}", namespace=NAMESPACE))
