"""Pipeline jobs submitted over HTTP: one detached actor per run, which runs it and keeps
its status, so that a run outlives the Serve replica that started it; and its files
(see :mod:`pipelines.jobrecords`), so that a job outlives its actor.

    job = SubmittedJob.submit(folder, job_id, services, settings, manager, asking, owner)
    job = SubmittedJob.find(folder, job_id, owner)   # None: unknown, or not owner's
    await job.status()          # state, per-stage progress, estimated completion, cause
    job.records()               # the records written so far
    await job.cancel()          # its waiters leave the queue, its calls are cancelled
    await job.retry(settings, manager)   # the services it did not finish, run again

A run's actor is named ``pipeline-job:<owner>:<id>`` in the ``raygate`` namespace
(``pipeline-job:<id>`` without tenants; a retry's ends ``~<n>``). It runs the plateau
job as the command line does (:func:`pipelines.job.run_pipeline`, so its calls go
through the manager like every other caller's), writes each record to
``<results_dir>/<id>.jsonl`` and its record as it goes, and exits
``job_retention_seconds`` after the run ended. A job is found by its record, and
only for the tenant that submitted it (None: a key that sees all); for any other it
does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from actors.calls import unwrap
from actors.client import ManagerClient
from actors.names import NAMESPACE, named_actor, this_node
from actors.options import CallOptions
from actors.settings import PipelineSettings, Settings
from pipelines.errors import JobNotRetried
from pipelines.job import Progress, run_pipeline, totals_of
from pipelines.jobrecords import (
    JOB_ID,
    JobFiles,
    JobRecord,
    JobStatus,
    StageProgress,
    job_ids,
)
from pipelines.plateau import Service, ServiceRecord
from pipelines.results import ResultsFile
from pipelines.transcripts import TranscriptFile, TranscriptLine, transcript_path


def job_name(job_id: str, owner: str, retries: int = 0) -> str:
    """The actor's name of a run of the job: ``owner`` is its tenant's name, "" without
    tenants; each retry is a run of its own."""
    run = f"{job_id}~{retries}" if retries else job_id
    return f"pipeline-job:{owner}:{run}" if owner else f"pipeline-job:{run}"


@ray.remote(num_cpus=0, max_restarts=0)
class PipelineJob:
    """Runs one job and keeps its status, in memory and in its record (see
    pipelines.jobrecords); a retry is a new actor of the same job, running the services
    its last run did not finish."""

    def __init__(
        self,
        files: JobFiles,
        services: Sequence[Service],
        settings: Settings,
        manager: ManagerClient | None,
        record: JobRecord,
    ) -> None:
        self._files = files
        self._settings = settings
        self._record = record
        self._results = ResultsFile(files.results)
        self._progress = _Recorded(self._save, len(services), settings.pipeline)
        self._done = asyncio.Event()
        self._save()
        # __init__ runs on the actor's event loop.
        self._run = asyncio.get_running_loop().create_task(self._execute(list(services), manager))

    async def _execute(self, services: list[Service], manager: ManagerClient | None) -> None:
        status = self._record.status
        try:
            await run_pipeline(
                services,
                self._results,
                self._settings,
                manager=manager,
                asking=self._record.asking(),
                progress=self._progress,
                run_id=status.id,
            )
            state, error = "finished", None
        except asyncio.CancelledError:
            state, error = "cancelled", None
        except Exception as exc:
            state, error = "failed", f"{type(exc).__name__}: {exc}"
        ended = {"state": state, "error": error, "ended_at": time.time()}
        self._record = self._record.model_copy(update={"status": status.model_copy(update=ended)})
        self._save()
        self._done.set()
        await asyncio.sleep(self._settings.serve.job_retention_seconds)
        ray.actor.exit_actor()

    def _save(self) -> None:
        self._record = self._record.model_copy(update={"status": self._now()})
        self._files.write(self._record)

    def _now(self) -> JobStatus:
        done, totals = self._progress.done, self._progress.totals
        status = self._record.status
        left = self._progress.seconds_left() if status.state == "running" else None
        return status.model_copy(
            update={
                "services": StageProgress(done=done["services"], total=totals["services"]),
                "failed_services": self._progress.failed,
                "stages": {
                    stage: StageProgress(done=min(done[stage], total), total=total)
                    for stage, total in totals.items()
                    if stage != "services"
                },
                "estimated_completion_at": time.time() + left if left is not None else None,
            }
        )

    async def status(self) -> JobStatus:
        return self._now()

    async def cancel(self) -> JobStatus:
        """Cancel a running run and wait until its calls are cancelled."""
        if not self._done.is_set():
            self._run.cancel()
            await self._done.wait()  # the run's clean-up has cancelled its calls
        return await self.status()


class _Recorded(Progress):
    """A job's progress, its record written again as each service ends."""

    def __init__(self, save: Callable[[], None], services: int, job: PipelineSettings) -> None:
        super().__init__(totals_of(services, job), io.StringIO())
        self._save = save

    def service(self, record: ServiceRecord) -> None:
        super().service(record)
        self._save()


class PipelineJobClient:
    """Typed access to a live run's actor (the queue page lists the runs under way)."""

    def __init__(self, handle: ActorHandle) -> None:
        self.handle = handle

    @classmethod
    def all(cls, owner: str) -> list[PipelineJobClient]:
        """The runs of ``owner`` whose actors are there now, every run's for "" (blocks
        for a round trip to Ray's GCS)."""
        prefix = job_name("", owner)
        found = (
            _named(actor["name"])
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["namespace"] == NAMESPACE and actor["name"].startswith(prefix)
        )
        return [cls(handle) for handle in found if handle is not None]

    async def status(self) -> JobStatus:
        status: JobStatus = await unwrap(self.handle.status.remote())
        return status


class SubmittedJob:
    """One job as the endpoint answers for it: its files (see pipelines.jobrecords), and
    its actor while one runs it or keeps its end (``job_retention_seconds``)."""

    def __init__(self, files: JobFiles, record: JobRecord, handle: ActorHandle | None) -> None:
        self.files = files
        self.record = record
        self._handle = handle

    @classmethod
    def submit(
        cls,
        folder: Path,
        job_id: str,
        services: Sequence[Service],
        settings: Settings,
        manager: ManagerClient | None,
        asking: CallOptions,
        owner: str,
    ) -> SubmittedJob:
        """Start a run on this node (where "local" servers without a host are), its calls
        asking as ``asking`` says (see :class:`pipelines.actor.RunSpec`), owned by the
        tenant ``owner``; its input and record written first."""
        files = JobFiles(folder, job_id)
        files.write_input(services)
        status = JobStatus.started(job_id, len(services), time.time())
        record = JobRecord(
            owner=owner,
            priority=asking.priority,
            flow=asking.flow,
            weight=asking.weight,
            status=status,
        )
        return cls._started(files, record, services, settings, manager)

    @classmethod
    def _started(
        cls,
        files: JobFiles,
        record: JobRecord,
        services: Sequence[Service],
        settings: Settings,
        manager: ManagerClient | None,
    ) -> SubmittedJob:
        files.write(record)
        name = job_name(files.job_id, record.owner, record.status.retries)
        made = (files, list(services), settings, manager, record)
        handle = named_actor(PipelineJob, name, *made, placement=this_node())
        return cls(files, record, handle)

    @classmethod
    def find(cls, folder: Path, job_id: str, owner: str | None) -> SubmittedJob | None:
        """The job ``job_id`` if ``owner`` may see it (None: anyone's); else None, as for
        one there is not."""
        if not JOB_ID.fullmatch(job_id):
            return None
        files = JobFiles(folder, job_id)
        record = files.read()
        if record is None or (owner is not None and record.owner != owner):
            return None
        name = job_name(job_id, record.owner, record.status.retries)
        return cls(files, record, _named(name))

    @classmethod
    def all(cls, folder: Path, owner: str | None) -> list[SubmittedJob]:
        """The jobs ``owner`` may see (None: every one), the newest first."""
        found = (cls.find(folder, job_id, owner) for job_id in job_ids(folder))
        jobs = [job for job in found if job is not None]
        return sorted(jobs, key=lambda job: job.record.status.submitted_at, reverse=True)

    async def status(self) -> JobStatus:
        """From its actor while there is one; else its record's, a run that had not ended
        then failed (see JobRecord.orphaned)."""
        if self._handle is not None:
            with contextlib.suppress(RayActorError):
                status: JobStatus = await unwrap(self._handle.status.remote())
                return status
        return (self.files.read() or self.record).orphaned()

    def records(self) -> list[ServiceRecord]:
        return list(ResultsFile(self.files.results).load().values())

    def transcript(self) -> list[TranscriptLine]:
        """Its calls so far (none unless ``pipeline.transcripts``)."""
        return TranscriptFile(transcript_path(self.files.results)).read()

    async def cancel(self) -> JobStatus:
        """Cancel a running run and wait until its calls are cancelled; an ended one's
        status as it is."""
        if self._handle is not None:
            with contextlib.suppress(RayActorError):
                status: JobStatus = await unwrap(self._handle.cancel.remote())
                return status
        return await self.status()

    async def retry(self, settings: Settings, manager: ManagerClient | None) -> SubmittedJob:
        """Run again, as a new run of this job, the services its last run did not finish
        (failed, or never ended); the finished ones' records stay. Raises JobNotRetried
        while it runs, or when every service finished."""
        status = await self.status()
        if status.state == "running":
            raise JobNotRetried(status.id, "it is running")
        results = ResultsFile(self.files.results)
        results.drop_failed()
        done = results.load()
        left = [service for service in self.files.read_input() if service.id not in done]
        if not left:
            raise JobNotRetried(status.id, "every service of it finished")
        if self._handle is not None:
            ray.kill(self._handle)  # the last run's, kept for its retention only
        again = JobStatus.started(status.id, len(left), status.submitted_at, status.retries + 1)
        record = self.record.model_copy(update={"status": again})
        return self._started(self.files, record, left, settings, manager)


def _named(name: str) -> ActorHandle | None:
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None
