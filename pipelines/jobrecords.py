"""What lasts of a pipeline job submitted over HTTP: its files under ``serve.results_dir``.

    <id>.job.json           whose it is, how its calls ask, its status (state,
                            progress, the cause of a failure), its retries
    <id>.input.jsonl        its services, as submitted
    <id>.jsonl              its records (see pipelines.results)
    <id>.transcript.jsonl   its calls, with pipeline.transcripts (see pipelines.transcripts)

The job's actor (see :mod:`pipelines.submitted`) writes the record when the run
starts, as each service ends and when the run ends; each write replaces the
file whole (a temporary file renamed over it), so a reader never sees half of
one. When the actor is gone (killed, its node lost, the cluster restarted) the
files still answer, and a record that says "running" with no actor left to run
it is a job that failed: :meth:`JobRecord.orphaned` says so, naming the cause.
Every replica that answers for jobs must see the folder: the head's disk when
the replicas run there, else storage the nodes share.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from actors.options import CallOptions
from pipelines.plateau import Service, read_services

JobState = Literal["running", "finished", "failed", "cancelled"]

# A job's id (see serve.jobs): nothing else names a file of the folder.
JOB_ID = re.compile(r"[0-9a-f]{12}")

ORPHANED = (
    "the job's actor is gone (killed, its node lost, or the cluster restarted) before the "
    "run ended; POST /v1/pipelines/{id}/retry runs the services left"
)


class StageProgress(BaseModel):
    done: int
    total: int


class JobStatus(BaseModel):
    id: str
    state: JobState
    # Services ended (ok or failed) and failed, of the run's total.
    services: StageProgress
    failed_services: int
    # Calls ended per stage (ambitions, features, mappings).
    stages: dict[str, StageProgress]
    submitted_at: float
    ended_at: float | None
    # At the pace the run has kept so far; None before its first call ended.
    estimated_completion_at: float | None
    # Why the run could not go on (state "failed").
    error: str | None = None
    # Times it was run again (POST /v1/pipelines/{id}/retry).
    retries: int = 0

    @classmethod
    def started(
        cls, job_id: str, services: int, submitted_at: float, retries: int = 0
    ) -> JobStatus:
        """A run of ``services`` services, starting: nothing done yet."""
        return cls(
            id=job_id,
            state="running",
            services=StageProgress(done=0, total=services),
            failed_services=0,
            stages={},
            submitted_at=submitted_at,
            ended_at=None,
            estimated_completion_at=None,
            retries=retries,
        )


class JobRecord(BaseModel):
    """A job's record: its tenant (``owner``, "" without tenants), how its calls ask (as
    serve.tenants.asking made them), its last status."""

    owner: str
    priority: int
    flow: str | None
    weight: float
    status: JobStatus

    def asking(self) -> CallOptions:
        return CallOptions(priority=self.priority, flow=self.flow, weight=self.weight)

    def orphaned(self) -> JobStatus:
        """Its status, once no actor runs it: a run that had not ended failed."""
        if self.status.state != "running":
            return self.status
        return self.status.model_copy(
            update={
                "state": "failed",
                "error": ORPHANED.replace("{id}", self.status.id),
                "estimated_completion_at": None,
            }
        )


class JobFiles:
    """The files of the job ``job_id`` under ``folder``."""

    def __init__(self, folder: Path, job_id: str) -> None:
        if not JOB_ID.fullmatch(job_id):
            raise ValueError(f"{job_id!r} is not a job id")
        self.folder = folder
        self.job_id = job_id
        self.record = folder / f"{job_id}.job.json"
        self.input = folder / f"{job_id}.input.jsonl"
        self.results = folder / f"{job_id}.jsonl"

    def write(self, record: JobRecord) -> None:
        write_whole(self.record, record.model_dump_json())

    def read(self) -> JobRecord | None:
        """Its record; None if it has none (unknown, or a torn write lost it)."""
        try:
            return JobRecord.model_validate_json(self.record.read_bytes())
        except (OSError, ValidationError):
            return None

    def write_input(self, services: Sequence[Service]) -> None:
        write_whole(self.input, "".join(s.model_dump_json() + "\n" for s in services))

    def read_input(self) -> list[Service]:
        services, _ = read_services(self.input.read_text(encoding="utf-8").splitlines())
        return services


def job_ids(folder: Path) -> list[str]:
    """The jobs with a record in ``folder``."""
    names = (path.name.removesuffix(".job.json") for path in folder.glob("*.job.json"))
    return sorted(job_id for job_id in names if JOB_ID.fullmatch(job_id))


def write_whole(path: Path, text: str) -> None:
    """Write ``path`` whole: a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
