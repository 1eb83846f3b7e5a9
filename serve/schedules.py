"""Pipeline jobs on a schedule: ``serve.schedules``, run by one scheduler actor.

    serve:
      data_dir: /srv/raygate/in
      schedules:
        nightly: {cron: "0 2 * * *", input: services.jsonl, priority: 3, tenant: team-a}

One detached actor, ``raygate-scheduler`` (made by the endpoint's first replica,
restarted by Ray after a crash), runs each schedule's job when its cron
expression (UTC) comes due, as a job over HTTP would run (see
:class:`pipelines.submitted.SubmittedJob`): the tenant's job, at its priority.

- Never two runs of one schedule at once: a run that comes due while the last
  one still runs is skipped, and counted.
- What each schedule did is kept in ``<results_dir>/schedules.json``. A
  schedule due while the cluster was down (or the scheduler dead) runs once
  when it comes back, however many of its times passed; a schedule new to the
  file first runs at its next time.
- ``GET /v1/schedules`` and the queue page show each schedule's last and next
  run, its last job and what it skipped (a tenant sees its own; a key that
  sees all, every one).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ray
from croniter import croniter
from fastapi import APIRouter
from pydantic import BaseModel, ValidationError
from ray.actor import ActorHandle

from actors.calls import unwrap
from actors.client import ManagerClient
from actors.names import HEAD_NODE, named_actor
from actors.servesettings import ScheduleSettings
from actors.settings import Settings
from pipelines.jobrecords import write_whole
from pipelines.submitted import SubmittedJob
from serve.errors import documented
from serve.guard import TenantAsking
from serve.jobs import NoInput, input_services
from serve.replica import ThisReplica
from serve.tenants import Tenant, asking, jobs_owner, served_priority

log = logging.getLogger(__name__)

SCHEDULER_NAME = "raygate-scheduler"

router = APIRouter()


class ScheduleState(BaseModel):
    """What one schedule did: since when it is known, its last run and job, its skips."""

    since: float
    last_run_at: float | None = None
    last_job: str | None = None
    skipped: int = 0
    # Why its last run could not start (its input unreadable, say), if it could not.
    last_error: str | None = None


class ScheduleView(ScheduleState):
    name: str
    cron: str
    input: str
    tenant: str
    next_run_at: float


class Schedules:
    """When each schedule is due, and what it did, kept in ``path`` (see the module)."""

    def __init__(
        self,
        schedules: Mapping[str, ScheduleSettings],
        path: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.schedules = dict(schedules)
        self._path = path
        try:
            kept = {
                name: ScheduleState.model_validate(state)
                for name, state in _load(path).items()
                if name in schedules
            }
        except ValidationError:
            kept = {}
        now = clock()
        self.states = {name: kept.get(name, ScheduleState(since=now)) for name in schedules}

    def due(self, now: float) -> list[str]:
        """The schedules with a time past since their last run (or since they are known)."""
        due = []
        for name, state in self.states.items():
            last = state.last_run_at if state.last_run_at is not None else state.since
            if _previous(self.schedules[name].cron, now) > last:
                due.append(name)
        return due

    def next_at(self, name: str, now: float) -> float:
        return _next(self.schedules[name].cron, now)

    def wake_at(self, now: float) -> float:
        """When the next schedule comes due."""
        return min((self.next_at(name, now) for name in self.schedules), default=now + 60)

    def ran(self, name: str, at: float, job: str | None, error: str | None = None) -> None:
        state = self.states[name]
        self.states[name] = state.model_copy(
            update={"last_run_at": at, "last_job": job or state.last_job, "last_error": error}
        )
        self._save()

    def skipped(self, name: str, at: float) -> None:
        state = self.states[name]
        self.states[name] = state.model_copy(
            update={"last_run_at": at, "skipped": state.skipped + 1}
        )
        self._save()

    def view(self, now: float) -> list[ScheduleView]:
        return [
            ScheduleView(
                name=name,
                cron=schedule.cron,
                input=schedule.input,
                tenant=schedule.tenant,
                next_run_at=self.next_at(name, now),
                **self.states[name].model_dump(),
            )
            for name, schedule in self.schedules.items()
        ]

    def _save(self) -> None:
        states = {name: state.model_dump() for name, state in self.states.items()}
        write_whole(self._path, json.dumps(states))


def _load(path: Path) -> dict[str, object]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _previous(cron: str, now: float) -> float:
    """The last time of ``cron`` at or before ``now`` (croniter's is strictly before)."""
    just_after = datetime.fromtimestamp(now, UTC) + timedelta(microseconds=1)
    return float(croniter(cron, just_after).get_prev(float))


def _next(cron: str, now: float) -> float:
    return float(croniter(cron, datetime.fromtimestamp(now, UTC)).get_next(float))


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Scheduler:
    """Runs the schedules (see the module): a loop that sleeps until the next is due."""

    def __init__(self, settings: Settings) -> None:
        serve = settings.serve
        self._settings = settings
        self._folder = serve.results_dir
        self._schedules = Schedules(serve.schedules, serve.results_dir / "schedules.json")
        self._tenants = {name: Tenant(name, tenant) for name, tenant in serve.tenant_list()}
        self._manager = ManagerClient.create(settings) if settings.queue.enabled else None
        self._loop = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            now = time.time()
            for name in self._schedules.due(now):
                try:
                    await self._start(name, now)
                except Exception as exc:  # the next runs go on
                    log.exception("schedule %r could not start", name)
                    self._schedules.ran(name, now, None, f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(max(0.05, self._schedules.wake_at(time.time()) - time.time()))

    async def _start(self, name: str, now: float) -> None:
        schedule = self._schedules.schedules[name]
        last = self._schedules.states[name].last_job
        job = None if last is None else SubmittedJob.find(self._folder, last, None)
        if job is not None and (await job.status()).state == "running":
            log.warning("schedule %r is due while its last job %s runs: skipped", name, last)
            self._schedules.skipped(name, now)
            return
        try:
            services = input_services(self._settings, schedule.input)
        except (OSError, NoInput) as exc:
            log.error("schedule %r could not start: %s", name, exc)
            self._schedules.ran(name, now, None, str(exc))
            return
        tenant = self._tenants.get(schedule.tenant)
        options = asking(tenant, served_priority(tenant, schedule.priority))
        job_id = uuid.uuid4().hex[:12]
        owner = tenant.name if tenant is not None else ""
        SubmittedJob.submit(
            self._folder, job_id, services, self._settings, self._manager, options, owner
        )
        self._schedules.ran(name, now, job_id)

    def view(self) -> list[ScheduleView]:
        return self._schedules.view(time.time())


def scheduler(settings: Settings) -> ActorHandle:
    """The cluster's scheduler: the running one, else one made with ``settings``."""
    return named_actor(Scheduler, SCHEDULER_NAME, settings, placement=HEAD_NODE)


async def seen_schedules(handle: ActorHandle | None, owner: str | None) -> list[ScheduleView]:
    """The schedules ``owner`` may see (None: every one) of the scheduler ``handle``."""
    found: list[ScheduleView] = [] if handle is None else await unwrap(handle.view.remote())
    return [s for s in found if owner is None or s.tenant == owner]


@router.get("/v1/schedules", response_model=None, responses=documented())
async def schedules(tenant: TenantAsking, replica: ThisReplica) -> dict[str, object]:
    """Each schedule this key's tenant may see (every one for a key that sees all): its
    cron, input and tenant, its last and next run, last job and skips."""
    shown = await seen_schedules(replica.scheduler, jobs_owner(tenant))
    return {"object": "list", "data": [s.model_dump(mode="json") for s in shown]}
