"""The endpoint's OpenAI wire format and its error answers, without Ray."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from actors.errors import AcquireTimeout, ConfigError, QueueFull, UnknownModel
from actors.settings import ServeSettings, Settings
from providers.errors import ProviderTimeout, ProviderUnavailable, RateLimited
from serve.app import check_keys
from serve.errors import answer_for, invalid
from serve.wire import ChatCompletionBody, wants_cache


def test_an_openai_body_becomes_the_backends_request() -> None:
    body = ChatCompletionBody.model_validate(
        {
            "model": "local",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": t} for t in ("Hel", "lo")]},
            ],
            "max_completion_tokens": 50,
            "stop": "END",
            "response_format": {"type": "json_object"},
            "n": 1,  # accepted and ignored, as OpenAI-compatible servers do
        }
    )

    request = body.chat_request("llama3.2")

    assert request.model == "llama3.2"
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief."),
        ("user", "Hello"),
    ]
    assert (request.max_tokens, request.stop) == (50, ("END",))
    assert request.response_format is not None
    assert request.response_format.json_schema == {"type": "object"}


def test_a_bad_field_is_named() -> None:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionBody.model_validate(
            {"model": "m", "messages": [{"role": "robot", "content": "x"}]}
        )

    answer = invalid(caught.value.errors())

    assert answer.status == 422
    assert answer.body["error"]["param"] == "messages.0.role"  # type: ignore[index]


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (QueueFull("g", 10, 10, 12.2), 429, "13"),
        (QueueFull("g", 10, 10, None), 429, "1"),
        (AcquireTimeout("g", "r", 5.0), 429, "5"),
        (RateLimited("openai", "slow down", 429, 7.0), 429, "7"),
        (UnknownModel("m", ()), 404, None),
        (ProviderTimeout("ollama", "no answer in 120 s"), 504, None),
        (ProviderUnavailable("ollama", "connection refused"), 503, "1"),
        (RuntimeError("boom"), 500, None),
    ],
)
def test_each_error_gets_its_status(error: Exception, status: int, retry_after: str | None) -> None:
    answer = answer_for(error)

    assert answer.status == status
    assert answer.headers.get("Retry-After") == retry_after
    assert set(answer.body["error"]) == {"message", "type", "param", "code"}  # type: ignore[arg-type]
    if status == 500:
        assert "boom" not in answer.body["error"]["message"]  # type: ignore[index]


def test_auth_without_keys_refuses_to_start_unless_turned_off() -> None:
    with pytest.raises(ConfigError, match=r"serve\.api_keys is empty"):
        check_keys(Settings())
    check_keys(Settings(serve=ServeSettings(auth=False)))
    check_keys(Settings(serve=ServeSettings(api_keys=(SecretStr("k"),))))


def test_a_request_uses_the_cache_only_where_the_endpoint_does_unless_it_says_no() -> None:
    assert wants_cache(None, default=True)
    assert wants_cache("max-age=60", default=True)
    assert not wants_cache("no-cache", default=True)
    assert not wants_cache("private, No-Store", default=True)
    assert not wants_cache(None, default=False)
