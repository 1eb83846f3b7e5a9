"""The Prometheus names of the metrics: Ray's, OpenTelemetry's, and the dashboard's queries."""

from __future__ import annotations

import json
import re
from pathlib import Path

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry

from actors.metrics import prometheus_name
from providers.metrics import GENAI, OPERATION_DURATION, TOKEN_USAGE

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "raygate.json"
# Each GenAI histogram: its unit and its labels.
HISTOGRAMS = {
    OPERATION_DURATION: ("s", (*GENAI, "error.type")),
    TOKEN_USAGE: ("{token}", (*GENAI, "gen_ai.token.type")),
}


def ray_series() -> dict[str, set[str]]:
    """The series of the GenAI histograms on Ray's endpoint, with the labels of each."""
    series = {}
    for name, (unit, labels) in HISTOGRAMS.items():
        tags = {prometheus_name(label) for label in labels}
        base = f"ray_{prometheus_name(name, unit)}"
        series |= {f"{base}_bucket": tags | {"le"}, f"{base}_sum": tags, f"{base}_count": tags}
    return series


def test_ray_takes_the_names_opentelemetrys_prometheus_exporter_gives_the_genai_metrics() -> None:
    registry = CollectorRegistry()
    meter = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)]).get_meter("t")
    for name, (unit, labels) in HISTOGRAMS.items():
        meter.create_histogram(name, unit=unit).record(1, {label: "x" for label in labels})

    exported = {
        family.name: {label for label in family.samples[0].labels if not label.startswith("otel_")}
        for family in registry.collect()
        if family.type == "histogram"
    }

    ours = {
        prometheus_name(name, unit): {prometheus_name(label) for label in labels} | {"le"}
        for name, (unit, labels) in HISTOGRAMS.items()
    }
    assert ours == exported
    assert set(ours) == {"gen_ai_client_operation_duration_seconds", "gen_ai_client_token_usage"}


def test_raygates_own_metric_names_are_their_own_prometheus_form() -> None:
    # The Ray metrics that existed before any dotted name keep their series.
    assert prometheus_name("llm_call_seconds", "s") == "llm_call_seconds"
    assert prometheus_name("llm_queue_tenant_served_seconds") == "llm_queue_tenant_served_seconds"
    assert prometheus_name("llm_calls") == "llm_calls"


def test_the_dashboards_genai_queries_read_series_and_labels_ray_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = ray_series()
    read: dict[str, set[str]] = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            by = {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr)
                  for label in group.split(",")}  # fmt: skip
            for name in re.findall(r"ray_gen_ai_\w+", expr):
                read.setdefault(name, set()).update(by)

    assert read.keys() == {
        "ray_gen_ai_client_operation_duration_seconds_bucket",
        "ray_gen_ai_client_token_usage_sum",
    }
    for name, labels in read.items():
        assert labels <= exported[name], (name, labels - exported[name])


def test_the_dashboards_panels_do_not_overlap() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    cells = [
        (panel["id"], x, y)
        for panel in panels
        for x in range(panel["gridPos"]["x"], panel["gridPos"]["x"] + panel["gridPos"]["w"])
        for y in range(panel["gridPos"]["y"], panel["gridPos"]["y"] + panel["gridPos"]["h"])
    ]
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert len({(x, y) for _, x, y in cells}) == len(cells)
    assert all(x < 24 for _, x, _ in cells)  # Grafana's grid is 24 wide
