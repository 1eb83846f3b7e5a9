"""The PipelineActor: one pipeline run, its stages as futures, its LLM calls via a provider actor.

The actor streams events back to whoever started it (the CLI, a Serve
request): a ``CallDone`` per LLM call, for progress, and a ``ServiceDone``
with the record the moment a service completes, so it can be written at once.
Callers use :class:`PipelineRun`, not the handle.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

import ray
from ray.actor import ActorHandle

from actors.calls import cancellable_stream, unwrap
from actors.names import named_actor, this_node
from actors.options import DEFAULT_OPTIONS, CallOptions
from actors.settings import PipelineSettings
from pipelines.chain import Span, together
from pipelines.plateau import PlateauJob, Service, ServiceRecord
from pipelines.transcripts import TranscriptLine, transcribed
from providers.client import ModelProvider
from providers.models import ChatRequest, ChatResponse


@dataclass(frozen=True)
class CallRecord:
    """One LLM call of the run; timings of a call that failed are zero."""

    group: str
    stage: str
    service_id: str
    ok: bool
    queue_wait: float = 0.0
    # Wall clock when the call started holding its slot, and how long it held it.
    started_at: float = 0.0
    latency: float = 0.0
    # Answered from the response cache: no slot, no backend call.
    cached: bool = False

    @property
    def held(self) -> tuple[float, float]:
        return (self.started_at, self.started_at + self.latency)


@dataclass(frozen=True)
class CallDone:
    stage: str
    service_id: str


@dataclass(frozen=True)
class ServiceDone:
    record: ServiceRecord


@dataclass(frozen=True)
class Transcribed:
    """A call ended, as its transcript says (with ``pipeline.transcripts``)."""

    line: TranscriptLine


RunEvent = CallDone | ServiceDone | Transcribed


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs besides its services. ``model``: the name the backend
    is asked for; ``asking``: the priority of the run's calls and whose they are (flow
    and weight; a flow of None is the Ray job of the run's driver); ``sequential``: one
    call at a time, in order (parity mode)."""

    provider: ModelProvider
    settings: PipelineSettings
    model: str
    run_id: str
    asking: CallOptions = DEFAULT_OPTIONS
    sequential: bool = False


@ray.remote(num_cpus=0)
class PipelineActor:
    """One run; its provider actors watch it, so its calls end if it dies with its driver."""

    def __init__(self, spec: RunSpec) -> None:
        self._provider = spec.provider
        self._run_id = spec.run_id
        self._asking = spec.asking
        self._sequential = spec.sequential
        self._group: str | None = None
        self._calls: list[CallRecord] = []
        self._events: asyncio.Queue[RunEvent] | None = None
        self._job = PlateauJob(self._ask, spec.settings, spec.model, sequential=spec.sequential)
        self._transcripts = spec.settings.transcripts
        self._transcripts_text = spec.settings.transcripts_text

    async def run(self, services: Sequence[Service]) -> AsyncIterator[RunEvent]:
        """Call as ``actor.run.options(num_returns="streaming").remote(services)``."""
        self._group = await self._provider.group_id()
        events: asyncio.Queue[RunEvent] = asyncio.Queue()
        self._events = events

        async def one(service: Service) -> None:
            events.put_nowait(ServiceDone(await self._job.run(service)))

        runner = asyncio.create_task(
            together(*(one(service) for service in services), sequential=self._sequential)
        )
        try:
            done = 0
            while done < len(services):
                event = await events.get()
                done += isinstance(event, ServiceDone)
                yield event
            await runner
            while not events.empty():  # what calls cancelled last sent on their way out
                yield events.get_nowait()
        finally:
            # Cancelled (the caller stopped reading): cancel the services' calls, which
            # cancels them in the provider actors too, before this run ends.
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    async def _ask(self, request: ChatRequest, options: CallOptions) -> ChatResponse:
        labels = options.labels
        service_id = labels.service_id
        call = CallRecord(
            group=self._group or "", stage=labels.stage, service_id=service_id, ok=False
        )
        # One unit per service: the manager finishes started services before it
        # starts new ones, so records are written along the way, not all at the end.
        options = replace(
            options,
            priority=self._asking.priority,
            flow=self._asking.flow,
            weight=self._asking.weight,
            unit=f"{self._run_id}:{service_id}",
            request_id=f"{self._run_id}:{service_id}:{labels.call_id()}",
            labels=replace(labels, run=self._run_id),
        )
        try:
            # Cancelled (a sibling call of the service failed, the run was cancelled):
            # the provider's call is cancelled too, and leaves the queue or its slot.
            response = await self._provider.chat(request, options)
        except BaseException as stopped:
            self._calls.append(call)
            self._transcribe(request, options, stopped)
            raise
        self._transcribe(request, options, response)
        self._calls.append(
            replace(
                call,
                group=response.group,  # of a pool, the server that answered
                ok=True,
                queue_wait=response.queue_wait_seconds,
                started_at=response.started_at,
                latency=response.latency_seconds,
                cached=response.cached,
            )
        )
        if self._events is not None:
            self._events.put_nowait(CallDone(labels.stage, service_id))
        return response

    def _transcribe(
        self, request: ChatRequest, options: CallOptions, ended: ChatResponse | BaseException
    ) -> None:
        if self._transcripts and self._events is not None:
            line = transcribed(
                request, options, self._group or "", ended, text=self._transcripts_text
            )
            self._events.put_nowait(Transcribed(line))

    def calls(self) -> list[CallRecord]:
        return list(self._calls)

    def spans(self) -> list[tuple[str, Span]]:
        return list(self._job.spans)


class PipelineRun:
    """One run on the cluster: its PipelineActor behind typed calls.

    Leaving ``events`` early (an error, a cancelled caller) cancels the run
    inside the actor, which cancels its provider calls; ``end`` ends the actor.
    """

    def __init__(self, handle: ActorHandle) -> None:
        self.handle = handle

    @classmethod
    def start(cls, spec: RunSpec) -> PipelineRun:
        # On its driver's node: it dies with the driver anyway, so losing another
        # node (a GPU host) fails the calls made there, not the whole run.
        handle = named_actor(
            PipelineActor, f"pipeline:{spec.run_id}", spec, placement=this_node(), detached=False
        )
        return cls(handle)

    async def events(self, services: Sequence[Service]) -> AsyncIterator[RunEvent]:
        stream = self.handle.run.options(num_returns="streaming").remote(list(services))
        # Left early, the run cancels its provider calls before anyone ends its actor:
        # calls whose caller was killed would run on for nobody.
        async for event in cancellable_stream(stream):
            yield event

    async def calls(self) -> list[CallRecord]:
        calls: list[CallRecord] = await unwrap(self.handle.calls.remote())
        return calls

    async def spans(self) -> list[tuple[str, Span]]:
        spans: list[tuple[str, Span]] = await unwrap(self.handle.spans.remote())
        return spans

    def end(self) -> None:
        ray.kill(self.handle)
