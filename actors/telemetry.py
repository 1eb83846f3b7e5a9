"""OpenTelemetry: spans for each slot acquisition and backend call, and metric instruments.

Spans carry ``raygate.group``, ``gen_ai.request.model``, ``raygate.stage``,
``raygate.service_id``, ``raygate.priority`` and, on the acquisition,
``raygate.wait_seconds``. The metrics of actors.metrics are OpenTelemetry
instruments too (meter ``raygate``), beside their Ray twins.

Where they go are settings: ``telemetry.traces`` is ``none`` (the default),
``console`` or ``otlp``; ``telemetry.metrics`` is ``none``, ``console``,
``otlp`` or ``prometheus``. OTLP (over HTTP) needs the
``opentelemetry-exporter-otlp`` package; ``telemetry.otlp_endpoint`` is the
collector's base URL (``/v1/traces`` and ``/v1/metrics`` are added), else the
standard OTEL_EXPORTER_OTLP_* variables apply. With ``prometheus`` each
raygate process (manager, provider actors) serves ``/metrics`` on the first
free port from ``telemetry.prometheus_port``. Each process sets up its own
exporters, once.
"""

from __future__ import annotations

import logging
import threading

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from actors.errors import ConfigError
from actors.settings import TelemetrySettings

NAME = "raygate"
# How many ports from telemetry.prometheus_port a process tries: one per
# raygate process on a node.
PROMETHEUS_PORTS = 64

log = logging.getLogger(__name__)
_configured = threading.Lock()
_done = False


def tracer() -> trace.Tracer:
    return trace.get_tracer(NAME)


def meter() -> metrics.Meter:
    """Instruments made before configure_telemetry start exporting once it ran."""
    return metrics.get_meter(NAME)


def configure_telemetry(settings: TelemetrySettings) -> None:
    """Install this process's span and metric exporters, once; ``none`` leaves each off."""
    global _done
    with _configured:
        if _done:
            return
        resource = Resource.create({"service.name": NAME})
        if settings.traces != "none":
            provider = TracerProvider(resource=resource)
            provider.add_span_processor(BatchSpanProcessor(_span_exporter(settings)))
            trace.set_tracer_provider(provider)
        if settings.metrics != "none":
            reader = _metric_reader(settings)
            metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
        _done = True


def _span_exporter(settings: TelemetrySettings) -> SpanExporter:
    if settings.traces == "console":
        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise _without_otlp("telemetry.traces") from None
    return OTLPSpanExporter(endpoint=_otlp_url(settings, "traces"))  # type: ignore[no-any-return]


def _metric_reader(settings: TelemetrySettings) -> MetricReader:
    if settings.metrics == "prometheus":
        return _prometheus_reader(settings.prometheus_host, settings.prometheus_port)
    exporter: MetricExporter
    if settings.metrics == "console":
        exporter = ConsoleMetricExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        except ImportError:
            raise _without_otlp("telemetry.metrics") from None
        exporter = OTLPMetricExporter(endpoint=_otlp_url(settings, "metrics"))
    interval = settings.export_interval_seconds * 1000
    return PeriodicExportingMetricReader(exporter, export_interval_millis=interval)


def _otlp_url(settings: TelemetrySettings, signal: str) -> str | None:
    """None: the exporter reads the OTEL_EXPORTER_OTLP_* variables."""
    base = settings.otlp_endpoint
    return None if base is None else f"{base.rstrip('/')}/v1/{signal}"


def _without_otlp(field: str) -> ConfigError:
    return ConfigError(
        field, ("otlp needs the opentelemetry-exporter-otlp package installed on every node",)
    )


def _prometheus_reader(host: str, first_port: int) -> MetricReader:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    for port in range(first_port, first_port + PROMETHEUS_PORTS):
        try:
            start_http_server(port, addr=host, registry=registry)
        except OSError:
            continue
        log.info("OpenTelemetry metrics of this process on http://%s:%d/metrics", host, port)
        return reader
    raise ConfigError(
        "telemetry.prometheus_port",
        (f"no free port in {first_port}..{first_port + PROMETHEUS_PORTS - 1} on {host}",),
    )
