"""Models found on the servers, through the Serve endpoint on a real Ray: an Ollama and an
LM Studio on loopback (each speaking its own wire format) and a third server that is down."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from actors.groups import Provider, ServerEntry
from actors.settings import PipelineSettings, ProviderSettings, ServeSettings, Settings
from pipelines.plateau import Service
from providers.supervisor import free_loopback_port
from providers.testing.fake_llm import FakeLLMServer, OllamaDialect, OpenAIDialect
from providers.testing.plateau_backend import plateau_answer
from tests.integration.conftest import ManagerFactory, run
from tests.support.polling import eventually
from tests.support.serve_app import ask, serve_app

KEY = "sk-test-discovery"


@dataclass(frozen=True)
class Servers:
    url: str
    ollama: FakeLLMServer
    lmstudio: FakeLLMServer
    groups: tuple[str, str]  # the Ollama's and the LM Studio's

    def http(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {KEY}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def servers(ray_session: None) -> Iterator[Servers]:
    with (
        FakeLLMServer(OllamaDialect(), models=("gpt-oss:20b", "shared:7b")) as ollama,
        FakeLLMServer(OpenAIDialect(), models=("qwen2.5-7b-instruct", "shared:7b")) as lmstudio,
    ):
        listed = (
            ServerEntry(provider=Provider.OLLAMA, base_url=ollama.url),
            ServerEntry(provider=Provider.LMSTUDIO, base_url=lmstudio.url + "/v1"),
        )
        down = ServerEntry(
            provider=Provider.OLLAMA, base_url=f"http://127.0.0.1:{free_loopback_port()}"
        )
        settings = Settings(
            providers=ProviderSettings(servers=(*listed, down), discovery_seconds=1.0),
            serve=ServeSettings(api_keys=(SecretStr(KEY),)),
        )
        # The warm-up call is the first call of a model the settings do not name.
        with serve_app(settings, KEY, model="gpt-oss:20b") as url:
            groups = (listed[0].spec().id, listed[1].spec().id)
            yield Servers(url, ollama, lmstudio, groups)


def test_a_bare_model_name_goes_to_the_server_that_lists_it_by_that_name(
    servers: Servers,
) -> None:
    with servers.http() as http:
        for model in ("gpt-oss:20b", "qwen2.5-7b-instruct"):
            body = {"model": model, "messages": ask(f"to {model}")}
            http.post("/v1/chat/completions", json=body).raise_for_status()

    to_ollama = [r for r in servers.ollama.received if r.path == "/api/chat"][-1]
    [to_lmstudio] = [r for r in servers.lmstudio.received if r.path == "/v1/chat/completions"]
    assert to_ollama.body["model"] == "gpt-oss:20b"
    assert to_ollama.body["messages"][-1]["content"] == "to gpt-oss:20b"
    assert to_lmstudio.body["model"] == "qwen2.5-7b-instruct"


def test_the_models_list_shows_each_discovered_model_with_its_server(servers: Servers) -> None:
    with servers.http() as http:
        listed = http.get("/v1/models").raise_for_status().json()["data"]

    found = {m["id"]: [s["group"] for s in m["servers"]] for m in listed if m.get("discovered")}
    ollama, lmstudio = servers.groups
    assert found == {"gpt-oss:20b": [ollama], "qwen2.5-7b-instruct": [lmstudio]}


def test_a_name_two_servers_list_is_refused_naming_both(servers: Servers) -> None:
    with servers.http() as http:
        body = {"model": "shared:7b", "messages": ask("where to?")}
        answer = http.post("/v1/chat/completions", json=body)

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("model_ambiguous", "model")
    for group in servers.groups:
        assert group in error["message"]
    for server in (servers.ollama, servers.lmstudio):
        assert "where to?" not in str([r.body for r in server.received])


async def test_a_model_pulled_on_a_server_is_called_once_the_servers_are_asked_again(
    servers: Servers,
) -> None:
    """`providers.discovery_seconds` is 1 here: a model unknown now is known within it."""
    body = {"model": "llama3.2:3b", "messages": ask("new")}
    with servers.http() as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 404
        servers.ollama.models = (*servers.ollama.models, "llama3.2:3b")

        async def called() -> bool:
            return http.post("/v1/chat/completions", json=body).status_code == 200

        await eventually(called, "the pulled model called")


async def test_the_main_job_runs_on_a_model_named_as_its_server_lists_it(
    make_manager: ManagerFactory, tmp_path: Path
) -> None:
    models = ("qwen2.5-7b-instruct",)
    with FakeLLMServer(OpenAIDialect(), responder=plateau_answer, models=models) as lmstudio:
        server = ServerEntry(provider=Provider.LMSTUDIO, base_url=lmstudio.url + "/v1")
        settings = Settings(
            pipeline=PipelineSettings(
                model="qwen2.5-7b-instruct", plateaus=1, mapping_types=("data",), cache=False
            ),
            providers=ProviderSettings(servers=(server,)),
        )
        service = Service(id="svc-pay", name="Payments", description="Takes card payments.")

        outcome = await run([service], settings, tmp_path / "out.jsonl", make_manager())

    assert outcome.records[0].status == "ok"
    calls = [r for r in lmstudio.received if r.path == "/v1/chat/completions"]
    assert calls
    assert {r.body["model"] for r in calls} == {"qwen2.5-7b-instruct"}
