"""The queue's and the calls' metrics as OpenTelemetry instruments, read in memory."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from actors.engine import SlotEngine
from actors.errors import ConfigError, WaitTooLong
from actors.gate import SlotGate
from actors.groups import ModelEntry, Provider, classify
from actors.metrics import QueueMetrics
from actors.options import CallOptions
from actors.settings import TelemetrySettings
from actors.slots import LocalSlots
from actors.telemetry import configure_telemetry
from providers.errors import BadRequest, RateLimited
from providers.factory import build_backend
from providers.fallback import FallbackProvider, Step
from providers.gated import GatedProvider
from providers.metrics import CALL_BUCKETS, CallMetrics
from providers.models import ChatMessage, ChatRequest, ChatResponse, Usage
from providers.retry import RetryPolicy
from providers.testing.fake_llm import Fail, FakeLLMServer, OllamaDialect, Say, Stream

READER = InMemoryMetricReader()
SPEC = classify("ollama", "http://localhost:11434")
QUEUE = {"group": SPEC.id, "kind": "local-server"}
CALL = {"group": "remote-api-openai", "model_name": "gpt-4o", "stage": "features"}
MAPPINGS = {**CALL, "stage": "mappings"}
DURATION = "gen_ai.client.operation.duration"
TOKENS = "gen_ai.client.token.usage"
# Each GenAI test asks its own model, so the points of one are not another's.
MODELS = (f"genai-model-{n}" for n in itertools.count(1))


@pytest.fixture(scope="module", autouse=True)
def meter_provider() -> None:
    metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))  # only this module sets one


def points(name: str) -> list[tuple[Mapping[str, Any], Any]]:
    data = READER.get_metrics_data()
    assert data is not None
    return [
        (dict(point.attributes or {}), point)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        if scope.scope.name == "raygate"
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def point(name: str, **labels: str) -> Any:
    (found,) = [p for attributes, p in points(name) if attributes == labels]
    return found


def test_call_latency_per_stage_model_and_service_and_calls_per_stage_and_outcome() -> None:
    calls = CallMetrics()
    calls.answered(0.3, CALL, "svc-1")
    calls.answered(2.0, CALL, "svc-1")
    calls.answered(0.2, MAPPINGS, "svc-2")
    calls.failed(RateLimited("openai", "429 Too Many Requests"), CALL)

    latency = point("llm_call_seconds", **CALL, service_id="svc-1")
    assert (latency.count, latency.sum) == (2, pytest.approx(2.3))
    assert tuple(latency.explicit_bounds) == tuple(CALL_BUCKETS)
    assert point("llm_call_seconds", **MAPPINGS, service_id="svc-2").count == 1
    assert point("llm_calls", **CALL, outcome="ok").value == 2
    assert point("llm_calls", **CALL, outcome="RateLimited").value == 1
    assert point("llm_calls", **MAPPINGS, outcome="ok").value == 1


def test_queue_submissions_grants_outcomes_and_levels() -> None:
    now = [0.0]
    queue_metrics = QueueMetrics(export_seconds=None)
    engine = SlotEngine(epoch=1, clock=lambda: now[0], observer=queue_metrics)
    engine.register(SPEC)
    first = engine.acquire(SPEC.id, "l1", CallOptions(request_id="r1", flow="tenant:team-a"))
    assert first is not None
    assert engine.acquire(SPEC.id, "l2", CallOptions(request_id="r2")) is None

    assert points("llm_queue_inflight") == []  # noted, recorded at the next flush
    queue_metrics.flush()
    assert point("llm_queue_inflight", **QUEUE).value == 1
    assert point("llm_queue_pending", **QUEUE).value == 1
    now[0] = 4.0
    (second,) = engine.release("l1", first.epoch)
    engine.release("l2", second.epoch)
    queue_metrics.flush()

    assert point("llm_queue_submitted", **QUEUE).value == 2
    assert point("llm_queue_completed", **QUEUE, outcome="released").value == 2
    waits = point("llm_queue_wait_seconds", **QUEUE)
    assert (waits.count, waits.sum) == (2, 4.0)
    by_tenant = point("llm_queue_tenant_wait_seconds", **QUEUE, tenant="")
    assert (by_tenant.count, by_tenant.sum) == (1, 4.0)  # r2: no tenant's, waited 4 s
    assert point("llm_queue_tenant_served_seconds", **QUEUE, tenant="team-a").value == 4.0
    # No call reported usage: its service is counted in call-seconds.
    assert point("llm_queue_tenant_service", **QUEUE, tenant="team-a").value == 4.0
    assert point("llm_queue_inflight", **QUEUE).value == 0
    assert point("llm_queue_pending", **QUEUE).value == 0


def test_a_group_out_of_rotation_is_1_until_its_probe_answers() -> None:
    now = [0.0]
    queue_metrics = QueueMetrics(export_seconds=None)
    engine = SlotEngine(epoch=1, clock=lambda: now[0], observer=queue_metrics)
    engine.register(SPEC)

    engine.take_out(SPEC.id, "connection refused", 5.0)
    queue_metrics.flush()
    assert point("llm_queue_out_of_rotation", **QUEUE).value == 1
    now[0] = 5.0
    probe = engine.acquire(SPEC.id, "probe")
    assert probe is not None
    queue_metrics.flush()
    assert point("llm_queue_out_of_rotation", **QUEUE).value == 1  # not back before it answers
    engine.release("probe", probe.epoch)
    queue_metrics.flush()
    assert point("llm_queue_out_of_rotation", **QUEUE).value == 0


CONSOLE = """
from providers.metrics import CallMetrics
from actors.settings import TelemetrySettings
from actors.telemetry import configure_telemetry

configure_telemetry(TelemetrySettings(metrics="console", export_interval_seconds=60))
CallMetrics().answered(0.5, {"group": "g", "model_name": "m", "stage": "features"}, "svc")
"""


def test_the_console_exporter_prints_the_instruments_at_exit() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CONSOLE], capture_output=True, text=True, timeout=120, check=True
    )

    # One JSON document per export; the last one is the flush at exit.
    exported = json.loads(done.stdout[done.stdout.rindex('{\n    "resource_metrics"') :])
    (scope,) = exported["resource_metrics"][0]["scope_metrics"]
    found = {metric["name"]: metric["data"]["data_points"] for metric in scope["metrics"]}
    assert found["llm_calls"][0]["value"] == 1
    assert found["llm_calls"][0]["attributes"]["outcome"] == "ok"
    assert found["llm_call_seconds"][0]["sum"] == 0.5


@pytest.mark.parametrize(
    ("settings", "field", "module"),
    [
        (TelemetrySettings(traces="otlp"), "telemetry.traces", "trace_exporter"),
        (TelemetrySettings(metrics="otlp"), "telemetry.metrics", "metric_exporter"),
    ],
)
def test_otlp_without_its_package_is_a_config_error_naming_the_setting(
    settings: TelemetrySettings, field: str, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, f"opentelemetry.exporter.otlp.proto.http.{module}", None)

    with pytest.raises(ConfigError, match="opentelemetry-exporter-otlp") as raised:
        configure_telemetry(settings)
    assert raised.value.source == field


async def test_a_call_handed_to_a_fallback_is_counted_in_the_metric_and_the_stats() -> None:
    class Busy:
        async def chat(self, request: ChatRequest, options: CallOptions) -> ChatResponse:
            raise WaitTooLong("local-ollama", options.max_wait or 0.0, 9.0)

    class Answers:
        async def chat(self, request: ChatRequest, options: CallOptions) -> ChatResponse:
            assert options.max_wait is None  # the last step waits
            return ChatResponse(
                text="ok",
                finish_reason="stop",
                usage=Usage(),
                latency_seconds=0.1,
                provider="openai",
                group="remote-api-openai",
                model=request.model,
            )

    llama = ModelEntry(provider=Provider.OLLAMA, fallbacks=("gpt",), fallback_after_seconds=2)
    engine = SlotEngine(epoch=1, models={"llama": llama})
    provider = FallbackProvider(
        [
            Step("llama", Busy(), "llama3.2", 2.0),  # type: ignore[arg-type]
            Step("gpt", Answers(), "gpt-4o-mini", None),  # type: ignore[arg-type]
        ],
        LocalSlots(SlotGate(engine)),
    )
    message = (ChatMessage(role="user", content="hi"),)

    answer = await provider.chat(ChatRequest(model="llama3.2", messages=message))

    assert (answer.model, answer.fallback_from) == ("gpt-4o-mini", "llama")
    taken = point("llm_fallbacks", model="llama", fallback="gpt", reason="WaitTooLong")
    assert taken.value == 1
    stats = engine.stats().models["llama"]
    assert stats.groups == ["local-ollama-http://localhost:11434"]
    assert (stats.fallbacks, stats.fallback_after_seconds) == (["gpt"], 2.0)
    assert stats.fallbacks_taken == {"gpt": {"WaitTooLong": 1}}


def instrument(name: str) -> Any:
    data = READER.get_metrics_data()
    assert data is not None
    (found,) = {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        if scope.scope.name == "raygate"
        for metric in scope.metrics
        if metric.name == name
    }.values()
    return found


def of_model(name: str, model: str) -> list[tuple[Mapping[str, Any], Any]]:
    return [(a, p) for a, p in points(name) if a.get("gen_ai.request.model") == model]


def chat(model: str) -> ChatRequest:
    return ChatRequest(model=model, messages=(ChatMessage(role="user", content="hi"),))


def asked(server: FakeLLMServer, model: str) -> dict[str, Any]:
    """The GenAI attributes of a call of ``model`` to the fake Ollama ``server``."""
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "ollama",
        "gen_ai.request.model": model,
        "server.address": "127.0.0.1",
        "server.port": urlsplit(server.url).port,  # an int, as the conventions type it
    }


@pytest.fixture
async def ollama() -> AsyncIterator[tuple[FakeLLMServer, GatedProvider]]:
    """A gated Ollama on loopback whose calls CallMetrics records; retries do not wait."""

    async def at_once(seconds: float) -> None:
        pass

    with FakeLLMServer(OllamaDialect(), hold=0.05) as server:
        spec = classify("ollama", server.url)
        engine = SlotEngine(epoch=1)
        engine.register(spec)
        gate = SlotGate(engine)
        backend = build_backend(spec, api_key=None, timeout=5)
        retry = RetryPolicy(attempts=2, base_delay=0.01)
        slots = LocalSlots(gate)
        gated = GatedProvider(
            backend, spec, slots, retry=retry, sleep=at_once, observer=CallMetrics()
        )
        yield server, gated
        await backend.aclose()
        gate.close()


async def test_genai_instruments_have_the_conventions_names_units_and_buckets(
    ollama: tuple[FakeLLMServer, GatedProvider],
) -> None:
    _, gated = ollama
    await gated.chat(chat(next(MODELS)))

    duration, tokens = instrument(DURATION), instrument(TOKENS)

    # Semantic conventions v1.37.0, gen-ai-metrics.md: the boundaries each SHOULD have.
    assert duration.unit == "s"
    assert tuple(duration.data.data_points[0].explicit_bounds) == (
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    )  # fmt: skip
    assert tokens.unit == "{token}"
    assert tuple(tokens.data.data_points[0].explicit_bounds) == (
        1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216,
        67108864,
    )  # fmt: skip


async def test_an_answered_call_records_its_duration_and_each_token_type_it_used(
    ollama: tuple[FakeLLMServer, GatedProvider],
) -> None:
    server, gated = ollama
    model = next(MODELS)
    server.script(Say("ok", input_tokens=13, output_tokens=5))

    await gated.chat(chat(model))

    genai = {**asked(server, model), "gen_ai.response.model": model}
    ((attributes, duration),) = of_model(DURATION, model)
    assert attributes == genai  # no error.type, and none of the span's raygate.* attributes
    assert isinstance(attributes["server.port"], int)
    assert duration.count == 1
    assert duration.sum >= 0.05  # the server held its answer that long
    tokens = {a["gen_ai.token.type"]: (a, p.count, p.sum) for a, p in of_model(TOKENS, model)}
    assert tokens == {  # as the server reported them, once each
        "input": ({**genai, "gen_ai.token.type": "input"}, 1, 13),
        "output": ({**genai, "gen_ai.token.type": "output"}, 1, 5),
    }


async def test_the_response_model_is_the_one_the_answer_names(
    ollama: tuple[FakeLLMServer, GatedProvider],
) -> None:
    server, gated = ollama
    model = next(MODELS)
    server.dialect.snapshots[model] = f"{model}:latest"

    answer = await gated.chat(chat(model))

    assert answer.model == f"{model}:latest"
    ((attributes, _),) = of_model(DURATION, model)
    assert attributes["gen_ai.response.model"] == f"{model}:latest"


async def test_a_failed_call_records_its_duration_with_its_error_type_and_no_tokens(
    ollama: tuple[FakeLLMServer, GatedProvider],
) -> None:
    server, gated = ollama
    model = next(MODELS)
    server.script(Fail(400, "unknown option"))

    with pytest.raises(BadRequest):
        await gated.chat(chat(model))

    ((attributes, duration),) = of_model(DURATION, model)
    # No gen_ai.response.model: no answer said it.
    assert attributes == {**asked(server, model), "error.type": "providers.errors.BadRequest"}
    assert duration.count == 1
    assert of_model(TOKENS, model) == []


async def test_each_try_of_a_retried_call_is_an_operation_and_only_the_answer_uses_tokens(
    ollama: tuple[FakeLLMServer, GatedProvider],
) -> None:
    server, gated = ollama
    model = next(MODELS)
    server.script(Fail(503, "loading model"), Say("ok", input_tokens=8, output_tokens=2))

    await gated.chat(chat(model))

    tries = {a.get("error.type"): p.count for a, p in of_model(DURATION, model)}
    assert tries == {"providers.errors.ProviderUnavailable": 1, None: 1}
    assert sorted(p.sum for _, p in of_model(TOKENS, model)) == [2, 8]


async def test_a_stream_records_the_usage_of_its_last_piece(
    ollama: tuple[FakeLLMServer, GatedProvider],
) -> None:
    server, gated = ollama
    model = next(MODELS)
    server.script(Stream(("a", "b", "c")))

    _ = [piece async for piece in gated.stream(chat(model).model_copy(update={"stream": True}))]

    ((attributes, duration),) = of_model(DURATION, model)
    assert "gen_ai.response.model" not in attributes  # a stream's pieces do not say it
    assert duration.count == 1
    tokens = {a["gen_ai.token.type"]: p.sum for a, p in of_model(TOKENS, model)}
    assert tokens == {"input": 11, "output": 3}  # the fake's last line: 11 in, a token a piece


async def test_an_answer_that_reports_no_usage_records_its_duration_but_no_tokens(
    ollama: tuple[FakeLLMServer, GatedProvider],
) -> None:
    server, gated = ollama
    model = next(MODELS)
    server.script(Say("ok", input_tokens=0, output_tokens=0))  # as a server that sends none

    await gated.chat(chat(model))

    ((_, duration),) = of_model(DURATION, model)
    assert duration.count == 1
    assert of_model(TOKENS, model) == []
