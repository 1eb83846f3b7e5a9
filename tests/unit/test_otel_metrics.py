"""The queue's and the calls' metrics as OpenTelemetry instruments, read in memory."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

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
from providers.errors import RateLimited
from providers.fallback import FallbackProvider, Step
from providers.metrics import CALL_BUCKETS, CallMetrics
from providers.models import ChatMessage, ChatRequest, ChatResponse, Usage

READER = InMemoryMetricReader()
SPEC = classify("ollama", "http://localhost:11434")
QUEUE = {"group": SPEC.id, "kind": "local-server"}
CALL = {"group": "remote-api-openai", "model_name": "gpt-4o", "stage": "features"}
MAPPINGS = {**CALL, "stage": "mappings"}


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
