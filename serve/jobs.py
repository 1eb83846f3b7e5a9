"""Pipeline jobs over HTTP: ``POST /v1/pipelines`` starts a run of the plateau job,
``GET /v1/pipelines/{id}``, ``/results`` and ``/transcript`` read it, ``DELETE``
cancels it.

Each run is an actor of its own (see :mod:`pipelines.submitted`), so it outlives
the replica that started it. A run is its tenant's: another tenant's key gets
the 404 of an unknown run (see :data:`serve.guard.TenantsJob`).
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from actors.settings import Settings
from pipelines.plateau import Service, read_services
from pipelines.submitted import PipelineJobClient
from providers.llamacpp import EMBEDDED_MODEL_ID
from serve.errors import HTTPAnswer, Refused, documented
from serve.guard import TenantAsking, TenantsJob, check_model
from serve.replica import ThisReplica
from serve.tenants import asking, owner_of, served_priority
from serve.wire import PipelineSubmission, error

router = APIRouter()


@router.post(
    "/v1/pipelines", status_code=202, response_model=None, responses=documented(400, 404, 422)
)
async def submit_pipeline(
    submission: PipelineSubmission, tenant: TenantAsking, replica: ThisReplica
) -> dict[str, object]:
    """Start a run of the plateau job; its id names it from then on. It runs at the
    priority asked for, or the tenant's default, never above the tenant's ceiling."""
    settings = replica.settings
    check_model(tenant, settings.pipeline.model or EMBEDDED_MODEL_ID)
    services = submission.services
    if services is None:
        services = read_input(settings, submission.file or "")
    job_id = uuid.uuid4().hex[:12]
    run = asking(tenant, served_priority(tenant, submission.priority))
    job = PipelineJobClient.submit(
        job_id, services, settings, replica.manager, run, owner_of(tenant)
    )
    return (await job.status()).model_dump(mode="json")


@router.get("/v1/pipelines/{job_id}", response_model=None, responses=documented(404, 422))
async def pipeline_status(job: TenantsJob) -> dict[str, object]:
    """A run's state and progress (404 for another tenant's run)."""
    return (await job.status()).model_dump(mode="json")


@router.get(
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
async def pipeline_results(job: TenantsJob) -> StreamingResponse:
    """The records written so far, one JSON line each."""
    records = await job.records()
    lines = (record.model_dump_json() + "\n" for record in records)
    return StreamingResponse(lines, media_type="application/x-ndjson")


@router.get(
    "/v1/pipelines/{job_id}/transcript",
    response_model=None,
    responses={
        200: {
            "description": "One JSON line for each backend call that ended so far (none "
            "unless pipeline.transcripts is on).",
            "content": {"application/x-ndjson": {}},
        },
        **documented(404, 422),
    },
)
async def pipeline_transcript(job: TenantsJob) -> StreamingResponse:
    """The run's calls that ended so far, one JSON line each (see pipelines.transcripts)."""
    lines = (line.model_dump_json() + "\n" for line in await job.transcript())
    return StreamingResponse(lines, media_type="application/x-ndjson")


@router.delete("/v1/pipelines/{job_id}", response_model=None, responses=documented(404, 422))
async def cancel_pipeline(job: TenantsJob) -> dict[str, object]:
    """Cancel a running run: its waiters leave the queue, its calls are cancelled."""
    return (await job.cancel()).model_dump(mode="json")


def read_input(settings: Settings, name: str) -> list[Service]:
    """The services of a JSONL file under ``serve.data_dir``; else the request is refused,
    404 if there is no such file there, 422 if it lists no valid services."""

    def not_found(why: str) -> Refused:
        body = error(why, "invalid_request_error", param="file", code="file_not_found")
        return Refused(HTTPAnswer(404, body))

    def unusable(why: str) -> Refused:
        return Refused(HTTPAnswer(422, error(why, "invalid_request_error", param="file")))

    folder = settings.serve.data_dir
    if folder is None:
        raise not_found("serve.data_dir is not set: send the services inline")
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise not_found(f"{name!r} is outside the data folder")
    if not path.is_file():
        raise not_found(f"no file {name!r} in the data folder")
    services, problems = read_services(path.read_text(encoding="utf-8").splitlines())
    if problems:
        raise unusable(f"{name}: " + "; ".join(problems[:10]))
    if not services:
        raise unusable(f"{name} lists no services")
    return services
