"""The queue's metrics (llm_queue_*, llm_call_seconds) on the nodes' Prometheus endpoints, and
OpenTelemetry's in Prometheus."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import ray
from prometheus_client.parser import text_string_to_metric_families

from actors.groups import classify
from actors.options import CallLabels, CallOptions
from actors.settings import TelemetrySettings
from providers.actor import ProviderOptions, get_or_create_provider
from providers.models import ChatMessage, ChatRequest
from providers.supervisor import free_loopback_port
from providers.testing.fake_llm import FakeLLMServer, OllamaDialect
from tests.integration.conftest import GPU_HOST, ManagerFactory, Nodes
from tests.support.polling import eventually

REQUEST = ChatRequest(model="m", messages=(ChatMessage(role="user", content="hi"),))


def labelled(stage: str, service_id: str) -> CallOptions:
    return CallOptions(labels=CallLabels(stage=stage, service_id=service_id))


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


async def test_queue_metrics_reach_the_head_nodes_prometheus_endpoint(
    cluster: Nodes, make_manager: ManagerFactory
) -> None:
    # A group no other test uses: other managers of the session export series too.
    spec = classify("ollama", "http://localhost:31417")
    client = make_manager(spec)
    for _ in range(3):
        async with client.slot(spec.id):
            pass
    holder = client.slot(spec.id)
    await holder.__aenter__()  # one slot held while the metrics are read
    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["NodeID"] == cluster.head)
    group = {"group": spec.id, "kind": "local-server"}

    async def exported() -> bool:
        samples = await asyncio.to_thread(scrape, port)
        return value(samples, "ray_llm_queue_submitted_total", **group) >= 4 and (
            value(samples, "ray_llm_queue_inflight", **group) == 1
        )

    try:
        await eventually(exported, "the queue metrics on the head node", timeout=90)
        samples = await asyncio.to_thread(scrape, port)
        completed = value(samples, "ray_llm_queue_completed_total", outcome="released", **group)
        assert completed >= 3
        assert value(samples, "ray_llm_queue_pending", **group) == 0
        assert value(samples, "ray_llm_queue_wait_seconds_count", **group) >= 4
    finally:
        await holder.__aexit__(None, None, None)


async def test_call_seconds_reach_the_prometheus_endpoint_of_the_providers_node(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager()
    with FakeLLMServer(OllamaDialect(), hold=0.05) as backend:
        spec = classify("ollama", backend.url, host=GPU_HOST)
        actor = get_or_create_provider(spec, ProviderOptions(timeout=30), client)
        try:
            for _ in range(3):
                await actor.chat(REQUEST, labelled("features", "svc-metrics"))
            node = await actor.node_id()
        finally:
            ray.kill(actor.handle)
    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["NodeID"] == node)
    call = {"group": spec.id, "model_name": "m", "stage": "features"}
    labels = {**call, "service_id": "svc-metrics"}
    # OpenTelemetry's GenAI client metrics, by the conventions' attributes (dots as _).
    genai = {"gen_ai_provider_name": "ollama", "gen_ai_request_model": "m"}
    durations = "ray_gen_ai_client_operation_duration_seconds_count"

    async def exported() -> bool:
        samples = await asyncio.to_thread(scrape, port)
        calls = value(samples, "ray_llm_call_seconds_count", **labels)
        return calls == 3 and value(samples, durations, **genai) == 3

    await eventually(exported, "the call metrics on the provider's node", timeout=90)
    samples = await asyncio.to_thread(scrape, port)
    # Three calls of at least 0.05 s each at the server.
    assert value(samples, "ray_llm_call_seconds_sum", **labels) >= 0.15
    assert value(samples, "ray_llm_calls_total", **call, outcome="ok") == 3
    tokens = "ray_gen_ai_client_token_usage_count"
    assert value(samples, tokens, **genai, gen_ai_token_type="output") == 3


async def test_a_provider_serves_its_opentelemetry_metrics_to_prometheus_when_told(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager()
    port = free_loopback_port()
    telemetry = TelemetrySettings(metrics="prometheus", prometheus_port=port)
    with FakeLLMServer(OllamaDialect(), hold=0.05) as backend:
        spec = classify("ollama", backend.url)
        options = ProviderOptions(timeout=30, telemetry=telemetry)
        actor = get_or_create_provider(spec, options, client)
        try:
            for _ in range(2):
                await actor.chat(REQUEST, labelled("mappings", "svc-otel"))
            # Read while the actor lives: its process serves the endpoint.
            samples = await asyncio.to_thread(scrape, port)
        finally:
            ray.kill(actor.handle)

    call = {"group": spec.id, "model_name": "m", "stage": "mappings"}
    assert value(samples, "llm_calls_total", **call, outcome="ok") == 2
    assert value(samples, "llm_call_seconds_count", **call, service_id="svc-otel") == 2
    assert value(samples, "llm_call_seconds_sum", **call, service_id="svc-otel") >= 0.1


DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "raygate.json"


def series_in(expr: str) -> dict[str, set[str]]:
    """The series of raygate's (ray_llm_*, ray_gen_ai_*) a PromQL expression reads, with
    the labels it names for each."""
    grouped = set(re.findall(r"by \(([^)]*)\)", expr))
    by = {label.strip() for group in grouped for label in group.split(",")}
    return {
        name: by | set(re.findall(r"(\w+)=~?\"", matchers or ""))
        for name, matchers in re.findall(r"(ray_(?:llm|gen_ai)_\w+)(?:\{([^}]*)\})?", expr)
    }


async def test_the_grafana_dashboard_reads_series_and_labels_the_nodes_export(
    cluster: Nodes, make_manager: ManagerFactory
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    wanted: dict[str, set[str]] = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name, labels in series_in(target["expr"]).items():
                wanted.setdefault(name, set()).update(labels)
    assert len(wanted) == 9  # each panel's series
    client = make_manager()
    with FakeLLMServer(OllamaDialect()) as backend:
        spec = classify("ollama", backend.url, host=GPU_HOST)
        actor = get_or_create_provider(spec, ProviderOptions(timeout=30), client)
        try:
            await actor.chat(REQUEST, labelled("features", "svc-dashboard"))
        finally:
            ray.kill(actor.handle)
        await client.take_out(spec.id, "gone for the dashboard", 60.0)
    ports = [node["MetricsExportPort"] for node in ray.nodes() if node["Alive"]]

    async def found() -> dict[str, set[str]]:
        labels: dict[str, set[str]] = {}
        for port in ports:
            for name, samples in (await asyncio.to_thread(scrape, port)).items():
                for sample_labels, _ in samples:
                    labels.setdefault(name, set()).update(sample_labels)
        return labels

    async def all_exported() -> bool:
        return wanted.keys() <= (await found()).keys()

    await eventually(all_exported, "every series of the dashboard", timeout=90)
    exported = await found()
    for name, labels in wanted.items():
        assert labels <= exported[name], (name, labels - exported[name])
