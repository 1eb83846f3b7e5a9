"""OpenTelemetry tracing: a span per slot acquisition and per backend call.

Spans carry ``raygate.group``, ``gen_ai.request.model``, ``raygate.stage``,
``raygate.service_id``, ``raygate.priority`` and, on the acquisition,
``raygate.wait_seconds``. Where spans go is a setting
(``telemetry.exporter``): ``none`` (the default), ``console``, or ``otlp``
(needs the ``opentelemetry-exporter-otlp`` package; its endpoint comes from
``telemetry.otlp_endpoint`` or the standard OTEL_EXPORTER_OTLP_* variables).
Each process that makes calls (provider actors) sets up its own exporter.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from actors.errors import ConfigError
from actors.settings import TelemetrySettings

TRACER_NAME = "raygate"


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def configure_tracing(settings: TelemetrySettings) -> None:
    """Install this process's span exporter, once; ``none`` leaves tracing off."""
    if settings.exporter == "none":
        return
    exporter: SpanExporter
    if settings.exporter == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError(
                "telemetry.exporter",
                ("otlp needs the opentelemetry-exporter-otlp package installed on every node",),
            ) from None
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
    provider = TracerProvider(resource=Resource.create({"service.name": "raygate"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
