"""What a request passes before a handler: its key, its size, its method (every
request), and what a route needs of it (the tenant asking, its job, the manager).

:class:`Guard` is a pure ASGI middleware, not Starlette's BaseHTTPMiddleware, so
that a client's disconnect still reaches the handler and cancels its call.

- The key: ``Authorization: Bearer <key>`` with a key of a tenant (see
  :mod:`serve.tenants`), or the queue page's session cookie (a change made
  with it must also send the page's header), on every route but the health
  checks, the login and the page's files; the routes find the key's tenant
  with :func:`tenant_asking`. A client that keeps showing wrong keys is
  slowed down (see :mod:`serve.keyguesses`).
- The size: a body over ``serve.max_body_bytes`` gets 413 before it is read.
- The method: a path that exists but not with this method gets 405 with
  ``Allow`` naming every method of that path (:func:`not_allowed`, which the
  app answers instead of Starlette's own 405: that one names only the
  methods of the first route that matched the path).

A route takes the rest as parameters (FastAPI dependencies), each refusing the
request in one way for every route: :data:`TenantAsking`; :data:`TenantsJob`, the
pipeline job of the path if it is the tenant's, else 404 as for an unknown one;
:data:`PresentManager`, the manager, else the 404 that says there is no queue;
and :func:`check_model`, a 404 for a model the tenant may not call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from actors.client import ManagerClient
from actors.settings import Settings
from pipelines.submitted import SubmittedJob
from serve.errors import HTTPAnswer, Refused, retry_after
from serve.page import PAGE_HEADER, SECURITY_HEADERS, login_page
from serve.replica import ThisReplica, replica_of
from serve.tenants import Tenant, jobs_owner, may_use, no_such_model
from serve.wire import error

# Routes anyone may call: a load balancer's health checks, the page's login and files.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/login"})
OPEN_PREFIX = "/static/"


def json_answer(answer: HTTPAnswer) -> JSONResponse:
    return JSONResponse(answer.body, answer.status, answer.headers)


def too_many_guesses(seconds: float) -> HTTPAnswer:
    message = "too many wrong API keys from this client: wait before trying again"
    body = error(message, "rate_limit_error", code="too_many_wrong_keys")
    return HTTPAnswer(429, body, retry_after(seconds))


def client_of(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class Guard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            denied = self._check(scope)
            if denied is not None:
                await denied(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _check(scope: Scope) -> Response | None:
        replica = replica_of(scope["app"])
        settings, guesses, tenants = replica.settings, replica.guesses, replica.tenants
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        if settings.serve.auth and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIX):
            scheme, _, key = headers.get("authorization", "").partition(" ")
            client = client_of(scope)
            if scheme.lower() == "bearer" and key:
                wait = guesses.retry_after(client)
                if wait is not None:
                    return json_answer(too_many_guesses(wait))
                holder = tenants.by_key(key)
                if holder is not None:
                    guesses.succeeded(client)
                    scope.setdefault("state", {})["tenant"] = holder.tenant
                    return Guard._size(headers, settings)
                guesses.failed(client)
            holder = tenants.by_session(headers.get("cookie", ""))
            if holder is not None:
                if scope["method"] not in ("GET", "HEAD") and PAGE_HEADER not in headers:
                    message = f"a change made with the page's session must send {PAGE_HEADER}"
                    return json_answer(HTTPAnswer(403, error(message, "invalid_request_error")))
                scope.setdefault("state", {})["tenant"] = holder.tenant
                return Guard._size(headers, settings)
            if path == "/":
                return HTMLResponse(login_page(), 401, SECURITY_HEADERS)
            message = "missing or invalid API key: send Authorization: Bearer <key>"
            body = error(message, "invalid_request_error", code="invalid_api_key")
            return json_answer(HTTPAnswer(401, body, {"WWW-Authenticate": "Bearer"}))
        return Guard._size(headers, settings)

    @staticmethod
    def _size(headers: dict[str, str], settings: Settings) -> Response | None:
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > settings.serve.max_body_bytes:
            message = f"request body of {length} bytes is over the {settings.serve.max_body_bytes}"
            return json_answer(
                HTTPAnswer(413, error(message + " allowed", "invalid_request_error"))
            )
        return None


def not_allowed(scope: Scope) -> HTTPAnswer:
    """The 405 for a request whose path exists but not with its method, ``Allow`` naming
    every method of that path. Worked out only when the router has found no route for
    the method (its HTTPException), not on every request."""
    allowed: set[str] = set()
    for route in _routes(scope["app"].router):
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            allowed |= getattr(route, "methods", None) or set()
    listed = ", ".join(sorted(allowed))
    message = f"{scope['method']} is not allowed here; allowed: {listed}"
    body = error(message, "invalid_request_error", code="method_not_allowed")
    return HTTPAnswer(405, body, {"Allow": listed})


def _routes(router: Any) -> Iterator[BaseRoute]:
    """Every route of ``router``, also those FastAPI keeps under an included router's node
    (as Serve's class ingress includes the deployment's routes)."""
    for route in router.routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included)
        else:
            yield route


async def tenant_asking(request: Request) -> Tenant | None:
    """The tenant whose key the request showed (None with ``serve.auth`` off)."""
    tenant: Tenant | None = getattr(request.state, "tenant", None)
    return tenant


def check_model(tenant: Tenant | None, model: str) -> None:
    """Refuse a model ``tenant`` may not call with the 404 of a model that does not exist."""
    if not may_use(tenant, model):
        body = error(
            no_such_model(model), "invalid_request_error", param="model", code="model_not_found"
        )
        raise Refused(HTTPAnswer(404, body))


TenantAsking = Annotated[Tenant | None, Depends(tenant_asking)]


async def tenants_job(job_id: str, tenant: TenantAsking, replica: ThisReplica) -> SubmittedJob:
    """The pipeline job ``job_id``, if it is the asking tenant's to see (a key that sees
    all sees every tenant's)."""
    folder = replica.settings.serve.results_dir
    job = SubmittedJob.find(folder, job_id, jobs_owner(tenant))
    if job is None:
        message = f"no pipeline job {job_id!r}"
        raise Refused(
            HTTPAnswer(404, error(message, "invalid_request_error", code="job_not_found"))
        )
    return job


async def manager_present(replica: ThisReplica) -> ManagerClient:
    """The cluster's manager; without one (``queue.enabled`` false), no route reads the queue."""
    if replica.manager is None:
        message = "queue.enabled is false: there is no queue"
        raise Refused(HTTPAnswer(404, error(message, "invalid_request_error")))
    return replica.manager


TenantsJob = Annotated[SubmittedJob, Depends(tenants_job)]
PresentManager = Annotated[ManagerClient, Depends(manager_present)]
