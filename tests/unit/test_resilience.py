"""Retries, Retry-After and the circuit breaker, on fake clocks; provider bad input."""

from __future__ import annotations

import pickle
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from pydantic import SecretStr, ValidationError

from actors.groups import Provider
from actors.settings import Settings
from providers.actor import ProviderOptions, options_for
from providers.breaker import CircuitBreaker, State
from providers.errors import (
    BadRequest,
    CircuitOpen,
    MissingAPIKey,
    ModelServerCrashed,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
)
from providers.http import parse_retry_after
from providers.models import ChatMessage, ChatRequest
from providers.retry import RetryPolicy, with_retries
from tests.unit.conftest import FakeClock

GROUP = "local-ollama-http://localhost:11434"


class Flaky:
    """An attempt that fails with the given errors, then answers."""

    def __init__(self, *errors: ProviderError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "answer"


class Sleeper:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)


def unavailable() -> ProviderUnavailable:
    return ProviderUnavailable("ollama", "down", 503)


# -- retry ----------------------------------------------------------------------------


async def test_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    clock = FakeClock()
    sleep = Sleeper(clock)
    attempt = Flaky(unavailable(), unavailable(), unavailable())
    policy = RetryPolicy(attempts=4, base_delay=1.0, max_delay=3.0)

    assert await with_retries(attempt, policy, clock=clock, sleep=sleep, rng=random.Random(3)) == (
        "answer"
    )

    # Each wait is uniform in [0, min(cap, base * 2^(n-1))]: caps 1, 2, 3.
    assert len(sleep.waits) == 3
    assert all(0 <= wait <= cap for wait, cap in zip(sleep.waits, [1, 2, 3], strict=True))
    expected = random.Random(3)
    assert sleep.waits == [expected.uniform(0, cap) for cap in (1, 2, 3)]


async def test_retry_after_beats_the_computed_backoff() -> None:
    clock = FakeClock()
    sleep = Sleeper(clock)
    attempt = Flaky(RateLimited("openai", "slow down", 429, retry_after=12.0))

    await with_retries(attempt, RetryPolicy(base_delay=0.1), clock=clock, sleep=sleep)

    assert sleep.waits == [12.0]


async def test_error_that_is_not_retryable_is_raised_at_once() -> None:
    clock = FakeClock()
    attempt = Flaky(BadRequest("openai", "bad model", 400))

    with pytest.raises(BadRequest):
        await with_retries(attempt, RetryPolicy(), clock=clock, sleep=Sleeper(clock))
    assert attempt.calls == 1


async def test_no_wait_starts_that_would_end_past_the_deadline() -> None:
    clock = FakeClock()
    sleep = Sleeper(clock)
    attempt = Flaky(
        RateLimited("openai", "slow down", retry_after=4.0),
        RateLimited("openai", "slow down", retry_after=4.0),
    )

    with pytest.raises(RateLimited):
        await with_retries(attempt, RetryPolicy(attempts=5, deadline=6.0), clock=clock, sleep=sleep)
    assert sleep.waits == [4.0]  # a second 4 s wait would end at 8 s > 6 s
    assert attempt.calls == 2


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)

    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(later, now=now.timestamp) == 30.0
    assert parse_retry_after("yesterday-ish") is None
    assert parse_retry_after(None) is None


# -- circuit breaker -------------------------------------------------------------------


DOWN = ProviderUnavailable("ollama", "cannot reach http://localhost:11434 (ConnectError)")


def breaker(clock: FakeClock, **kwargs: float) -> CircuitBreaker:
    return CircuitBreaker("ollama", GROUP, clock=clock, **kwargs)  # type: ignore[arg-type]


def test_breaker_opens_after_consecutive_failures_and_fails_fast() -> None:
    clock = FakeClock()
    b = breaker(clock, consecutive=3, cooldown=30.0)
    for _ in range(3):
        b.before_call()
        b.record(DOWN)

    with pytest.raises(CircuitOpen) as caught:
        b.before_call()
    assert str(caught.value) == (
        f"ollama: circuit for group '{GROUP}' is open after repeated failures (the last: "
        "ollama: cannot reach http://localhost:11434 (ConnectError)); calls fail fast "
        "for another 30.0s, then one probe is let through"
    )


def test_breaker_opens_on_failure_rate_over_the_window() -> None:
    clock = FakeClock()
    b = breaker(clock, consecutive=100, failure_rate=0.5, window=10, min_calls=10)
    for ok in [True, False] * 4 + [True]:
        b.record(None if ok else DOWN)
    assert b.state is State.CLOSED  # 4 of 9: too few calls, and under half
    b.record(DOWN)

    assert b.state is State.OPEN  # 5 of 10


def cooled_down() -> CircuitBreaker:
    """Opened by one failure, its cooldown over: the next call is the probe."""
    clock = FakeClock()
    b = breaker(clock, consecutive=1, cooldown=10.0)
    b.record(DOWN)
    clock.advance(10.0)
    return b


def test_half_open_lets_one_probe_through_and_its_success_closes() -> None:
    b = cooled_down()

    b.before_call()  # the probe
    with pytest.raises(CircuitOpen):
        b.before_call()  # a second caller while the probe runs
    b.record(None)

    assert b.state is State.CLOSED
    b.before_call()


def test_failed_probe_opens_the_circuit_again() -> None:
    b = cooled_down()
    b.before_call()
    b.record(DOWN)

    with pytest.raises(CircuitOpen):
        b.before_call()


def test_probe_that_never_reached_the_backend_frees_the_probe_slot() -> None:
    b = cooled_down()

    with pytest.raises(TimeoutError), b.guard():
        raise TimeoutError("no slot in time")  # e.g. the manager queue timed out

    assert b.state is State.HALF_OPEN
    b.before_call()  # the next caller may probe


def test_client_errors_do_not_count_against_the_backend() -> None:
    clock = FakeClock()
    b = breaker(clock, consecutive=2)
    for _ in range(5):
        with pytest.raises(BadRequest), b.guard():
            raise BadRequest("ollama", "unknown model", 404)

    assert b.state is State.CLOSED


# -- bad input and secrets -----------------------------------------------------------


def test_remote_api_without_a_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "RAYGATE_API_KEYS__OPENAI"):
        monkeypatch.delenv(name, raising=False)

    with pytest.raises(MissingAPIKey) as caught:
        options_for(Provider.OPENAI, Settings())

    assert str(caught.value) == (
        "openai: no API key; set RAYGATE_API_KEYS__OPENAI or OPENAI_API_KEY, "
        "or api_keys.openai in the settings"
    )


def test_key_comes_from_the_providers_usual_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAYGATE_API_KEYS__ANTHROPIC", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")

    options = options_for(Provider.ANTHROPIC, Settings())

    assert options.api_key is not None
    assert options.api_key.get_secret_value() == "sk-ant-from-env"
    assert "sk-ant-from-env" not in repr(options)


def test_local_server_needs_no_key() -> None:
    assert options_for(Provider.OLLAMA, Settings()).api_key is None


def test_settings_never_print_keys() -> None:
    settings = Settings(api_keys={Provider.OPENAI: SecretStr("sk-secret-123")})

    assert "sk-secret-123" not in repr(settings)
    assert "sk-secret-123" not in str(settings.model_dump())
    assert "sk-secret-123" not in repr(ProviderOptions(api_key=settings.api_keys[Provider.OPENAI]))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"messages": ()}, "at least 1 item"),
        ({"temperature": 3.0}, "less than or equal to 2"),
        ({"max_tokens": 0}, "greater than 0"),
        (
            {
                "messages": (
                    ChatMessage(role="user", content="hi"),
                    ChatMessage(role="system", content="late"),
                )
            },
            "at most one system message, and it must come first",
        ),
    ],
)
def test_bad_chat_request_is_refused_with_the_reason(
    changes: dict[str, object], message: str
) -> None:
    fields: dict[str, object] = {
        "model": "m",
        "messages": (ChatMessage(role="user", content="hi"),),
        **changes,
    }
    with pytest.raises(ValidationError, match=message):
        ChatRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error",
    [
        RateLimited("openai", "slow down", 429, retry_after=3.0),
        MissingAPIKey("openai", ("OPENAI_API_KEY",)),
        CircuitOpen("ollama", GROUP, 12.5, "ollama: down (HTTP 503)"),
        ModelServerCrashed("openai-compatible", "llama.cpp at 127.0.0.1:1", "killed", True),
        ProviderUnavailable("ollama", "down", 503),
    ],
)
def test_provider_errors_survive_pickling(error: ProviderError) -> None:
    copy = pickle.loads(pickle.dumps(error))

    assert (type(copy), str(copy), copy.args) == (type(error), str(error), error.args)
