"""Pipeline runs submitted over HTTP: one detached actor per run, which runs it and keeps
its state, so that a run outlives the Serve replica that started it.

    job = PipelineJobClient.submit(job_id, services, settings, manager, asking, owner)
    await job.status()          # state, per-stage progress, estimated completion
    await job.records()         # the records written so far
    await job.cancel()          # its waiters leave the queue, its calls are cancelled

The actor is named ``pipeline-job:<owner>:<id>`` in the ``raygate`` namespace
(``pipeline-job:<id>`` without tenants): a replica finds it by name, and only
for the tenant that submitted it (see :mod:`serve.tenants`); for any other
it does not exist. It runs the plateau job as the command line does
(:func:`pipelines.job.run_pipeline`, so its calls go through the manager
like every other caller's), writes each record to ``<results_dir>/<id>.jsonl``
on its node, and exits ``job_retention_seconds`` after the run ended.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Sequence
from typing import Literal

import ray
from pydantic import BaseModel
from ray.actor import ActorHandle

from actors.calls import unwrap
from actors.client import ManagerClient
from actors.names import NAMESPACE, named_actor, this_node
from actors.options import CallOptions
from actors.settings import Settings
from pipelines.job import progress_for, run_pipeline
from pipelines.plateau import Service, ServiceRecord
from pipelines.results import ResultsFile
from pipelines.transcripts import TranscriptFile, TranscriptLine, transcript_path

JobState = Literal["running", "finished", "failed", "cancelled"]


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


def job_name(job_id: str, owner: str) -> str:
    """The run's actor's name: ``owner`` is its tenant's name, "" without tenants."""
    return f"pipeline-job:{owner}:{job_id}" if owner else f"pipeline-job:{job_id}"


@ray.remote(num_cpus=0, max_restarts=0)
class PipelineJob:
    def __init__(
        self,
        job_id: str,
        services: Sequence[Service],
        settings: Settings,
        manager: ManagerClient | None,
        asking: CallOptions,
    ) -> None:
        self._id = job_id
        self._settings = settings
        self._submitted = time.time()
        self._ended: float | None = None
        self._state: JobState = "running"
        self._error: str | None = None
        folder = settings.serve.results_dir
        folder.mkdir(parents=True, exist_ok=True)
        self._results = ResultsFile(folder / f"{job_id}.jsonl")
        self._progress = progress_for(len(services), settings.pipeline, io.StringIO())
        self._done = asyncio.Event()
        # __init__ runs on the actor's event loop.
        self._run = asyncio.get_running_loop().create_task(
            self._execute(list(services), manager, asking)
        )

    async def _execute(
        self, services: list[Service], manager: ManagerClient | None, asking: CallOptions
    ) -> None:
        try:
            await run_pipeline(
                services,
                self._results,
                self._settings,
                manager=manager,
                asking=asking,
                progress=self._progress,
                run_id=self._id,
            )
            self._state = "finished"
        except asyncio.CancelledError:
            self._state = "cancelled"
        except Exception as exc:
            self._state, self._error = "failed", f"{type(exc).__name__}: {exc}"
        self._ended = time.time()
        self._done.set()
        await asyncio.sleep(self._settings.serve.job_retention_seconds)
        ray.actor.exit_actor()

    async def status(self) -> JobStatus:
        done, totals = self._progress.done, self._progress.totals
        left = self._progress.seconds_left() if self._state == "running" else None
        return JobStatus(
            id=self._id,
            state=self._state,
            services=StageProgress(done=done["services"], total=totals["services"]),
            failed_services=self._progress.failed,
            stages={
                stage: StageProgress(done=min(done[stage], total), total=total)
                for stage, total in totals.items()
                if stage != "services"
            },
            submitted_at=self._submitted,
            ended_at=self._ended,
            estimated_completion_at=time.time() + left if left is not None else None,
            error=self._error,
        )

    async def records(self) -> list[ServiceRecord]:
        return list(self._results.load().values())

    async def transcript(self) -> list[TranscriptLine]:
        """Its calls so far (none unless ``pipeline.transcripts``)."""
        return TranscriptFile(transcript_path(self._results.path)).read()

    async def cancel(self) -> JobStatus:
        """Cancel a running run and wait until its calls are cancelled."""
        if not self._done.is_set():
            self._run.cancel()
            await self._done.wait()  # the run's clean-up has cancelled its calls
        return await self.status()


class PipelineJobClient:
    """Typed access to one run's actor."""

    def __init__(self, handle: ActorHandle) -> None:
        self.handle = handle

    @classmethod
    def submit(
        cls,
        job_id: str,
        services: Sequence[Service],
        settings: Settings,
        manager: ManagerClient | None,
        asking: CallOptions,
        owner: str,
    ) -> PipelineJobClient:
        """Start a run on this node (where "local" servers without a host are), its calls
        asking as ``asking`` says (see :class:`pipelines.actor.RunSpec`), owned by the
        tenant ``owner``."""
        handle = named_actor(
            PipelineJob,
            job_name(job_id, owner),
            job_id,
            list(services),
            settings,
            manager,
            asking,
            placement=this_node(),
        )
        return cls(handle)

    @classmethod
    def find(cls, job_id: str, owner: str) -> PipelineJobClient | None:
        """The run's actor, or None if ``owner`` has none of that id (unknown, another
        tenant's, or its retention is over)."""
        return cls._named(job_name(job_id, owner))

    @classmethod
    def _named(cls, name: str) -> PipelineJobClient | None:
        try:
            return cls(ray.get_actor(name, namespace=NAMESPACE))
        except ValueError:
            return None

    @classmethod
    def all(cls, owner: str) -> list[PipelineJobClient]:
        """The runs of ``owner`` whose actors are there now, every run's for "" (blocks
        for a round trip to Ray's GCS)."""
        prefix = job_name("", owner)
        found = (
            cls._named(actor["name"])
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["namespace"] == NAMESPACE and actor["name"].startswith(prefix)
        )
        return [job for job in found if job is not None]

    async def status(self) -> JobStatus:
        status: JobStatus = await unwrap(self.handle.status.remote())
        return status

    async def records(self) -> list[ServiceRecord]:
        records: list[ServiceRecord] = await unwrap(self.handle.records.remote())
        return records

    async def transcript(self) -> list[TranscriptLine]:
        lines: list[TranscriptLine] = await unwrap(self.handle.transcript.remote())
        return lines

    async def cancel(self) -> JobStatus:
        status: JobStatus = await unwrap(self.handle.cancel.remote())
        return status
