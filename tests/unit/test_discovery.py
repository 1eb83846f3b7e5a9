"""Models found on the servers: each server's list read in its own wire format, a bare name
resolved to the one server (or the one pool) that lists it, and the servers asked again at
most every `providers.discovery_seconds`."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from actors.errors import AmbiguousModel, UnknownModel
from actors.groups import ModelEntry, Provider, ServerEntry, model_entry
from actors.settings import ProviderSettings, Settings
from providers.discovery import Catalog, registry, servers_asked
from providers.errors import BadRequest, ProviderUnavailable
from providers.factory import build_backend
from providers.http import Backend
from providers.supervisor import free_loopback_port
from providers.testing.fake_llm import FakeLLMServer, OllamaDialect, OpenAIDialect

OLLAMA = ServerEntry(provider=Provider.OLLAMA, base_url="http://127.0.0.1:11434", host="gpu-a")
LMSTUDIO = ServerEntry(provider=Provider.LMSTUDIO, base_url="http://127.0.0.1:1234/v1")
OTHER_OLLAMA = ServerEntry(provider=Provider.OLLAMA, base_url="http://127.0.0.1:11434", host="b")


def backend(server: ServerEntry) -> Backend:
    return build_backend(server.spec(), api_key=None, timeout=5.0)


async def test_each_server_lists_its_models_in_its_own_wire_format() -> None:
    with (
        FakeLLMServer(OllamaDialect(), models=("gpt-oss:20b", "llama3.2:3b")) as ollama,
        FakeLLMServer(OpenAIDialect(), models=("qwen2.5-7b-instruct",)) as lmstudio,
    ):
        listed = [
            await backend(server).model_names()
            for server in (
                ServerEntry(provider=Provider.OLLAMA, base_url=ollama.url),
                ServerEntry(provider=Provider.LMSTUDIO, base_url=lmstudio.url + "/v1"),
            )
        ]

        assert listed == [["gpt-oss:20b", "llama3.2:3b"], ["qwen2.5-7b-instruct"]]
        assert [r.path for r in ollama.received] == ["/api/tags"]
        assert [r.path for r in lmstudio.received] == ["/v1/models"]


async def test_a_server_down_or_answering_another_format_says_so() -> None:
    down = ServerEntry(
        provider=Provider.OLLAMA, base_url=f"http://127.0.0.1:{free_loopback_port()}"
    )
    with pytest.raises(ProviderUnavailable, match="cannot reach"):
        await backend(down).model_names()
    # An OpenAI-compatible server asked as Ollama: it has no /api/tags.
    with FakeLLMServer(OpenAIDialect(), models=("m",)) as other:
        wrong = ServerEntry(provider=Provider.OLLAMA, base_url=other.url)
        with pytest.raises(BadRequest, match="no route /api/tags"):
            await backend(wrong).model_names()


def test_a_name_one_server_lists_is_that_servers_model_by_that_name() -> None:
    found = registry({}, {OLLAMA: ["gpt-oss:20b"], LMSTUDIO: ["qwen2.5-7b-instruct"]})

    assert model_entry(found, "gpt-oss:20b") == ModelEntry(
        provider=Provider.OLLAMA, base_url=OLLAMA.base_url, host="gpu-a", name="gpt-oss:20b"
    )
    assert model_entry(found, "qwen2.5-7b-instruct").specs() == (LMSTUDIO.spec(),)


def test_the_settings_own_models_come_first_then_the_servers_then_provider_slash_model() -> None:
    named = ModelEntry(provider=Provider.OPENAI, name="gpt-4o")
    found = registry({"gpt-oss:20b": named}, {OLLAMA: ["gpt-oss:20b", "ollama/odd"]})

    assert model_entry(found, "gpt-oss:20b") is named
    # A listed name that looks like provider/model is the server's.
    assert model_entry(found, "ollama/odd").specs() == (OLLAMA.spec(),)
    assert model_entry(found, "ollama/llama3.2").base_url is None  # the usual address
    with pytest.raises(UnknownModel, match="gpt-oss:20b"):
        model_entry(found, "missing")


def test_a_name_two_servers_list_is_their_pools_if_the_settings_pool_them() -> None:
    third = ServerEntry(provider=Provider.OLLAMA, base_url="http://127.0.0.1:11435", limit=2)
    pool = ModelEntry(servers=(OLLAMA, OTHER_OLLAMA, third), name="llama3.2")

    found = registry({"llama": pool}, {OLLAMA: ["gpt-oss:20b"], third: ["gpt-oss:20b"]})

    # The pool's servers that list it, with their limits.
    assert model_entry(found, "gpt-oss:20b") == ModelEntry(
        servers=(OLLAMA, third), name="gpt-oss:20b"
    )


def test_a_name_servers_of_no_one_pool_list_is_refused_naming_them() -> None:
    found = registry({}, {OLLAMA: ["gpt-oss:20b"], OTHER_OLLAMA: ["gpt-oss:20b"]})

    with pytest.raises(AmbiguousModel) as refused:
        model_entry(found, "gpt-oss:20b")
    message = str(refused.value)
    assert OLLAMA.spec().id in message
    assert OTHER_OLLAMA.spec().id in message
    assert "`servers` (a pool)" in message


def test_the_servers_asked_are_the_configured_ones_once_each_and_no_remote_api() -> None:
    settings = Settings(
        models={
            "a": ModelEntry(provider=Provider.OLLAMA, base_url=OLLAMA.base_url, host="gpu-a"),
            "b": ModelEntry(servers=(OLLAMA, LMSTUDIO)),
            "c": ModelEntry(provider=Provider.OPENAI),
        },
        providers=ProviderSettings(servers=(OTHER_OLLAMA,)),
    )

    assert servers_asked(settings) == [OTHER_OLLAMA, OLLAMA, LMSTUDIO]


class Servers:
    """What the servers list, and how often they were asked."""

    def __init__(self, lists: Mapping[ServerEntry, list[str]]) -> None:
        self.lists = dict(lists)
        self.asks = 0

    async def __call__(self, settings: Settings) -> Mapping[ServerEntry, list[str]]:
        self.asks += 1
        return self.lists


async def test_the_servers_are_asked_for_unnamed_models_at_most_once_a_period() -> None:
    now = [0.0]
    servers = Servers({OLLAMA: ["gpt-oss:20b"]})
    settings = Settings(
        models={"named": ModelEntry(provider=Provider.OPENAI)},
        providers=ProviderSettings(servers=(OLLAMA,), discovery_seconds=60),
    )
    catalog = Catalog(settings, None, ask=servers, clock=lambda: now[0])

    # Named models, and the default embedded one, need no ask.
    assert await catalog.resolving("named") is settings
    assert await catalog.resolving(None) is settings
    assert servers.asks == 0
    found = await catalog.resolving("gpt-oss:20b")
    assert "gpt-oss:20b" in found.models
    # A model pulled on the server meanwhile is seen once the answer is a period old.
    servers.lists[OLLAMA].append("new:1b")
    now[0] = 59.0
    assert "new:1b" not in (await catalog.resolving("new:1b")).models
    now[0] = 60.0
    assert "new:1b" in (await catalog.resolving("new:1b")).models
    assert servers.asks == 2


async def test_with_discovery_off_no_server_is_asked() -> None:
    servers = Servers({OLLAMA: ["gpt-oss:20b"]})
    settings = Settings(providers=ProviderSettings(servers=(OLLAMA,), discovery_seconds=None))

    found = await Catalog(settings, None, ask=servers).resolving("gpt-oss:20b")

    assert "gpt-oss:20b" not in found.models
    assert servers.asks == 0
