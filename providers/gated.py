"""A backend behind the manager: every call holds a slot of its group while it runs.

    breaker check -> slot (priority, request id) -> HTTP call -> release
                     ^ on a retryable error: release, back off, start again

Plain Python over a :class:`~actors.slots.SlotSource`, so the same code runs
in the ProviderActor (manager slots), in one process (local slots) and in
parity mode (no slots).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from opentelemetry.trace import StatusCode

from actors.groups import GroupSpec
from actors.slots import SlotSource
from actors.telemetry import tracer
from actors.waitqueue import DEFAULT_PRIORITY
from providers.breaker import CircuitBreaker
from providers.http import Backend
from providers.models import ChatRequest, ChatResponse, StreamDelta
from providers.retry import RetryPolicy, with_retries


class GatedProvider:
    def __init__(
        self,
        backend: Backend,
        spec: GroupSpec,
        slots: SlotSource,
        *,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.backend = backend
        self.spec = spec
        self.slots = slots
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker(backend.provider, spec.id, clock=clock)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()

    async def start(self) -> None:
        await self.slots.register(self.spec)

    async def chat(
        self,
        request: ChatRequest,
        *,
        priority: int = DEFAULT_PRIORITY,
        request_id: str | None = None,
        queue_timeout: float | None = None,
        critical: bool = False,
        unit: str | None = None,
        stage: str = "",
        service_id: str = "",
    ) -> ChatResponse:
        attributes = self._attributes(request, priority, stage, service_id)
        waited = 0.0
        started_at = 0.0

        async def attempt() -> ChatResponse:
            nonlocal waited, started_at
            with self.breaker.guard():
                async with self._acquired(
                    attributes,
                    priority=priority,
                    critical=critical,
                    unit=unit,
                    request_id=request_id,
                    timeout=queue_timeout,
                ) as wait:
                    waited += wait
                    started_at = time.time()
                    with tracer().start_as_current_span("raygate.call", attributes=attributes):
                        return await self.backend.chat(request)

        response = await with_retries(
            attempt, self.retry, clock=self._clock, sleep=self._sleep, rng=self._rng
        )
        return response.model_copy(update={"queue_wait_seconds": waited, "started_at": started_at})

    def _attributes(
        self, request: ChatRequest, priority: int, stage: str, service_id: str
    ) -> dict[str, str | int]:
        """What every span of a call carries."""
        return {
            "raygate.group": self.spec.id,
            "gen_ai.request.model": request.model,
            "raygate.stage": stage,
            "raygate.service_id": service_id,
            "raygate.priority": priority,
        }

    @asynccontextmanager
    async def _acquired(
        self, attributes: dict[str, str | int], **slot: Any
    ) -> AsyncIterator[float]:
        """Hold a slot of the group; the wait for it is a span of its own, and yielded."""
        span = tracer().start_span("raygate.acquire", attributes=attributes)
        asked = self._clock()
        try:
            async with self.slots.slot(self.spec.id, **slot):
                wait = self._clock() - asked
                span.set_attribute("raygate.wait_seconds", wait)
                span.end()
                yield wait
        except BaseException as error:
            if span.is_recording():  # failed while waiting, not in the call
                span.record_exception(error)
                span.set_status(StatusCode.ERROR)
                span.end()
            raise

    async def stream(
        self,
        request: ChatRequest,
        *,
        priority: int = DEFAULT_PRIORITY,
        request_id: str | None = None,
        queue_timeout: float | None = None,
    ) -> AsyncIterator[StreamDelta]:
        """Stream one answer, holding the slot until its last piece.

        Not retried: a caller may already have used the pieces it got.
        """
        attributes = self._attributes(request, priority, "", "")
        with self.breaker.guard():
            async with self._acquired(
                attributes, priority=priority, request_id=request_id, timeout=queue_timeout
            ):
                with tracer().start_as_current_span("raygate.call", attributes=attributes):
                    async for delta in self.backend.stream(request):
                        yield delta

    async def aclose(self) -> None:
        await self.backend.aclose()
