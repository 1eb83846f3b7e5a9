"""One contract, every provider: the same cases against each wire format on loopback.

Each case runs the real gated path (breaker -> slot -> httpx -> release) with
in-process slots, against a real HTTP server that checks requests the way the
provider's API does and answers in its real shape.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from actors.engine import SlotEngine
from actors.gate import SlotGate
from actors.groups import GroupSpec, classify
from actors.ops import Stats
from actors.slots import LocalSlots
from providers.errors import (
    AuthenticationFailed,
    BadRequest,
    BadResponse,
    ContextTooLong,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from providers.factory import build_backend
from providers.gated import GatedProvider
from providers.llamacpp import GEMMA, SMOLLM2
from providers.models import ChatMessage, ChatRequest, JsonSchemaFormat
from providers.openai import Quirks
from providers.retry import RetryPolicy
from providers.testing.fake_llm import (
    AnthropicDialect,
    Dialect,
    Fail,
    FakeLLMServer,
    Garbage,
    OllamaDialect,
    OpenAIDialect,
    RateLimit,
    Say,
    SayJson,
    Slow,
    Stream,
)

OPENAI_KEY = "sk-test-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-test-0123456789"
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


@dataclass(frozen=True)
class Case:
    provider: str
    dialect: Callable[[], Dialect]
    path: str  # appended to the server's URL to make the base URL
    key: str | None
    schema_sent: Callable[[dict[str, Any]], Any]
    quirks: Quirks = field(default_factory=Quirks)


CASES = [
    Case(
        "openai",
        lambda: OpenAIDialect(api_key=OPENAI_KEY),
        "/v1",
        OPENAI_KEY,
        lambda body: body["response_format"]["json_schema"]["schema"],
    ),
    Case(
        "anthropic",
        lambda: AnthropicDialect(api_key=ANTHROPIC_KEY),
        "",
        ANTHROPIC_KEY,
        lambda body: body["tools"][0]["input_schema"],
    ),
    Case("ollama", OllamaDialect, "", None, lambda body: body["format"]),
    Case(
        "lmstudio",
        OpenAIDialect,
        "/v1",
        None,
        lambda body: body["response_format"]["json_schema"]["schema"],
    ),
    Case(
        "openai-compatible",
        OpenAIDialect,
        "/v1",
        None,
        lambda body: body["response_format"]["schema"],
        quirks=Quirks(schema_style="json_object"),
    ),
]


@dataclass
class Rig:
    case: Case
    server: FakeLLMServer
    spec: GroupSpec
    provider: GatedProvider
    gate: SlotGate
    waits: list[float]

    def request(self, **changes: Any) -> ChatRequest:
        fields: dict[str, Any] = {
            "model": "test-model",
            "messages": (
                ChatMessage(role="system", content="Answer briefly."),
                ChatMessage(role="user", content="Capital of France?"),
            ),
            **changes,
        }
        return ChatRequest(**fields)


_ids = itertools.count()


@pytest.fixture(params=CASES, ids=[case.provider for case in CASES])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    case: Case = request.param
    with FakeLLMServer(case.dialect()) as server:
        spec = classify(case.provider, server.url + case.path)
        waits: list[float] = []

        def clock() -> float:
            """Real time, moved on by the retry loop's waits (which pass at once)."""
            return time.monotonic() + sum(waits)

        engine = SlotEngine(epoch=next(_ids), group_limits={spec.id: 1}, clock=clock)
        gate = SlotGate(engine)

        async def sleep(seconds: float) -> None:
            # The retry loop waits here: the slot must be free while it does.
            assert gate.apply([Stats()])[0].total_active == 0
            waits.append(seconds)

        backend = build_backend(
            spec,
            api_key=SecretStr(case.key) if case.key else None,
            timeout=0.5,
            quirks=case.quirks,
        )
        provider = GatedProvider(
            backend,
            spec,
            LocalSlots(gate),
            retry=RetryPolicy(attempts=3, base_delay=0.01, deadline=60),
            clock=clock,
            sleep=sleep,
        )
        yield Rig(case, server, spec, provider, gate, waits)
        gate.close()


@pytest.fixture
async def started(rig: Rig) -> AsyncIterator[Rig]:
    await rig.provider.ready()
    yield rig
    await rig.provider.aclose()
    assert rig.gate.apply([Stats()])[0].total_active == 0


async def test_answer_is_read_from_the_providers_format(started: Rig) -> None:
    started.server.script(Say("Paris", input_tokens=12, output_tokens=3))

    response = await started.provider.chat(started.request())

    assert (response.text, response.finish_reason) == ("Paris", "stop")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 3)
    assert (response.provider, response.group, response.model) == (
        started.case.provider,
        started.spec.id,
        "test-model",
    )
    assert len(started.server.received) == 1


async def test_json_schema_answer_is_sent_and_parsed(started: Rig) -> None:
    started.server.script(SayJson({"city": "Paris"}))
    fmt = JsonSchemaFormat(name="capital", json_schema=CITY_SCHEMA)

    response = await started.provider.chat(started.request(response_format=fmt))

    assert response.data == {"city": "Paris"}
    assert started.case.schema_sent(started.server.bodies[0]) == CITY_SCHEMA


async def test_stream_yields_the_pieces_then_finish_and_usage(started: Rig) -> None:
    started.server.script(Stream(("Pa", "r", "is")))

    deltas = [delta async for delta in started.provider.stream(started.request(stream=True))]

    assert "".join(d.text for d in deltas) == "Paris"
    last = deltas[-1]
    assert last.finish_reason == "stop"
    assert last.usage is not None
    assert last.usage.output_tokens == 3


async def test_rate_limit_is_retried_after_the_servers_retry_after(started: Rig) -> None:
    started.server.script(RateLimit("7"), Say("Paris"))

    response = await started.provider.chat(started.request())

    assert response.text == "Paris"
    assert started.waits == [7.0]


async def test_rate_limit_error_carries_retry_after(started: Rig) -> None:
    started.server.script(RateLimit("7"))

    with pytest.raises(RateLimited) as caught:
        await started.provider.backend.chat(started.request())

    assert (caught.value.status, caught.value.retry_after) == (429, 7.0)


async def test_server_error_then_success_is_retried_with_the_slot_released(
    started: Rig,
) -> None:
    started.server.script(Fail(500, "boom"), Say("Paris"))

    response = await started.provider.chat(started.request())

    assert response.text == "Paris"
    assert len(started.waits) == 1
    assert 0 <= started.waits[0] <= 0.01
    assert len(started.server.received) == 2


async def test_retries_stop_after_the_last_attempt(started: Rig) -> None:
    started.server.script(Fail(503), Fail(503), Fail(503), Say("never"))

    with pytest.raises(ProviderUnavailable) as caught:
        await started.provider.chat(started.request())

    assert caught.value.status == 503
    assert len(started.server.received) == 3


async def test_no_answer_in_time_is_a_timeout(started: Rig) -> None:
    started.server.script(Slow(2.0))

    with pytest.raises(ProviderTimeout, match=r"no answer within 0\.5s") as caught:
        await started.provider.backend.chat(started.request())

    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


async def test_body_that_is_not_json_is_a_bad_response(started: Rig) -> None:
    started.server.script(Garbage())

    with pytest.raises(BadResponse, match="answer is not JSON: '<html>502 Bad Gateway</html>'"):
        await started.provider.chat(started.request())


async def test_text_answer_when_a_schema_was_asked_is_a_bad_response(started: Rig) -> None:
    started.server.script(Say("Paris, of course"))
    fmt = JsonSchemaFormat(name="capital", json_schema=CITY_SCHEMA)

    with pytest.raises(BadResponse) as caught:
        await started.provider.chat(started.request(response_format=fmt))

    assert str(caught.value) == (
        f"{started.case.provider}: asked for JSON matching schema 'capital', got text that is "
        "not JSON: 'Paris, of course'"
    )


async def test_unauthorized_is_not_retried_and_never_shows_the_key(started: Rig) -> None:
    started.server.script(Fail(401, "invalid api key"))

    with pytest.raises(AuthenticationFailed) as caught:
        await started.provider.chat(started.request())

    assert str(caught.value) == f"{started.case.provider}: invalid api key (HTTP 401)"
    assert len(started.server.received) == 1
    for secret in (OPENAI_KEY, ANTHROPIC_KEY):
        assert secret not in str(caught.value)
        assert secret not in repr(started.provider.backend)


@pytest.mark.parametrize(
    "message",
    [
        "This model's maximum context length is 8192 tokens. However, your messages resulted "
        "in 9000 tokens.",  # OpenAI, vLLM
        "prompt is too long: 210000 tokens > 200000 maximum",  # Anthropic
        "the request exceeds the available context size, try increasing it",  # llama.cpp
    ],
)
async def test_a_prompt_too_long_for_the_model_is_context_too_long_not_retried(
    started: Rig, message: str
) -> None:
    started.server.script(Fail(400, message))

    with pytest.raises(ContextTooLong):
        await started.provider.chat(started.request())

    assert len(started.server.received) == 1
    started.server.script(Fail(400, "unknown field 'temprature'"))
    with pytest.raises(BadRequest) as other:
        await started.provider.chat(started.request())
    assert not isinstance(other.value, ContextTooLong)


async def test_llama_cpp_quirks_fold_the_system_prompt_and_ask_json_object() -> None:
    with FakeLLMServer(OpenAIDialect()) as server:
        spec = classify("openai-compatible", server.url + "/v1")
        backend = build_backend(spec, api_key=None, timeout=5, quirks=GEMMA.quirks)
        server.script(SayJson({"city": "Paris"}))
        request = ChatRequest(
            model="gemma",
            messages=(
                ChatMessage(role="system", content="Answer in JSON."),
                ChatMessage(role="user", content="Capital of France?"),
            ),
            response_format=JsonSchemaFormat(json_schema=CITY_SCHEMA),
        )

        response = await backend.chat(request)
        await backend.aclose()

    (body,) = server.bodies
    assert body["messages"] == [
        {"role": "user", "content": "Answer in JSON.\n\nCapital of France?"}
    ]
    assert body["response_format"] == {"type": "json_object", "schema": CITY_SCHEMA}
    assert response.data == {"city": "Paris"}


async def test_an_embedded_models_request_without_a_limit_takes_the_models_own() -> None:
    # SmolLM2's chat template keeps the system prompt; a request that names no limit
    # stops at the embedded model's default, one that names one at its own.
    with FakeLLMServer(OpenAIDialect()) as server:
        spec = classify("openai-compatible", server.url + "/v1")
        backend = build_backend(spec, api_key=None, timeout=5, quirks=SMOLLM2.quirks)
        system = ChatMessage(role="system", content="Be brief.")
        hello = ChatMessage(role="user", content="Hello")
        server.script(Say("Hi!"), Say("Hi!"))

        await backend.chat(ChatRequest(model=SMOLLM2.id, messages=(system, hello)))
        await backend.chat(ChatRequest(model=SMOLLM2.id, messages=(hello,), max_tokens=9))
        await backend.aclose()

    unlimited, limited = server.bodies
    assert unlimited["messages"][0] == {"role": "system", "content": "Be brief."}
    assert (unlimited["max_tokens"], limited["max_tokens"]) == (SMOLLM2.quirks.max_tokens, 9)


async def test_raw_newline_inside_a_json_string_is_accepted() -> None:
    with FakeLLMServer(OpenAIDialect()) as server:
        backend = build_backend(
            classify("openai-compatible", server.url + "/v1"), api_key=None, timeout=5
        )
        server.script(Say('{"city": "Par\nis"}'))
        request = ChatRequest(
            model="m",
            messages=(ChatMessage(role="user", content="Capital of France?"),),
            response_format=JsonSchemaFormat(json_schema=CITY_SCHEMA),
        )

        response = await backend.chat(request)
        await backend.aclose()

    assert response.data == {"city": "Par\nis"}
