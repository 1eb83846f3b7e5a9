"""Spans for each slot acquisition and each backend call, read with the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from actors.engine import SlotEngine
from actors.errors import AcquireTimeout
from actors.gate import SlotGate
from actors.groups import classify
from actors.ops import Acquire
from actors.options import CallLabels, CallOptions
from actors.slots import LocalSlots
from providers.errors import BadRequest
from providers.factory import build_backend
from providers.gated import GatedProvider
from providers.metrics import Operation
from providers.models import ChatMessage, ChatRequest
from providers.testing.fake_llm import Fail, FakeLLMServer, OllamaDialect

EXPORTER = InMemorySpanExporter()
REQUEST = ChatRequest(model="llama3", messages=(ChatMessage(role="user", content="hi"),))


@pytest.fixture(scope="module", autouse=True)
def tracing() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)  # once per process; only this module sets one


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(OllamaDialect()) as fake:
        yield fake


@pytest.fixture
def provider(server: FakeLLMServer) -> Iterator[tuple[GatedProvider, SlotGate]]:
    EXPORTER.clear()
    spec = classify("ollama", server.url)
    engine = SlotEngine(epoch=1)
    engine.register(spec)
    gate = SlotGate(engine)
    backend = build_backend(spec, api_key=None, timeout=5)
    yield GatedProvider(backend, spec, LocalSlots(gate)), gate
    gate.close()


async def test_acquire_and_call_spans_carry_genai_and_raygate_attributes_and_the_usage(
    provider: tuple[GatedProvider, SlotGate], server: FakeLLMServer
) -> None:
    gated, _ = provider

    labels = CallLabels(stage="features", service_id="svc-1", plateau=2)
    options = CallOptions(
        priority=7, request_id="run:svc-1:features:2:1", flow="tenant:team-a", labels=labels
    )
    response = await gated.chat(REQUEST, options)
    await gated.backend.aclose()

    acquire, call = sorted(EXPORTER.get_finished_spans(), key=lambda s: s.start_time or 0)
    # The call's span is named as OpenTelemetry's GenAI conventions name it:
    # "{gen_ai.operation.name} {gen_ai.request.model}", a client's.
    assert (acquire.name, call.name) == ("raygate.acquire", "chat llama3")
    assert call.kind is SpanKind.CLIENT
    assert acquire.attributes is not None
    assert call.attributes is not None
    common = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "ollama",
        "gen_ai.request.model": "llama3",
        "gen_ai.request.max_tokens": 1024,
        "server.address": "127.0.0.1",
        "server.port": urlsplit(server.url).port,
        "raygate.group": gated.spec.id,
        "raygate.flow": "tenant:team-a",
        "raygate.stage": "features",
        "raygate.service_id": "svc-1",
        "raygate.plateau": 2,
        "raygate.request_id": "run:svc-1:features:2:1",
        "raygate.priority": 7,
    }
    assert {**acquire.attributes} == {**common, "raygate.wait_seconds": pytest.approx(0, abs=5)}
    assert {**call.attributes} == {
        **common,
        "gen_ai.usage.input_tokens": response.usage.input_tokens,
        "gen_ai.usage.output_tokens": response.usage.output_tokens,
        "gen_ai.response.model": "llama3",
        "gen_ai.response.finish_reasons": (response.finish_reason,),
    }
    assert response.usage.output_tokens > 0


async def test_an_acquire_that_times_out_is_an_error_span(
    provider: tuple[GatedProvider, SlotGate],
) -> None:
    gated, gate = provider
    await gate.acquire(
        Acquire(gated.spec.id, "holder", CallOptions(request_id="holder"))
    )  # the only slot

    with pytest.raises(AcquireTimeout):
        await gated.chat(REQUEST, CallOptions(queue_timeout=0.01))
    await gated.backend.aclose()

    (acquire,) = EXPORTER.get_finished_spans()
    assert acquire.name == "raygate.acquire"
    assert acquire.status.status_code is StatusCode.ERROR


async def test_a_stream_gets_the_same_acquire_and_call_spans(
    provider: tuple[GatedProvider, SlotGate],
) -> None:
    gated, _ = provider

    pieces = [d async for d in gated.stream(REQUEST.model_copy(update={"stream": True}))]
    await gated.backend.aclose()

    assert "".join(p.text for p in pieces) == "ok"
    spans = sorted(EXPORTER.get_finished_spans(), key=lambda s: s.start_time or 0)
    assert [s.name for s in spans] == ["raygate.acquire", "chat llama3"]
    assert all(s.attributes and s.attributes["raygate.group"] == gated.spec.id for s in spans)
    call = spans[1].attributes
    assert call is not None
    last = pieces[-1].usage
    assert last is not None
    assert (call["gen_ai.usage.input_tokens"], call["gen_ai.usage.output_tokens"]) == (
        last.input_tokens,
        last.output_tokens,
    )


class Recorder:
    """A CallObserver that remembers what it was told."""

    def __init__(self) -> None:
        self.told: list[tuple[str, dict[str, str], str]] = []
        self.operations: list[Operation] = []

    def answered(self, seconds: float, call: dict[str, str], service_id: str) -> None:
        assert seconds >= 0
        self.told.append(("answered", call, service_id))

    def failed(self, error: BaseException, call: dict[str, str]) -> None:
        self.told.append((type(error).__name__, call, ""))

    def operation_ended(self, operation: Operation) -> None:
        assert operation.seconds >= 0
        self.operations.append(operation)


async def test_streamed_and_whole_answers_are_reported_alike_with_their_labels(
    provider: tuple[GatedProvider, SlotGate],
) -> None:
    plain, gate = provider
    recorder = Recorder()
    gated = GatedProvider(plain.backend, plain.spec, LocalSlots(gate), observer=recorder)
    options = CallOptions(labels=CallLabels(stage="mappings", service_id="svc-2"))

    await gated.chat(REQUEST, options)
    _ = [d async for d in gated.stream(REQUEST.model_copy(update={"stream": True}), options)]
    await gate.acquire(Acquire(gated.spec.id, "holder", CallOptions()))  # the only slot
    with pytest.raises(AcquireTimeout):
        await gated.chat(REQUEST, CallOptions(queue_timeout=0.01, labels=options.labels))
    await gated.backend.aclose()

    call = {"group": gated.spec.id, "model_name": "llama3", "stage": "mappings"}
    assert recorder.told == [
        ("answered", call, "svc-2"),
        ("answered", call, "svc-2"),
        ("AcquireTimeout", call, ""),
    ]
    # A backend call each for the whole answer and the stream; none for the call that
    # never got a slot, which asked no model.
    assert [o.attributes["gen_ai.request.model"] for o in recorder.operations] == ["llama3"] * 2
    assert [o.attributes.get("gen_ai.response.model") for o in recorder.operations] == [
        "llama3",
        None,  # a stream does not say its model
    ]


async def test_a_call_the_backend_refused_is_an_error_span_with_its_error_type(
    provider: tuple[GatedProvider, SlotGate], server: FakeLLMServer
) -> None:
    plain, gate = provider
    recorder = Recorder()
    gated = GatedProvider(plain.backend, plain.spec, LocalSlots(gate), observer=recorder)
    server.script(Fail(400, "unknown option"))

    with pytest.raises(BadRequest):
        await gated.chat(REQUEST)
    await gated.backend.aclose()

    call = next(s for s in EXPORTER.get_finished_spans() if s.name == "chat llama3")
    assert call.status.status_code is StatusCode.ERROR
    assert call.attributes is not None
    assert call.attributes["error.type"] == "providers.errors.BadRequest"
    assert "gen_ai.usage.input_tokens" not in call.attributes
    (operation,) = recorder.operations
    assert operation.attributes == call.attributes  # the metrics say what the span says
