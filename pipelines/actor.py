"""The PipelineActor: one pipeline run, its stages as futures, its LLM calls via a provider actor.

The actor streams events back to whoever started it (the CLI, a Serve
request): a ``CallDone`` per LLM call, for progress, and a ``ServiceDone``
with the record the moment a service completes, so it can be written at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import ray

from actors.client import unwrap
from actors.waitqueue import DEFAULT_PRIORITY
from pipelines.chain import Span, together
from pipelines.plateau import JobSettings, PlateauJob, Service, ServiceRecord
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


@ray.remote(num_cpus=0)
class PipelineActor:
    def __init__(
        self,
        provider: Any,
        settings: JobSettings,
        *,
        run_id: str,
        priority: int = DEFAULT_PRIORITY,
        sequential: bool = False,
    ) -> None:
        self._provider = provider
        self._run_id = run_id
        self._priority = priority
        self._sequential = sequential
        self._group: str | None = None
        self._calls: list[CallRecord] = []
        self._events: asyncio.Queue[CallDone | ServiceDone] | None = None
        self._job = PlateauJob(self._ask, settings, sequential=sequential)

    async def run(self, services: Sequence[Service]) -> AsyncIterator[CallDone | ServiceDone]:
        """Call as ``actor.run.options(num_returns="streaming").remote(services)``."""
        self._group = (await self._provider.group.remote()).id
        events: asyncio.Queue[CallDone | ServiceDone] = asyncio.Queue()
        self._events = events

        async def one(service: Service) -> None:
            events.put_nowait(ServiceDone(await self._job.run(service)))

        runner = asyncio.create_task(
            together(*(one(service) for service in services), sequential=self._sequential)
        )
        done = 0
        while done < len(services):
            event = await events.get()
            done += isinstance(event, ServiceDone)
            yield event
        await runner

    async def _ask(
        self, request: ChatRequest, *, stage: str, service_id: str, critical: bool = False
    ) -> ChatResponse:
        stage = stage.split("[", 1)[0]
        call = CallRecord(group=self._group or "", stage=stage, service_id=service_id, ok=False)
        # Every argument of an actor call costs serialization: send the flag only when set.
        flags = {"critical": True} if critical else {}
        # One unit per service: the manager finishes started services before it
        # starts new ones, so records are written along the way, not all at the end.
        try:
            response: ChatResponse = await unwrap(
                self._provider.chat.remote(
                    request,
                    self._priority,
                    f"{self._run_id}:{service_id}:{stage}",
                    unit=f"{self._run_id}:{service_id}",
                    stage=stage,
                    service_id=service_id,
                    **flags,
                )
            )
        except BaseException:
            self._calls.append(call)
            raise
        self._calls.append(
            replace(
                call,
                ok=True,
                queue_wait=response.queue_wait_seconds,
                started_at=response.started_at,
                latency=response.latency_seconds,
            )
        )
        if self._events is not None:
            self._events.put_nowait(CallDone(stage, service_id))
        return response

    def calls(self) -> list[CallRecord]:
        return list(self._calls)

    def spans(self) -> list[tuple[str, Span]]:
        return list(self._job.spans)
