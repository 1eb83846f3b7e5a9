"""``GET /healthz`` (the replica answers) and ``GET /readyz`` (and so does the
manager): for a load balancer, open to anyone (see :mod:`serve.guard`)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve.errors import documented, retry_after
from serve.replica import ThisReplica
from serve.wire import error

READY_TIMEOUT_SECONDS = 5.0

router = APIRouter()


@router.get("/healthz", responses=documented(guarded=False))
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None, responses=documented(503, guarded=False))
async def readyz(replica: ThisReplica) -> dict[str, str] | JSONResponse:
    if replica.manager is not None:
        try:
            await asyncio.wait_for(replica.manager.stats(), READY_TIMEOUT_SECONDS)
        except Exception as exc:
            message = f"the manager does not answer: {type(exc).__name__}"
            return JSONResponse(error(message, "api_error"), 503, retry_after(None))
    return {"status": "ready"}
