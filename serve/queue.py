"""The queue over HTTP: ``GET /v1/queue`` (its stats), ``GET /v1/queue/{request_id}``
(where a waiting request stands), and the live queue page (see :mod:`serve.page`):
``GET /``, its stream ``GET /v1/queue/events``, ``POST /login`` and
``GET /static/{name}``.

What a tenant sees of the queue is its own by name and everyone else's summed
(see :mod:`serve.tenants`); with ``queue.enabled`` false the queue's routes
answer 404 (see :data:`serve.guard.PresentManager`), the page's own files still load.
"""

from __future__ import annotations

import urllib.parse
from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from serve.errors import documented, retry_after
from serve.guard import PresentManager, TenantAsking, client_of
from serve.page import (
    ASSETS,
    SECURITY_HEADERS,
    asset,
    login_page,
    queue_events,
    session_cookie,
    session_token,
)
from serve.replica import ThisReplica
from serve.schedules import seen_schedules
from serve.tenants import jobs_owner, owner_of, sees, stats_seen_by, view_seen_by
from serve.wire import error

router = APIRouter()


@router.get("/v1/queue", response_model=None, responses=documented(404))
async def queue(tenant: TenantAsking, manager: PresentManager) -> dict[str, object]:
    """The queue's stats, as this key's tenant may see them (see serve.tenants)."""
    stats = stats_seen_by(tenant, await manager.stats())
    return stats.model_dump(mode="json", by_alias=True)


@router.get("/v1/queue/events", include_in_schema=False, response_model=None)
async def queue_stream(
    tenant: TenantAsking, manager: PresentManager, replica: ThisReplica
) -> StreamingResponse:
    """The queue page's stream of server-sent events (see :mod:`serve.page`). Declared
    before ``/v1/queue/{request_id}``, which would take "events" for a request id."""

    async def schedules() -> list[dict[str, object]]:
        seen = await seen_schedules(replica.scheduler, jobs_owner(tenant))
        return [schedule.model_dump(mode="json") for schedule in seen]

    return StreamingResponse(
        queue_events(manager, owner_of(tenant), partial(view_seen_by, tenant), schedules),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/v1/queue/{request_id}", response_model=None, responses=documented(404, 422))
async def position(
    request_id: str, tenant: TenantAsking, manager: PresentManager
) -> dict[str, object] | JSONResponse:
    """Where a waiting request stands (404 for another tenant's, as for one not
    waiting, unless this key's tenant sees all)."""
    position = await manager.position(request_id)
    if position is None or not sees(tenant, position.flow):
        message = f"request {request_id!r} is not waiting (granted, finished or unknown)"
        return JSONResponse(error(message, "invalid_request_error", code="not_waiting"), 404)
    return position.model_dump(mode="json", by_alias=True)


@router.get("/", include_in_schema=False)
async def page() -> HTMLResponse:
    """The live queue page (see :mod:`serve.page`)."""
    return HTMLResponse(asset("index.html"), headers=SECURITY_HEADERS)


@router.get("/static/{name}", include_in_schema=False, response_model=None)
async def static(name: str) -> Response | JSONResponse:
    if name not in ASSETS:
        return JSONResponse(error(f"no file {name!r}", "invalid_request_error"), 404)
    return Response(asset(name), media_type=ASSETS[name], headers=SECURITY_HEADERS)


@router.post("/login", include_in_schema=False, response_model=None)
async def login(request: Request, replica: ThisReplica) -> Response:
    """The page's login form: a valid key gets the session cookie and the page."""
    client = client_of(request.scope)
    wait = replica.guesses.retry_after(client)
    if wait is not None:
        problem = "Too many wrong keys: wait a minute before trying again."
        headers = {**SECURITY_HEADERS, **retry_after(wait)}
        return HTMLResponse(login_page(problem), 429, headers)
    form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
    holder = replica.tenants.by_key(form.get("key", [""])[0])
    if holder is not None:
        replica.guesses.succeeded(client)
        https = "https" in (request.url.scheme, request.headers.get("x-forwarded-proto"))
        cookie = session_cookie(session_token(holder.key), secure=https)
        return Response(status_code=303, headers={"Location": "/", "Set-Cookie": cookie})
    replica.guesses.failed(client)
    problem = "No such key: use one of the server's keys."
    return HTMLResponse(login_page(problem), 401, SECURITY_HEADERS)
