"""The Ray Serve HTTP endpoint: OpenAI's chat completions API in front of raygate.

    serve run serve.app:build [config=raygate.yaml]

Each request takes a slot of its model's group from the cluster's manager,
like every other caller: the endpoint limits nothing itself. The replica
calls the backend itself when it can reach it (a remote API, or a loopback
server on the replica's own node), else hands the call to the group's
provider actor (see :mod:`providers.routing`). Its replicas take every
request at once (``serve.max_ongoing_requests``) so that each waits in the
manager's queue, where priority decides, not in Serve's own, first come
first served.

Routes, one router each: ``POST /v1/chat/completions`` (:mod:`serve.chat`);
pipeline jobs, ``POST`` and ``GET /v1/pipelines``, ``GET /v1/pipelines/{id}``,
``/results`` and ``/transcript``, ``POST /v1/pipelines/{id}/retry``, ``DELETE
/v1/pipelines/{id}`` (:mod:`serve.jobs`); ``GET /v1/schedules``
(:mod:`serve.schedules`); ``GET /v1/models`` and ``GET /v1/models/{id}``
(:mod:`serve.models`); ``GET /v1/queue``, ``GET
/v1/queue/{request_id}`` and the queue page, ``GET /``, its stream ``GET
/v1/queue/events``, ``POST /login`` and ``GET /static/{name}``
(:mod:`serve.queue`); ``GET /healthz`` and ``GET /readyz`` (:mod:`serve.health`).
Every route but
the two health checks, the login and the page's static files needs
``Authorization: Bearer <key>`` with a key of a tenant, or the page's session
cookie (see :mod:`serve.guard`). The key's tenant (see :mod:`serve.tenants`)
decides the request's flow, weight, priority ceiling, models and quota (see
:mod:`serve.quota`), and whose pipeline runs it sees. Every error is answered
in OpenAI's error shape, and the OpenAPI document (``/openapi.json``) names
each status a route may answer.

Each replica builds its own app around its own state (:class:`serve.replica.Replica`),
which the routes reach as a dependency: nothing a replica keeps is a global.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from actors.errors import ConfigError
from actors.settings import Settings, load_settings
from serve import chat, health, jobs, models, queue, schedules
from serve.errors import HTTPAnswer, Refused, invalid
from serve.guard import Guard, json_answer, not_allowed
from serve.replica import Replica
from serve.schedules import scheduler
from serve.wire import error

log = logging.getLogger(__name__)


def check_keys(settings: Settings) -> None:
    """Refuse to serve with auth on and no key to check it against."""
    if settings.serve.auth and not settings.serve.tenant_list():
        raise ConfigError(
            "serve settings",
            (
                "serve.api_keys is empty and there are no serve.tenants: set "
                "RAYGATE_SERVE__API_KEYS='[\"<key>\"]', name tenants, or "
                "serve.auth: false to serve without keys",
            ),
        )


async def _refused(request: Request, exc: Refused) -> JSONResponse:
    """A request turned away before its route's work began: its answer as it is."""
    return json_answer(exc.answer)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Malformed JSON or a bad field: 422 in OpenAI's shape, naming the field."""
    return json_answer(invalid(exc.errors()))


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own answers (a body that is not JSON, a path that does not exist, a
    method the path does not take) in OpenAI's shape, like every other error."""
    if exc.status_code == 405:
        return json_answer(not_allowed(request.scope))
    kind = "invalid_request_error" if exc.status_code < 500 else "api_error"
    body = error(str(exc.detail), kind)
    return json_answer(HTTPAnswer(exc.status_code, body, dict(exc.headers or {})))


def gateway_api(replica: Replica) -> FastAPI:
    """The endpoint's app, serving from ``replica``'s state."""
    api = FastAPI(
        title="raygate",
        summary="OpenAI-compatible chat completions, gated by raygate",
        middleware=[Middleware(Guard)],
        exception_handlers={
            Refused: _refused,
            RequestValidationError: _invalid_request,
            HTTPException: _http_error,
        },
    )
    api.state.replica = replica
    for routes in (chat, jobs, models, queue, schedules, health):
        api.include_router(routes.router)
    return api


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Gateway:
    def __init__(self, settings: Settings) -> None:
        check_keys(settings)
        if not settings.serve.auth:
            log.warning("serve.auth is false: every route answers without an API key")
        self._replica = Replica(settings)
        if settings.serve.schedules:
            self._replica.scheduler = scheduler(settings)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve asks for the replica's app once this replica is made. The app is built
        here rather than handed to ``serve.ingress``: Serve would send that one to the
        replica as a copy, which the replica's state could not reach."""
        return gateway_api(self._replica)

    async def __del__(self) -> None:
        """Serve calls this as the replica stops: close the connections it opened."""
        await self._replica.aclose()


def build(args: dict[str, str]) -> Application:
    """``serve run serve.app:build [config=PATH]``: the settings from PATH, else from
    ``$RAYGATE_CONFIG`` and the environment."""
    return application(load_settings(args.get("config")))


def application(settings: Settings) -> Application:
    check_keys(settings)
    return Gateway.options(  # type: ignore[attr-defined]
        num_replicas=settings.serve.replicas,
        max_ongoing_requests=settings.serve.max_ongoing_requests,
    ).bind(settings)
