"""What every backend shares: the httpx client, error mapping, SSE, Retry-After.

A backend subclass only knows its wire format: the path, headers and body of
a request, and how to read an answer, a stream and an error body. Failures of
the transport and HTTP statuses become typed errors in exactly one place,
:meth:`Backend._mapped`, and never carry the request or its headers.
"""

from __future__ import annotations

import itertools
import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pydantic import SecretStr

from actors.settings import PROVIDER_DEFAULTS
from providers.errors import (
    AuthenticationFailed,
    BadRequest,
    BadResponse,
    ContextTooLong,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from providers.models import (
    DEFAULT_MAX_TOKENS,
    ChatRequest,
    ChatResponse,
    FinishReason,
    StreamDelta,
    Usage,
)

# How much of a provider's own error message is kept in ours.
ERROR_EXCERPT = 300
# The manager limits how many calls run at once, not the connection pool: httpx's
# default (100 connections, 20 kept open) would queue a remote API's wide fan-out
# behind it first come first served, and reopen (TLS and all) past the 20th.
POOL = httpx.Limits(max_connections=None, max_keepalive_connections=250)
# httpcore walks every connection of its pool on each request (encode/httpx#3215):
# with 128 calls in flight through one pool that walk tripled the CPU each call
# cost. Calls take turns over several pools, so each walk is that much shorter.
POOLS = 8


@dataclass(frozen=True)
class Answer:
    """A whole answer as read off the wire, before timing and JSON checks."""

    text: str
    finish_reason: FinishReason
    usage: Usage
    data: Any = None
    # The model that answered, as the answer names it (a snapshot of an alias asked for).
    model: str | None = None


class Backend(ABC):
    provider: str
    path: str
    # Where the server lists the models it serves (OpenAI's form: ``GET {base}/models``).
    models_path = "/models"
    default_max_tokens = DEFAULT_MAX_TOKENS

    def __init__(
        self,
        base_url: str,
        *,
        group: str,
        api_key: SecretStr | None = None,
        timeout: float = PROVIDER_DEFAULTS.timeout_seconds,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.group = group
        self.timeout = timeout
        self._api_key = api_key
        self._clock = clock
        self._pools = [
            httpx.AsyncClient(
                timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                limits=POOL,
                transport=transport,
            )
            for _ in range(POOLS)
        ]
        self._turns = itertools.cycle(self._pools)

    def __repr__(self) -> str:
        # Never the key: only what identifies the backend.
        return f"{type(self).__name__}(base_url={self.base_url!r}, group={self.group!r})"

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()

    def max_tokens(self, request: ChatRequest) -> int:
        """The tokens an answer may take: the request's limit, else this backend's default."""
        return self.default_max_tokens if request.max_tokens is None else request.max_tokens

    # -- what a wire format defines ----------------------------------------------

    @abstractmethod
    def headers(self) -> dict[str, str]: ...

    @abstractmethod
    def body(self, request: ChatRequest, *, stream: bool) -> dict[str, object]: ...

    @abstractmethod
    def read_answer(self, payload: Any, request: ChatRequest) -> Answer: ...

    @abstractmethod
    def read_stream(self, lines: AsyncIterator[str]) -> AsyncIterator[StreamDelta]: ...

    @abstractmethod
    def error_message(self, payload: Any) -> str | None:
        """The provider's own explanation in an error body, if it gave one."""

    def read_models(self, payload: Any) -> list[str]:
        """The model ids a models list names (OpenAI's form: ``data[].id``)."""
        return [str(model["id"]) for model in payload["data"]]

    # -- calls ------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResponse:
        started = self._clock()
        with self._mapped():
            response = await next(self._turns).post(
                self.base_url + self.path,
                headers=self.headers(),
                json=self.body(request, stream=False),
            )
            self._check_status(response)
        payload = self._json(response.content)
        try:
            answer = self.read_answer(payload, request)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise BadResponse(
                self.provider, f"answer is not in the {self.provider} format ({exc!r})"
            ) from None
        data = answer.data
        if request.response_format is not None and data is None:
            data = self._parse_json_answer(answer.text, request)
        return ChatResponse(
            text=answer.text,
            finish_reason=answer.finish_reason,
            usage=answer.usage,
            latency_seconds=self._clock() - started,
            provider=self.provider,
            group=self.group,
            model=answer.model or request.model,
            data=data,
        )

    async def model_names(self) -> list[str]:
        """The models the server serves, as it lists them (not gated: no model runs)."""
        with self._mapped():
            response = await next(self._turns).get(
                self.base_url + self.models_path, headers=self.headers()
            )
            self._check_status(response)
        try:
            return self.read_models(self._json(response.content))
        except (KeyError, IndexError, TypeError) as exc:
            raise BadResponse(
                self.provider, f"its models list is not in the {self.provider} format ({exc!r})"
            ) from None

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        with self._mapped():
            async with next(self._turns).stream(
                "POST",
                self.base_url + self.path,
                headers=self.headers(),
                json=self.body(request, stream=True),
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._check_status(response)
                try:
                    async for delta in self.read_stream(response.aiter_lines()):
                        yield delta
                except (KeyError, IndexError, TypeError, ValueError) as exc:
                    raise BadResponse(
                        self.provider, f"stream is not in the {self.provider} format ({exc!r})"
                    ) from None

    # -- one place for failures ----------------------------------------------------

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(self.provider, f"no answer within {self.timeout:g}s") from exc
        except httpx.TransportError as exc:
            raise ProviderUnavailable(
                self.provider, f"cannot reach {self.base_url} ({type(exc).__name__})"
            ) from exc

    def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        detail = self._error_detail(response.content)
        if status == 429:
            raise RateLimited(
                self.provider,
                detail,
                status,
                parse_retry_after(response.headers.get("retry-after")),
            )
        kind: type[ProviderError]
        if status in (401, 403):
            kind = AuthenticationFailed
        elif status == 408:
            kind = ProviderTimeout
        elif status >= 500:
            kind = ProviderUnavailable  # includes Anthropic's 529 "overloaded"
        elif status == 400 and _too_long(response.content, detail):
            kind = ContextTooLong
        else:
            kind = BadRequest
        raise kind(self.provider, detail, status)

    def _error_detail(self, content: bytes) -> str:
        try:
            message = self.error_message(json.loads(content))
        except (ValueError, KeyError, TypeError, AttributeError):
            message = None
        if not message:
            return "request failed"
        return message[:ERROR_EXCERPT]

    def _json(self, content: bytes) -> Any:
        try:
            return json.loads(content)
        except ValueError:
            raise BadResponse(
                self.provider, f"answer is not JSON: {_excerpt(content.decode(errors='replace'))}"
            ) from None

    def _parse_json_answer(self, text: str, request: ChatRequest) -> Any:
        assert request.response_format is not None
        try:
            # strict=False: a raw newline inside a string is a common model slip
            # (grammars allow it); the caller validates the content anyway.
            return json.loads(text, strict=False)
        except ValueError:
            raise BadResponse(
                self.provider,
                f"asked for JSON matching schema {request.response_format.name!r}, "
                f"got text that is not JSON: {_excerpt(text)}",
            ) from None


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


async def read_sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as ``(event, data)``; ``event`` is "message" when unnamed."""
    event, data = "message", list[str]()
    async for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue  # a comment, e.g. a keep-alive
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    if data:
        yield event, "\n".join(data)


def _excerpt(text: str, most: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= most else text[:most] + "...")


# How servers say a prompt does not fit: OpenAI's error code, and the messages of
# Anthropic ("prompt is too long"), llama.cpp's server ("exceeds the available context
# size"), vLLM and Ollama ("maximum context length", "context length").
_TOO_LONG = ("context_length_exceeded", "context length", "context size", "prompt is too long")


def _too_long(content: bytes, detail: str) -> bool:
    text = (content[: ERROR_EXCERPT * 4].decode(errors="replace") + " " + detail).lower()
    return any(sign in text for sign in _TOO_LONG)
