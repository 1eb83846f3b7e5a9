"""Running the plateau job from a driver: backend, pipeline actor, output file, summary."""

from __future__ import annotations

import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from actors.client import ManagerClient
from actors.options import DEFAULT_OPTIONS, CallOptions, tenant_flow
from actors.settings import PipelineSettings, Settings
from actors.stats import percentile
from pipelines.actor import CallDone, CallRecord, PipelineRun, RunSpec, ServiceDone
from pipelines.chain import Span
from pipelines.plateau import Service, ServiceRecord
from pipelines.results import ResultsFile
from pipelines.timeline import peak_overlap
from pipelines.transcripts import TranscriptFile, transcript_path
from providers.discovery import Catalog
from providers.errors import ProviderActorLost
from providers.routing import provider_for_model


@dataclass
class Outcome:
    records: list[ServiceRecord]
    calls: list[CallRecord]
    spans: list[tuple[str, Span]]  # (service id, when a stage call ran)
    elapsed: float
    server_restarts: list[str] = field(default_factory=list)  # how each restart came about

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for r in self.records)


class Progress:
    """One line of per-stage counters and the time left: redrawn in place on a terminal; in
    a log, a line per finished service and at most one every ``every`` seconds in between.

    The time left is the calls left at the pace the run has kept so far (calls
    done per second since it started), which takes in call times, queueing
    behind other work and the slots the run gets, as they were observed.
    """

    def __init__(
        self,
        totals: dict[str, int],
        out: TextIO,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.totals = totals
        self.done: Counter[str] = Counter()
        # Services that ended with a failed record (they count in done["services"] too).
        self.failed = 0
        self.out = out
        self.live = out.isatty()
        self.every = every
        self._clock = clock
        self._started = self._last = clock()

    def call(self, stage: str) -> None:
        self.done[stage] += 1
        if self.live:
            self.out.write("\r" + self.line())
        elif self._clock() - self._last >= self.every:
            self._last = self._clock()
            self.out.write(self.line() + "\n")
        self.out.flush()

    def service(self, record: ServiceRecord) -> None:
        self.done["services"] += 1
        self.failed += record.status != "ok"
        status = "" if record.status == "ok" else f" (failed: {record.error})"
        lead = "\r" if self.live else ""
        self.out.write(f"{lead}{self.line()}  <- {record.service_id}{status}\n")
        self.out.flush()

    def line(self) -> str:
        counts = " | ".join(
            f"{stage} {min(self.done[stage], total)}/{total}"
            for stage, total in self.totals.items()
        )
        return f"{counts} | {self.time_left()}"

    def time_left(self) -> str:
        seconds = self.seconds_left()
        if seconds == 0:
            return "done"
        if seconds is None:
            return "time left: unknown yet"
        return f"time left: ~{_duration(seconds)}"

    def seconds_left(self) -> float | None:
        """At the pace kept so far; None before the first call ended."""
        calls = [stage for stage in self.totals if stage != "services"]
        done = sum(min(self.done[s], self.totals[s]) for s in calls)
        left = sum(self.totals[s] for s in calls) - done
        if left == 0:
            return 0.0
        if done == 0:
            return None
        return left * (self._clock() - self._started) / done


def progress_for(services: int, job: PipelineSettings, out: TextIO) -> Progress:
    """The counters of a run of the plateau job over ``services`` services."""
    return Progress(totals_of(services, job), out)


def totals_of(services: int, job: PipelineSettings) -> dict[str, int]:
    """The calls of each stage, and the services, of a run over ``services`` services."""
    return {
        "ambitions": services,
        "features": services * job.plateaus,
        "mappings": services * job.plateaus * len(job.mapping_types),
        "services": services,
    }


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def run_options(priority: int, tenant: str | None, settings: Settings) -> CallOptions:
    """How a run's calls ask: at ``priority``, as the tenant ``tenant``'s (with its weight
    in ``serve.tenants`` if it is named there), or else as its driver's Ray job's."""
    if tenant is None:
        return CallOptions(priority=priority)
    named = settings.serve.tenants.get(tenant)
    weight = named.weight if named is not None else 1.0
    return CallOptions(priority=priority, flow=tenant_flow(tenant), weight=weight)


async def run_pipeline(
    services: Sequence[Service],
    results: ResultsFile,
    settings: Settings,
    *,
    manager: ManagerClient | None,
    asking: CallOptions = DEFAULT_OPTIONS,
    progress_out: TextIO = sys.stderr,
    progress: Progress | None = None,
    run_id: str | None = None,
) -> Outcome:
    """Run the job for ``services`` through ``manager`` (None: parity mode, no gating).

    ``asking``: the priority of every call and whose they are (see :class:`RunSpec`).
    ``run_id`` names the run's calls in the queue (one is drawn when None).

    Progress goes to ``progress_out``, or to ``progress`` when given (made by
    :func:`progress_for`, so that its counters can be read while the run goes on).
    """
    found = await Catalog(settings, manager).resolving(settings.pipeline.model)
    provider, model = provider_for_model(found, settings.pipeline.model, manager)
    # A backend that cannot serve (a model server that fails to start) ends the run here.
    await provider.ready()
    # The provider may serve other runs too: this run reports the restarts during it.
    restarts_before = len(await provider.server_restarts())
    job = settings.pipeline
    run = PipelineRun.start(
        RunSpec(
            provider,
            job,
            model,
            run_id=run_id or uuid.uuid4().hex[:8],
            asking=asking,
            sequential=not settings.queue.enabled,
        )
    )
    progress = progress or progress_for(len(services), job, progress_out)
    transcript = TranscriptFile(transcript_path(results.path)) if job.transcripts else None
    records: list[ServiceRecord] = []
    started = time.monotonic()
    try:
        async for event in run.events(services):
            if isinstance(event, CallDone):
                progress.call(event.stage)
            elif isinstance(event, ServiceDone):
                results.append(event.record)
                records.append(event.record)
                progress.service(event.record)
            elif transcript is not None:
                transcript.append(event.line)
        calls = await run.calls()
        spans = await run.spans()
        try:
            restarts = (await provider.server_restarts())[restarts_before:]
        except ProviderActorLost:
            restarts = []  # its server's restarts died with it; the records name the loss
    finally:
        run.end()
    return Outcome(records, calls, spans, time.monotonic() - started, restarts)


def summary(outcome: Outcome, *, skipped: int, bad_lines: int) -> str:
    ok = len(outcome.records) - outcome.failed
    lines = [
        f"{len(outcome.records)} services in {outcome.elapsed:.1f}s: {ok} ok, "
        f"{outcome.failed} failed; {skipped} already done; {bad_lines} bad input lines",
    ]
    # The backend's calls; answers from the response cache took no slot.
    called = [c for c in outcome.calls if not c.cached]
    groups = sorted({call.group for call in called})
    if groups:
        width = max(len(g) for g in groups)
        lines.append(f"{'group':<{width}}  calls  failed  max in flight  queue wait p50    p95")
        for group in groups:
            calls = [c for c in called if c.group == group]
            waits = [c.queue_wait for c in calls if c.ok]
            lines.append(
                f"{group:<{width}}  {len(calls):>5}  {sum(not c.ok for c in calls):>6}  "
                f"{peak_overlap(c.held for c in calls):>13}  "
                f"{percentile(waits, 0.5):>13.2f}s {percentile(waits, 0.95):>5.2f}s"
            )
    if cached := len(outcome.calls) - len(called):
        lines.append(f"{cached} answers from the response cache (no slot, no backend call)")
    if outcome.server_restarts:
        lines.append(
            f"model server restarted {len(outcome.server_restarts)} "
            f"time{'s' if len(outcome.server_restarts) != 1 else ''}, after it was: "
            + "; ".join(outcome.server_restarts)
        )
    sequential = sum(c.latency for c in called if c.ok)
    if outcome.elapsed > 0 and sequential > 0:
        lines.append(
            f"sequential estimate (the calls one after another): {sequential:.1f}s; "
            f"this run: {outcome.elapsed:.1f}s ({sequential / outcome.elapsed:.2f}x)"
        )
    return "\n".join(lines)
