"""Pipeline jobs over HTTP: ``POST /v1/pipelines`` starts a run of the plateau job,
``GET /v1/pipelines`` lists them, ``GET /v1/pipelines/{id}``, ``/results`` and
``/transcript`` read one, ``POST .../retry`` runs again what it did not finish,
``DELETE`` cancels it.

Each run is an actor of its own (see :mod:`pipelines.submitted`), so it outlives
the replica that started it, and each job has its record under
``serve.results_dir`` (see :mod:`pipelines.jobrecords`), so it outlives its
actor. A job is its tenant's: another tenant's key gets the 404 of an unknown
job, a key that sees all sees every one (see :data:`serve.guard.TenantsJob`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from actors.settings import Settings
from pipelines.errors import JobNotRetried
from pipelines.plateau import Service, read_services
from pipelines.submitted import SubmittedJob
from providers.llamacpp import EMBEDDED_MODEL_ID
from serve.errors import HTTPAnswer, Refused, documented, retry_after
from serve.guard import TenantAsking, TenantsJob, check_model
from serve.replica import ThisReplica
from serve.tenants import Tenant, asking, jobs_owner, owner_of, served_priority
from serve.wire import PipelineSubmission, error

router = APIRouter()


@router.post(
    "/v1/pipelines", status_code=202, response_model=None, responses=documented(400, 404, 422)
)
async def submit_pipeline(
    submission: PipelineSubmission, tenant: TenantAsking, replica: ThisReplica
) -> dict[str, object]:
    """Start a run of the plateau job; its id names it from then on. It runs at the
    priority asked for, or the tenant's default, never above the tenant's ceiling; over
    the tenant's ``max_jobs`` running at once: 429."""
    settings = replica.settings
    check_model(tenant, settings.pipeline.model or EMBEDDED_MODEL_ID)
    services = submission.services
    if services is None:
        services = read_input(settings, submission.file or "")
    await check_running(tenant, settings)
    job_id = uuid.uuid4().hex[:12]
    run = asking(tenant, served_priority(tenant, submission.priority))
    folder = settings.serve.results_dir
    job = SubmittedJob.submit(
        folder, job_id, services, settings, replica.manager, run, owner_of(tenant)
    )
    return (await job.status()).model_dump(mode="json")


@router.get("/v1/pipelines", response_model=None, responses=documented(422))
async def list_pipelines(
    tenant: TenantAsking,
    replica: ThisReplica,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="The last id of the page before.")] = None,
) -> dict[str, object]:
    """The jobs this key's tenant may see (every tenant's for a key that sees all), the
    newest first, ``limit`` a page, the next page after the id of this one's last."""
    jobs = SubmittedJob.all(replica.settings.serve.results_dir, jobs_owner(tenant))
    ids = [job.record.status.id for job in jobs]
    start = ids.index(after) + 1 if after in ids else 0
    page = jobs[start : start + limit]
    statuses = await asyncio.gather(*(job.status() for job in page))
    return {
        "object": "list",
        "data": [status.model_dump(mode="json") for status in statuses],
        "has_more": start + limit < len(jobs),
    }


@router.get("/v1/pipelines/{job_id}", response_model=None, responses=documented(404, 422))
async def pipeline_status(job: TenantsJob) -> dict[str, object]:
    """A job's state and progress (404 for another tenant's job); a job whose actor is
    gone answers from its record, "failed" with the cause if it had not ended."""
    return (await job.status()).model_dump(mode="json")


def _lines(description: str) -> dict[int | str, dict[str, object]]:
    """The answers of a route of JSON lines: 200 with ``description``, 404 and 422."""
    lines: dict[str, object] = {"description": description, "content": {"application/x-ndjson": {}}}
    return {200: lines, **documented(404, 422)}


def _streamed(items: Iterable[BaseModel]) -> StreamingResponse:
    lines = (item.model_dump_json() + "\n" for item in items)
    return StreamingResponse(lines, media_type="application/x-ndjson")


@router.get(
    "/v1/pipelines/{job_id}/results",
    response_model=None,
    responses=_lines("The records written so far, one JSON line each."),
)
async def pipeline_results(job: TenantsJob) -> StreamingResponse:
    """The records written so far, one JSON line each."""
    return _streamed(job.records())


@router.get(
    "/v1/pipelines/{job_id}/transcript",
    response_model=None,
    responses=_lines(
        "One JSON line for each backend call that ended so far (none unless "
        "pipeline.transcripts is on)."
    ),
)
async def pipeline_transcript(job: TenantsJob) -> StreamingResponse:
    """The run's calls that ended so far, one JSON line each (see pipelines.transcripts)."""
    return _streamed(job.transcript())


@router.post(
    "/v1/pipelines/{job_id}/retry",
    status_code=202,
    response_model=None,
    responses=documented(404, 409, 422),
)
async def retry_pipeline(
    job: TenantsJob, tenant: TenantAsking, replica: ThisReplica
) -> dict[str, object]:
    """Run again the services the job did not finish (failed, or never ended), keeping
    the finished ones' records; 409 while it runs, or when every service finished."""
    await check_running(tenant, replica.settings)
    try:
        again = await job.retry(replica.settings, replica.manager)
    except JobNotRetried as exc:
        body = error(str(exc), "invalid_request_error", code="job_not_retried")
        raise Refused(HTTPAnswer(409, body)) from exc
    return (await again.status()).model_dump(mode="json")


@router.delete("/v1/pipelines/{job_id}", response_model=None, responses=documented(404, 422))
async def cancel_pipeline(job: TenantsJob) -> dict[str, object]:
    """Cancel a running job: its waiters leave the queue, its calls are cancelled."""
    return (await job.cancel()).model_dump(mode="json")


async def check_running(tenant: Tenant | None, settings: Settings) -> None:
    """429 if the tenant runs its ``max_jobs`` already; Retry-After: when the first of
    them is estimated to end."""
    most = None if tenant is None else tenant.settings.max_jobs
    if most is None:
        return
    jobs = SubmittedJob.all(settings.serve.results_dir, owner_of(tenant))
    running = [s for s in await asyncio.gather(*(j.status() for j in jobs)) if s.state == "running"]
    if len(running) >= most:
        ends = [s.estimated_completion_at for s in running if s.estimated_completion_at]
        message = f"{len(running)} pipeline jobs of this tenant run already (max_jobs {most})"
        body = error(message, "rate_limit_error", code="too_many_jobs")
        wait = min(ends) - time.time() if ends else None
        raise Refused(HTTPAnswer(429, body, retry_after(wait)))


class NoInput(Exception):
    """An input file a job cannot take: ``missing`` (no such file there), else unusable."""

    def __init__(self, why: str, *, missing: bool) -> None:
        super().__init__(why)
        self.why = why
        self.missing = missing


def input_services(settings: Settings, name: str) -> list[Service]:
    """The services of a JSONL file under ``serve.data_dir``; NoInput if there is no such
    file there, or it lists no valid services."""
    folder = settings.serve.data_dir
    if folder is None:
        raise NoInput("serve.data_dir is not set: send the services inline", missing=True)
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise NoInput(f"{name!r} is outside the data folder", missing=True)
    if not path.is_file():
        raise NoInput(f"no file {name!r} in the data folder", missing=True)
    services, problems = read_services(path.read_text(encoding="utf-8").splitlines())
    if problems:
        raise NoInput(f"{name}: " + "; ".join(problems[:10]), missing=False)
    if not services:
        raise NoInput(f"{name} lists no services", missing=False)
    return services


def read_input(settings: Settings, name: str) -> list[Service]:
    """:func:`input_services`, else the request is refused: 404 if there is no such file
    there, 422 if it lists no valid services."""
    try:
        return input_services(settings, name)
    except NoInput as exc:
        if exc.missing:
            body = error(exc.why, "invalid_request_error", param="file", code="file_not_found")
            raise Refused(HTTPAnswer(404, body)) from None
        body = error(exc.why, "invalid_request_error", param="file")
        raise Refused(HTTPAnswer(422, body)) from None
