"""raygate's errors as HTTP answers in OpenAI's error shape.

Every raygate error says what was wrong without a request body, header or key
(see :mod:`actors.errors`, :mod:`providers.errors`), so its message is safe to
send. Anything else is logged and answered with a 500 that says nothing more.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.errors import (
    AcquireTimeout,
    AmbiguousModel,
    ClassificationError,
    InvalidPriority,
    QueueFull,
    RaygateError,
)
from providers.errors import (
    AuthenticationFailed,
    BadRequest,
    BadResponse,
    MissingAPIKey,
    ProviderTimeout,
    RateLimited,
)
from serve.wire import ErrorBody, error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HTTPAnswer:
    status: int
    body: dict[str, object]
    headers: dict[str, str] = field(default_factory=dict)


class Refused(Exception):
    """A request turned away with ``answer`` before its route's work began, by a guard
    (see :mod:`serve.guard`) or by the route itself; the app answers it as it is."""

    def __init__(self, answer: HTTPAnswer) -> None:
        super().__init__(answer)
        self.answer = answer


KINDS = {400: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_error"}

# What each error status of the endpoint means, for its OpenAPI document.
MEANINGS = {
    400: (
        "A body that is not JSON, one the backend refused, or a model id that servers of "
        "no one pool list."
    ),
    401: "No API key, or a wrong one.",
    403: "A change sent with the queue page's session cookie but without its header.",
    404: (
        "No such model, pipeline job, waiting request or input file; or no queue "
        "(queue.enabled false)."
    ),
    409: "A pipeline job asked to run again while it runs, or once every service finished.",
    413: "The request body is over serve.max_body_bytes.",
    422: "A malformed body, field or header; the message names it.",
    429: (
        "The model's queue is full or the wait timed out, the backend's rate limit, the "
        "tenant's max_jobs running, or too many wrong API keys from this client; "
        "Retry-After says when to try again."
    ),
    502: "The backend answered with an error or with an answer that is not its format.",
    503: (
        "The backend is unavailable (its circuit open, its server down, no API key "
        "configured) or the manager does not answer; Retry-After says when to try again."
    ),
    504: "The backend did not answer in time.",
}
# What any route behind the key may answer before its handler runs (see serve.guard).
GUARDED = (401, 403, 413, 429)


def documented(*statuses: int, guarded: bool = True) -> dict[int | str, dict[str, object]]:
    """The error answers of a route, for FastAPI's ``responses=``: ``statuses`` and, for a
    route behind the key, the guard's."""
    every = sorted({*statuses, *(GUARDED if guarded else (413,))})
    return {status: {"model": ErrorBody, "description": MEANINGS[status]} for status in every}


def retry_after(seconds: float | None) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds or 1)))}


def invalid(errors: Sequence[Any]) -> HTTPAnswer:
    """422 naming the first bad field, e.g. ``messages.0.role``, from pydantic's errors
    (FastAPI's start their location with ``body``, which is left out)."""

    def where(error: Any) -> str:
        return ".".join(str(part) for part in error["loc"] if part != "body")

    message = "; ".join(f"{where(e) or 'body'}: {e['msg']}" for e in errors)
    param = where(errors[0]) or None if errors else None
    return HTTPAnswer(422, error(message, "invalid_request_error", param=param))


def answer_for(exc: Exception) -> HTTPAnswer:
    """The HTTP answer for an error a call ended with."""
    message = str(exc)

    def answer(status: int, code: str, headers: dict[str, str] | None = None) -> HTTPAnswer:
        kind = KINDS.get(status, "api_error")
        return HTTPAnswer(status, error(message, kind, code=code), headers or {})

    match exc:
        case InvalidPriority():
            return HTTPAnswer(422, error(message, "invalid_request_error", param="priority"))
        case ClassificationError():
            ambiguous = isinstance(exc, AmbiguousModel)
            code = "model_ambiguous" if ambiguous else "model_not_found"
            body = error(message, "invalid_request_error", param="model", code=code)
            return HTTPAnswer(400 if ambiguous else 404, body)
        case QueueFull():
            return answer(429, "queue_full", retry_after(exc.estimated_wait))
        case AcquireTimeout():
            return answer(429, "queue_timeout", retry_after(exc.timeout))
        case RateLimited():
            return answer(429, "upstream_rate_limited", retry_after(exc.retry_after))
        case BadRequest():
            return answer(400, "upstream_rejected")
        case ProviderTimeout():
            return answer(504, "upstream_timeout")
        case AuthenticationFailed() | BadResponse():
            return answer(502, "upstream_error")
        case MissingAPIKey():
            return answer(503, "upstream_not_configured")
        case RaygateError():
            # Unavailable, circuit open, provider actor lost, model server down: retry later.
            return answer(503, "upstream_unavailable", retry_after(None))
    log.error("request failed", exc_info=exc)
    return HTTPAnswer(500, error("internal error; see the server's log", "api_error"))
