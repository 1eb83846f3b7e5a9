"""The Ray Serve HTTP endpoint: OpenAI's chat completions API in front of raygate.

    serve run serve.app:build [config=raygate.yaml]

Each request takes a slot of its model's group from the cluster's manager,
like every other caller: the endpoint limits nothing itself. The replica
calls the backend itself when it can reach it (a remote API, or a loopback
server on the replica's own node), else hands the call to the group's
provider actor (see :mod:`providers.inprocess`). Its replicas take every
request at once (``serve.max_ongoing_requests``) so that each waits in the
manager's queue, where priority decides, not in Serve's own, first come
first served. A client that hangs up cancels its call: Serve cancels the
handler, which cancels the call, which leaves the queue or gives its slot
back.

Routes: ``POST /v1/chat/completions`` (JSON or SSE stream), ``GET /v1/models``,
``GET /v1/queue``, ``GET /v1/queue/{request_id}``, ``GET /healthz``,
``GET /readyz``; pipeline jobs: ``POST /v1/pipelines``, ``GET
/v1/pipelines/{id}`` and ``/results``, ``DELETE /v1/pipelines/{id}`` (each run
is an actor of its own, see :mod:`pipelines.submitted`, so it outlives the replica);
the queue page: ``GET /``, its stream ``GET /v1/queue/events``, ``POST /login``
and ``GET /static/{name}`` (see :mod:`serve.page`). Every route but the two
health checks, the login and the page's static files needs ``Authorization:
Bearer <key>`` with a key of a tenant, or the page's session cookie (see
:mod:`serve.guard`). The key's tenant (see :mod:`serve.tenants`) decides the
request's flow, weight, priority ceiling, models and quota (see
:mod:`serve.quota`), and whose pipeline runs it sees. Every error is answered
in OpenAI's error shape, and the OpenAPI document (``/openapi.json``) names
each status a route may answer.

No ``from __future__ import annotations`` here: FastAPI reads the handlers'
annotations, which Serve's class ingress leaves unresolved when they are strings.
For the same reason, whatever the handlers use is defined before the class.
"""

import asyncio
import json
import logging
import math
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from functools import partial

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException

from actors.client import ManagerClient
from actors.errors import ConfigError, RaygateError
from actors.options import CallOptions
from actors.settings import Settings, load_settings
from actors.waitqueue import check_priority
from pipelines.plateau import Service, read_services
from pipelines.submitted import PipelineJobClient
from providers.client import ChatProvider
from providers.errors import ProviderActorLost
from providers.gated import GatedProvider
from providers.inprocess import provider_in_reach
from providers.llamacpp import EMBEDDED_MODEL_ID, EMBEDDED_MODELS
from providers.models import StreamDelta, Usage
from providers.pool import PooledProvider
from serve.errors import HTTPAnswer, answer_for, documented, invalid, retry_after
from serve.guard import Guard, client_of, json_answer, not_allowed
from serve.keyguesses import KeyGuesses
from serve.page import (
    ASSETS,
    SECURITY_HEADERS,
    asset,
    login_page,
    queue_events,
    session_cookie,
    session_token,
)
from serve.quota import OverQuota, TenantQuotas
from serve.tenants import (
    Tenant,
    Tenants,
    asking,
    may_use,
    no_such_model,
    sees,
    served_priority,
    stats_seen_by,
    view_seen_by,
)
from serve.wire import (
    ChatCompletionBody,
    PipelineSubmission,
    chunk,
    completion,
    error,
    model_object,
    usage_chunk,
    wants_cache,
)

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 5.0


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


api = FastAPI(title="raygate", summary="OpenAI-compatible chat completions, gated by raygate")
api.add_middleware(Guard)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Malformed JSON or a bad field: 422 in OpenAI's shape, naming the field."""
    return json_answer(invalid(exc.errors()))


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own answers (a body that is not JSON, a path that does not exist, a
    method the path does not take) in OpenAI's shape, like every other error."""
    if exc.status_code == 405:
        return json_answer(not_allowed(request.scope))
    kind = "invalid_request_error" if exc.status_code < 500 else "api_error"
    body = error(str(exc.detail), kind)
    return json_answer(HTTPAnswer(exc.status_code, body, dict(exc.headers or {})))


def invalid_header() -> HTTPAnswer:
    message = "X-Priority must be an integer 1..10 and X-Queue-Timeout a positive number of seconds"
    return HTTPAnswer(422, error(message, "invalid_request_error", param="headers"))


def model_not_found(model: str) -> HTTPAnswer:
    body = error(
        no_such_model(model), "invalid_request_error", param="model", code="model_not_found"
    )
    return HTTPAnswer(404, body)


def tenant_of(request: Request) -> Tenant | None:
    """The tenant whose key the request showed (None with ``serve.auth`` off)."""
    tenant: Tenant | None = getattr(request.state, "tenant", None)
    return tenant


def over_quota(tenant: Tenant, over: OverQuota) -> HTTPAnswer:
    body = error(over.message(tenant.name), "rate_limit_error", code="tenant_quota_exceeded")
    return HTTPAnswer(429, body, retry_after(over.retry_after))


def owner_of(tenant: Tenant | None) -> str:
    """Whose pipeline runs a request sees: its tenant's, or everyone's without tenants."""
    return tenant.name if tenant is not None else ""


def no_queue() -> HTTPAnswer:
    message = "queue.enabled is false: there is no queue"
    return HTTPAnswer(404, error(message, "invalid_request_error"))


def no_job(job_id: str) -> HTTPAnswer:
    message = f"no pipeline job {job_id!r} (unknown, or ended longer ago than it is kept)"
    return HTTPAnswer(404, error(message, "invalid_request_error", code="job_not_found"))


def read_input(settings: Settings, name: str) -> list[Service] | HTTPAnswer:
    """The services of a JSONL file under ``serve.data_dir``, or the answer that says why
    not: 404 if there is no such file there, 422 if it lists no valid services."""

    def refused(why: str) -> HTTPAnswer:
        return HTTPAnswer(422, error(why, "invalid_request_error", param="file"))

    def not_found(why: str) -> HTTPAnswer:
        body = error(why, "invalid_request_error", param="file", code="file_not_found")
        return HTTPAnswer(404, body)

    folder = settings.serve.data_dir
    if folder is None:
        return not_found("serve.data_dir is not set: send the services inline")
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        return not_found(f"{name!r} is outside the data folder")
    if not path.is_file():
        return not_found(f"no file {name!r} in the data folder")
    services, problems = read_services(path.read_text(encoding="utf-8").splitlines())
    if problems:
        return refused(f"{name}: " + "; ".join(problems[:10]))
    if not services:
        return refused(f"{name} lists no services")
    return services


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


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Gateway:
    def __init__(self, settings: Settings) -> None:
        check_keys(settings)
        if not settings.serve.auth:
            log.warning("serve.auth is false: every route answers without an API key")
        api.state.settings = settings
        self._tenants = api.state.tenants = Tenants(settings.serve)
        self._quotas = TenantQuotas(settings.serve.replicas)
        serving = settings.serve
        self._guesses = api.state.guesses = KeyGuesses(
            serving.auth_failure_limit, serving.auth_failure_window_seconds
        )
        self._settings = settings
        self._manager = ManagerClient.create(settings) if settings.queue.enabled else None
        # model id -> its provider and the name its backend knows the model by; found
        # once for all the requests that arrive meanwhile, and forgotten if that failed.
        self._providers: dict[str, asyncio.Future[tuple[ChatProvider, str]]] = {}

    async def _provider(self, model: str) -> tuple[ChatProvider, str]:
        found = self._providers.get(model)
        if found is None:
            found = asyncio.ensure_future(provider_in_reach(self._settings, model, self._manager))
            self._providers[model] = found
        try:
            return await asyncio.shield(found)
        except Exception:
            if self._providers.get(model) is found:
                del self._providers[model]
            raise

    async def __del__(self) -> None:
        """Serve calls this as the replica stops: close the connections it opened."""
        for found in self._providers.values():
            if found.done() and not found.cancelled() and found.exception() is None:
                provider, _ = found.result()
                if isinstance(provider, GatedProvider | PooledProvider):
                    await provider.aclose()

    @api.post(
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
        self, body: ChatCompletionBody, request: Request
    ) -> JSONResponse | StreamingResponse:
        tenant = tenant_of(request)
        if not may_use(tenant, body.model):
            return json_answer(model_not_found(body.model))
        try:
            options = self._options(request, body, tenant)
        except RaygateError as exc:
            return json_answer(answer_for(exc))
        except ValueError:
            return json_answer(invalid_header())
        if tenant is not None:
            over = self._quotas.admit(tenant.name, tenant.settings)
            if over is not None:
                return json_answer(over_quota(tenant, over))
        headers = {"X-Request-Id": options.request_id or "", "X-Priority": str(options.priority)}
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        ended = partial(self._answered, tenant)
        used: Usage | None = None
        streaming = False
        try:
            provider, backend_model = await self._provider(body.model)
            chat = body.chat_request(backend_model)
            if not body.stream:
                response = await provider.chat(chat, options)
                used = response.usage
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
                self._providers.pop(body.model, None)  # the next request gets a new actor
            answer = answer_for(exc)
            return JSONResponse(answer.body, answer.status, {**answer.headers, **headers})
        finally:
            if not streaming:
                ended(used)
        usage = body.stream_options is not None and body.stream_options.include_usage
        events = _sse(first, pieces, body.model, completion_id, usage=usage, ended=ended)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    def _answered(self, tenant: Tenant | None, usage: Usage | None) -> None:
        """A request ended: its tenant's quota counts its tokens and frees its place."""
        if tenant is not None:
            tokens = usage.input_tokens + usage.output_tokens if usage is not None else 0
            self._quotas.answered(tenant.name, tokens)

    def _options(
        self, request: Request, body: ChatCompletionBody, tenant: Tenant | None
    ) -> CallOptions:
        """Priority from the body or ``X-Priority`` (else the tenant's default, never above
        its ceiling); ``X-Queue-Timeout``, ``X-Request-Id``; the tenant as the flow; the
        response cache if ``serve.cache``, unless ``Cache-Control`` says no; the model's
        fallbacks unless ``X-Fallback: off`` or the body's ``fallbacks: []``."""
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
            queue_timeout=seconds,
            cache=wants_cache(request.headers.get("cache-control"), self._settings.serve.cache),
            fallbacks=body.fallbacks != [] and request.headers.get("x-fallback") != "off",
        )

    @api.post(
        "/v1/pipelines", status_code=202, response_model=None, responses=documented(400, 404, 422)
    )
    async def submit_pipeline(
        self, submission: PipelineSubmission, request: Request
    ) -> dict[str, object] | JSONResponse:
        """Start a run of the plateau job; its id names it from then on. It runs at the
        priority asked for, or the tenant's default, never above the tenant's ceiling."""
        tenant = tenant_of(request)
        model = self._settings.pipeline.model or EMBEDDED_MODEL_ID
        if not may_use(tenant, model):
            return json_answer(model_not_found(model))
        services = submission.services
        if services is None:
            read = read_input(self._settings, submission.file or "")
            if isinstance(read, HTTPAnswer):
                return json_answer(read)
            services = read
        job_id = uuid.uuid4().hex[:12]
        run = asking(tenant, served_priority(tenant, submission.priority))
        job = PipelineJobClient.submit(
            job_id, services, self._settings, self._manager, run, owner_of(tenant)
        )
        return (await job.status()).model_dump(mode="json")

    @api.get("/v1/pipelines/{job_id}", response_model=None, responses=documented(404, 422))
    async def pipeline_status(
        self, job_id: str, request: Request
    ) -> dict[str, object] | JSONResponse:
        """A run's state and progress (404 for another tenant's run)."""
        job = PipelineJobClient.find(job_id, owner_of(tenant_of(request)))
        if job is None:
            return json_answer(no_job(job_id))
        return (await job.status()).model_dump(mode="json")

    @api.get(
        "/v1/pipelines/{job_id}/results",
        response_model=None,
        responses={
            200: {
                "description": "The records written so far, one JSON line each.",
                "content": {"application/x-ndjson": {}},
            },
            **documented(404, 422),
        },
    )
    async def pipeline_results(
        self, job_id: str, request: Request
    ) -> StreamingResponse | JSONResponse:
        """The records written so far, one JSON line each."""
        job = PipelineJobClient.find(job_id, owner_of(tenant_of(request)))
        if job is None:
            return json_answer(no_job(job_id))
        records = await job.records()
        lines = (record.model_dump_json() + "\n" for record in records)
        return StreamingResponse(lines, media_type="application/x-ndjson")

    @api.delete("/v1/pipelines/{job_id}", response_model=None, responses=documented(404, 422))
    async def cancel_pipeline(
        self, job_id: str, request: Request
    ) -> dict[str, object] | JSONResponse:
        """Cancel a running run: its waiters leave the queue, its calls are cancelled."""
        job = PipelineJobClient.find(job_id, owner_of(tenant_of(request)))
        if job is None:
            return json_answer(no_job(job_id))
        return (await job.cancel()).model_dump(mode="json")

    @api.get("/v1/models", responses=documented())
    async def models(self, request: Request) -> dict[str, object]:
        """The models this key's tenant may call, each with its servers and fallbacks (see
        serve.wire.model_object)."""
        tenant = tenant_of(request)
        groups = None if self._manager is None else (await self._manager.stats()).groups
        models = self._settings.models
        embedded = [model.id for model in EMBEDDED_MODELS.values() if model.installed]
        every = [*models, *embedded]
        listed = [model_object(i, models.get(i), groups) for i in every if may_use(tenant, i)]
        return {"object": "list", "data": listed}

    @api.get("/v1/queue", response_model=None, responses=documented(404))
    async def queue(self, request: Request) -> dict[str, object] | JSONResponse:
        """The queue's stats, as this key's tenant may see them (see serve.tenants)."""
        if self._manager is None:
            return json_answer(no_queue())
        stats = stats_seen_by(tenant_of(request), await self._manager.stats())
        return stats.model_dump(mode="json", by_alias=True)

    @api.get("/v1/queue/events", include_in_schema=False, response_model=None)
    async def queue_stream(self, request: Request) -> StreamingResponse | JSONResponse:
        """The queue page's stream of server-sent events (see :mod:`serve.page`). Declared
        before ``/v1/queue/{request_id}``, which would take "events" for a request id."""
        if self._manager is None:
            return json_answer(no_queue())
        return StreamingResponse(
            queue_events(
                self._manager,
                owner_of(tenant_of(request)),
                partial(view_seen_by, tenant_of(request)),
            ),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @api.get("/v1/queue/{request_id}", response_model=None, responses=documented(404, 422))
    async def position(self, request: Request, request_id: str) -> dict[str, object] | JSONResponse:
        """Where a waiting request stands (404 for another tenant's, as for one not
        waiting, unless this key's tenant sees all)."""
        if self._manager is None:
            return json_answer(no_queue())
        position = await self._manager.position(request_id)
        tenant = tenant_of(request)
        if position is None or not sees(tenant, position.flow):
            message = f"request {request_id!r} is not waiting (granted, finished or unknown)"
            return JSONResponse(error(message, "invalid_request_error", code="not_waiting"), 404)
        return position.model_dump(mode="json", by_alias=True)

    @api.get("/", include_in_schema=False)
    async def page(self) -> HTMLResponse:
        """The live queue page (see :mod:`serve.page`)."""
        return HTMLResponse(asset("index.html"), headers=SECURITY_HEADERS)

    @api.get("/static/{name}", include_in_schema=False, response_model=None)
    async def static(self, name: str) -> Response | JSONResponse:
        if name not in ASSETS:
            return JSONResponse(error(f"no file {name!r}", "invalid_request_error"), 404)
        return Response(asset(name), media_type=ASSETS[name], headers=SECURITY_HEADERS)

    @api.post("/login", include_in_schema=False, response_model=None)
    async def login(self, request: Request) -> Response:
        """The page's login form: a valid key gets the session cookie and the page."""
        client = client_of(request.scope)
        wait = self._guesses.retry_after(client)
        if wait is not None:
            problem = "Too many wrong keys: wait a minute before trying again."
            headers = {**SECURITY_HEADERS, **retry_after(wait)}
            return HTMLResponse(login_page(problem), 429, headers)
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        holder = self._tenants.by_key(form.get("key", [""])[0])
        if holder is not None:
            self._guesses.succeeded(client)
            https = "https" in (request.url.scheme, request.headers.get("x-forwarded-proto"))
            cookie = session_cookie(session_token(holder.key), secure=https)
            return Response(status_code=303, headers={"Location": "/", "Set-Cookie": cookie})
        self._guesses.failed(client)
        problem = "No such key: use one of the server's keys."
        return HTMLResponse(login_page(problem), 401, SECURITY_HEADERS)

    @api.get("/healthz", responses=documented(guarded=False))
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", response_model=None, responses=documented(503, guarded=False))
    async def readyz(self) -> dict[str, str] | JSONResponse:
        if self._manager is not None:
            try:
                await asyncio.wait_for(self._manager.stats(), READY_TIMEOUT_SECONDS)
            except Exception as exc:
                message = f"the manager does not answer: {type(exc).__name__}"
                return JSONResponse(error(message, "api_error"), 503, retry_after(None))
        return {"status": "ready"}


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
