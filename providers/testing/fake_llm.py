"""Fake LLM backends: real HTTP servers on loopback that speak each provider's wire format.

A test scripts abstract replies (``Say("hi")``, ``RateLimit(7)``, ...); the
dialect renders each in its provider's real response shape, and first checks
the request the way the real API would (path, auth headers, required fields),
answering a wrong one with that API's own error status and body.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from providers.testing.dialects import (
    AnthropicDialect,
    Dialect,
    OllamaDialect,
    OpenAIDialect,
    Reject,
)
from providers.testing.probe_server import ProbeServer, Received, Reply

__all__ = [
    "AnthropicDialect",
    "Dialect",
    "Fail",
    "FakeLLMServer",
    "Garbage",
    "OllamaDialect",
    "OpenAIDialect",
    "RateLimit",
    "Say",
    "SayJson",
    "Script",
    "Slow",
    "Stream",
]

# -- what a test can script -------------------------------------------------------


@dataclass(frozen=True)
class Say:
    text: str = "ok"
    input_tokens: int = 11
    output_tokens: int = 7


@dataclass(frozen=True)
class SayJson:
    data: dict[str, object] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the answer


@dataclass(frozen=True)
class Stream:
    pieces: tuple[str, ...] = ("Hel", "lo ", "world")
    gap: float = 0.0  # seconds between pieces


@dataclass(frozen=True)
class RateLimit:
    retry_after: str = "7"


@dataclass(frozen=True)
class Fail:
    status: int = 500
    message: str = "internal error"
    delay: float = 0.0  # seconds before the answer


@dataclass(frozen=True)
class Slow:
    seconds: float = 2.0


@dataclass(frozen=True)
class Garbage:
    """A 200 whose body is not JSON at all."""


Script = Say | SayJson | Stream | RateLimit | Fail | Slow | Garbage


# -- the server ------------------------------------------------------------------------


class FakeLLMServer(ProbeServer):
    """Replies with the scripted items in order, then as ``responder`` says (``Say()``);
    lists ``models`` as the models it serves."""

    def __init__(
        self,
        dialect: Dialect,
        hold: float = 0.0,
        responder: Callable[[Received], Script] | None = None,
        *,
        stop_on_disconnect: bool = False,
        models: tuple[str, ...] = (),
    ) -> None:
        super().__init__(hold=hold, stop_on_disconnect=stop_on_disconnect)
        self.dialect = dialect
        self.responder = responder
        self.models = models
        self._script: deque[Script] = deque()
        self._script_lock = threading.Lock()

    @property
    def calls(self) -> list[Received]:
        """The chat requests it received (not its models list's)."""
        return [request for request in self.received if request.path == self.dialect.path]

    def script(self, *replies: Script) -> None:
        with self._script_lock:
            self._script.extend(replies)

    def respond(self, request: Received) -> Reply:
        dialect = self.dialect
        if request.path == dialect.models_path and request.body is None:
            return dialect.listing(self.models)
        try:
            dialect.check(request)
        except Reject as rejected:
            return dialect.error(rejected.status, rejected.message)
        with self._script_lock:
            scripted = self._script.popleft() if self._script else None
        step = scripted or (self.responder(request) if self.responder else Say())
        body = request.body
        match step:
            case Say(text, i, o):
                if dialect.streaming(body):
                    return dialect.stream((text,))
                return dialect.answer(text, body, (i, o))
            case SayJson(data, delay):
                reply = dialect.answer_json(data, body)
                reply.delay = delay
                return reply
            case Stream(pieces, gap):
                reply = dialect.stream(pieces)
                reply.gap = gap
                return reply
            case RateLimit(retry_after):
                return dialect.error(429, "rate limited", {"Retry-After": retry_after})
            case Fail(status, message, delay):
                reply = dialect.error(status, message)
                reply.delay = delay
                return reply
            case Slow(seconds):
                reply = dialect.answer("late", body, (1, 1))
                reply.delay = seconds
                return reply
            case Garbage():
                return Reply(
                    body=b"<html>502 Bad Gateway</html>", headers={"Content-Type": "text/html"}
                )
        raise AssertionError(f"unscripted step {step!r}")
