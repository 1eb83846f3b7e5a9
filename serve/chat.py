"""``POST /v1/chat/completions``: OpenAI's chat completions, JSON or a stream of
server-sent events.

A request takes a slot of its model's group from the cluster's manager, like
every other caller, at the priority the tenant's say allows (see
:mod:`serve.tenants`), once its tenant's quota admits it (see
:mod:`serve.quota`). A client that hangs up cancels its call: Serve cancels
the handler, which cancels the call, which leaves the queue or gives its slot
back.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from actors.errors import RaygateError
from actors.options import CallOptions
from actors.waitqueue import check_priority
from providers.errors import ProviderActorLost
from providers.models import StreamDelta, Usage
from serve.errors import HTTPAnswer, Refused, answer_for, documented, invalid, retry_after
from serve.guard import TenantAsking, check_model, json_answer
from serve.quota import TenantQuotas
from serve.replica import ThisReplica
from serve.tenants import Tenant, asking, served_priority
from serve.wire import ChatCompletionBody, chunk, completion, error, usage_chunk, wants_cache

router = APIRouter()


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={
        200: {
            "description": "The completion, or with stream true its server-sent events.",
            "content": {"application/json": {}, "text/event-stream": {}},
        },
        **documented(400, 404, 422, 429, 502, 503, 504),
    },
)
async def chat_completions(
    body: ChatCompletionBody, request: Request, tenant: TenantAsking, replica: ThisReplica
) -> JSONResponse | StreamingResponse:
    check_model(tenant, body.model)
    try:
        options = _options(request, body, tenant, cache=replica.settings.serve.cache)
    except RaygateError as exc:  # a priority out of range
        raise Refused(answer_for(exc)) from exc
    except ValueError as exc:
        raise Refused(invalid_headers()) from exc
    if tenant is not None:
        _admit(replica.quotas, tenant)
    headers = {"X-Request-Id": options.request_id or "", "X-Priority": str(options.priority)}
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    ended = partial(_answered, replica.quotas, tenant)
    used: Usage | None = None
    streaming = False
    try:
        provider, backend_model = await replica.provider(body.model)
        chat = body.chat_request(backend_model)
        if not body.stream:
            response = await provider.chat(chat, options)
            used = response.usage
            # How long the answer waited for its slot (0 without the queue, or cached).
            headers["X-Queue-Wait"] = f"{response.queue_wait_seconds:.3f}"
            if response.fallback_from is not None:  # a fallback answered: say which
                headers["X-Fallback-From"] = response.fallback_from
                model = response.model
            else:
                model = body.model
            return JSONResponse(completion(response, model, completion_id), headers=headers)
        pieces = provider.stream(chat, options)
        # Errors before the first piece (a full queue, an unknown model) are HTTP errors.
        first = await anext(pieces)
        streaming = True
    except ValidationError as exc:  # e.g. a system message that does not come first
        return json_answer(invalid(exc.errors()))
    except Exception as exc:
        if isinstance(exc, ProviderActorLost):
            replica.forget_provider(body.model)  # the next request gets a new actor
        answer = answer_for(exc)
        return JSONResponse(answer.body, answer.status, {**answer.headers, **headers})
    finally:
        if not streaming:
            ended(used)
    usage = body.stream_options is not None and body.stream_options.include_usage
    events = _sse(first, pieces, body.model, completion_id, usage=usage, ended=ended)
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def _options(
    request: Request, body: ChatCompletionBody, tenant: Tenant | None, *, cache: bool
) -> CallOptions:
    """Priority from the body or ``X-Priority`` (else the tenant's default, never above
    its ceiling); ``X-Queue-Timeout``, ``X-Request-Id``; the tenant as the flow; the
    response cache if ``cache`` (``serve.cache``), unless ``Cache-Control`` says no; the
    model's fallbacks unless ``X-Fallback: off`` or the body's ``fallbacks: []``. Asked
    now: a fallback's wait counts from the request's arrival, not its reaching the queue."""
    header = request.headers.get("x-priority")
    asked = body.priority if body.priority is not None else int(header) if header else None
    if asked is not None:
        check_priority(asked)
    priority = served_priority(tenant, asked)
    timeout = request.headers.get("x-queue-timeout")
    seconds = float(timeout) if timeout else None
    if seconds is not None and not 0 < seconds < math.inf:
        raise ValueError(timeout)
    return replace(
        asking(tenant, priority),
        request_id=request.headers.get("x-request-id") or uuid.uuid4().hex,
        asked_at=time.time(),
        queue_timeout=seconds,
        cache=wants_cache(request.headers.get("cache-control"), cache),
        fallbacks=body.fallbacks != [] and request.headers.get("x-fallback") != "off",
    )


def invalid_headers() -> HTTPAnswer:
    message = "X-Priority must be an integer 1..10 and X-Queue-Timeout a positive number of seconds"
    return HTTPAnswer(422, error(message, "invalid_request_error", param="headers"))


def _admit(quotas: TenantQuotas, tenant: Tenant) -> None:
    """Count the request in its tenant's quota, or refuse it with 429 if that is used up."""
    over = quotas.admit(tenant.name, tenant.settings)
    if over is not None:
        body = error(over.message(tenant.name), "rate_limit_error", code="tenant_quota_exceeded")
        raise Refused(HTTPAnswer(429, body, retry_after(over.retry_after)))


def _answered(quotas: TenantQuotas, tenant: Tenant | None, usage: Usage | None) -> None:
    """A request ended: its tenant's quota counts its tokens and frees its place."""
    if tenant is not None:
        tokens = usage.input_tokens + usage.output_tokens if usage is not None else 0
        quotas.answered(tenant.name, tokens)


async def _sse(
    first: StreamDelta,
    rest: AsyncIterator[StreamDelta],
    model: str,
    completion_id: str,
    *,
    usage: bool,
    ended: Callable[[Usage | None], None],
) -> AsyncIterator[str]:
    """The stream as server-sent events; an error after the first piece ends it with an
    ``error`` event, as OpenAI's streams do. ``ended`` hears of its end, however it
    ends (the client may hang up), with the usage the backend reported."""

    def event(data: object) -> str:
        return f"data: {json.dumps(data)}\n\n"

    last = first
    try:
        yield event(chunk(first, model, completion_id, first=True))
        try:
            async for delta in rest:
                last = delta
                yield event(chunk(delta, model, completion_id))
        except Exception as exc:
            yield event(answer_for(exc).body)
            return
        if usage:
            yield event(usage_chunk(last, model, completion_id))
        yield "data: [DONE]\n\n"
    finally:
        ended(last.usage)
