"""A backend behind the manager: every call holds a slot of its group while it runs.

    breaker check -> slot (priority, request id) -> HTTP call -> release
                     ^ on a retryable error: release, back off, start again

Plain Python over a :class:`~actors.slots.SlotSource`, so the same code runs
in the ProviderActor (manager slots), in one process (local slots) and in
parity mode (no slots).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from typing import Protocol
from urllib.parse import urlsplit

from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.types import AttributeValue

from actors.budget import estimate_tokens
from actors.groups import GroupSpec
from actors.leases import Lease, TokensUsed
from actors.metrics import Attributes
from actors.ops import Register, Throttled
from actors.options import DEFAULT_OPTIONS, CallOptions
from actors.slots import SlotSource
from actors.stats import GroupInfo
from actors.telemetry import tracer
from providers.breaker import CircuitBreaker
from providers.cache import ResponseCache, cache_key
from providers.errors import RateLimited
from providers.http import Backend
from providers.metrics import Operation, error_type
from providers.models import DEFAULT_MAX_TOKENS, ChatRequest, ChatResponse, StreamDelta, Usage
from providers.retry import RetryPolicy, with_retries

log = logging.getLogger(__name__)


class CallObserver(Protocol):
    """Told how each call ended, and each call to the backend, every try of a call retried
    (the provider actor turns these into metrics: see providers.metrics)."""

    def answered(self, seconds: float, call: dict[str, str], service_id: str) -> None: ...

    def failed(self, error: BaseException, call: dict[str, str]) -> None: ...

    def operation_ended(self, operation: Operation) -> None: ...


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
        observer: CallObserver | None = None,
        cache: ResponseCache | None = None,
        identity: str | None = None,
    ) -> None:
        self.backend = backend
        self.observer = observer
        self.cache = cache
        # What names the backend in cache keys: by default its group (provider, server
        # address, GPU host); see providers.cache.
        self.identity = identity or spec.id
        self.spec = spec
        self.slots = slots
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker(backend.provider, spec.id, clock=clock)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._server = server_attributes(backend.base_url)
        self._started: asyncio.Future[GroupInfo] | None = None

    async def ready(self) -> None:
        """Register the group with the slot source, once: calls that arrive meanwhile wait
        for that one registration (shielded, so that one of them cancelled does not cancel
        it for the others); a registration that failed is tried again."""
        started = self._started
        if started is None or (started.done() and (started.cancelled() or started.exception())):
            started = self._started = asyncio.ensure_future(self.slots.ask(Register(self.spec)))
        await asyncio.shield(started)

    async def chat(
        self,
        request: ChatRequest,
        options: CallOptions = DEFAULT_OPTIONS,
        held: Lease | None = None,
    ) -> ChatResponse:
        """Answer from the response cache if the call allows it and it has the answer
        (no slot, no backend); else through a slot, and keep the answer there.

        ``held``: a slot of this group that the caller holds already (a pool's call, see
        :mod:`providers.pool`): the call runs in it, once, without this group's cache;
        the caller keeps the pool's answers, retries, maybe on another server, and
        reports the tokens used.
        """

        async def call() -> ChatResponse:
            await self.ready()
            with self._observed(request, options) as answered:
                response = await self._chat(request, options, held)
                answered(response.latency_seconds)
            return response

        if self.cache is None or not options.cache or held is not None:
            return await call()
        return await self.cache.through(cache_key(self.identity, request), call)

    async def _chat(
        self, request: ChatRequest, options: CallOptions, held: Lease | None
    ) -> ChatResponse:
        attributes = self._attributes(request, options)
        waited = 0.0
        started_at = 0.0

        async def attempt() -> ChatResponse:
            nonlocal waited, started_at
            with self.breaker.guard():
                asked = with_tokens(request, options)
                async with self._acquired(attributes, asked, held) as (lease, wait):
                    waited += wait
                    started_at = time.time()
                    with self._operation(attributes) as learned:
                        async with self._throttling(lease):
                            response = await self.backend.chat(request)
                        learned(
                            {
                                **answered_attributes(response.usage),
                                "gen_ai.response.model": response.model,
                                "gen_ai.response.finish_reasons": (response.finish_reason,),
                            }
                        )
                    if held is None:
                        self._report(lease, response.usage)
                    return response

        if held is not None:
            response = await attempt()
        else:
            response = await with_retries(
                attempt, self.retry, clock=self._clock, sleep=self._sleep, rng=self._rng
            )
        return response.model_copy(update={"queue_wait_seconds": waited, "started_at": started_at})

    def _attributes(self, request: ChatRequest, options: CallOptions) -> dict[str, str | int]:
        """What every span of a call carries: OpenTelemetry's GenAI attributes (the
        operation, the provider, the model and the tokens asked for, the server) and
        raygate's (the group, the flow, that is the tenant or Ray job, the priority, and
        the labels)."""
        labels = options.labels
        attributes: dict[str, str | int] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": self.spec.provider.value,
            "gen_ai.request.model": request.model,
            "gen_ai.request.max_tokens": self.backend.max_tokens(request),
            **self._server,
            "raygate.group": self.spec.id,
            "raygate.flow": options.flow or "",
            "raygate.stage": labels.stage,
            "raygate.service_id": labels.service_id,
            "raygate.priority": options.priority,
        }
        if labels.plateau is not None:
            attributes["raygate.plateau"] = labels.plateau
        if options.request_id is not None:
            attributes["raygate.request_id"] = options.request_id
        return attributes

    @asynccontextmanager
    async def _acquired(
        self, attributes: dict[str, str | int], options: CallOptions, held: Lease | None
    ) -> AsyncIterator[tuple[Lease, float]]:
        """Hold a slot of the group (``held``, if the caller holds one already); the wait
        for it is a span of its own, and yielded."""
        if held is not None:
            yield held, 0.0
            return
        span = tracer().start_span("raygate.acquire", attributes=attributes)
        asked = self._clock()
        try:
            async with self.slots.slot(self.spec.id, options) as lease:
                wait = self._clock() - asked
                span.set_attribute("raygate.wait_seconds", wait)
                span.end()
                yield lease, wait
        except BaseException as error:
            if span.is_recording():  # failed while waiting, not in the call
                span.record_exception(error)
                span.set_status(StatusCode.ERROR)
                span.end()
            raise

    async def stream(
        self,
        request: ChatRequest,
        options: CallOptions = DEFAULT_OPTIONS,
        held: Lease | None = None,
    ) -> AsyncIterator[StreamDelta]:
        """Stream one answer, holding the slot until its last piece (``held``: see
        :meth:`chat`).

        Not retried: a caller may already have used the pieces it got.
        """
        await self.ready()
        attributes = self._attributes(request, options)
        with self._observed(request, options) as answered, self.breaker.guard():
            asked = with_tokens(request, options)
            async with self._acquired(attributes, asked, held) as (lease, _):
                started = self._clock()
                with self._operation(attributes) as learned:
                    async with self._throttling(lease):
                        async for delta in self.backend.stream(request):
                            if delta.usage is not None:
                                if held is None:
                                    self._report(lease, delta.usage)
                                learned(answered_attributes(delta.usage))
                            yield delta
                answered(self._clock() - started)

    @contextmanager
    def _operation(
        self, attributes: dict[str, str | int]
    ) -> Iterator[Callable[[Attributes], None]]:
        """One call to the backend: its span, named ``chat {model}`` as OpenTelemetry's
        GenAI conventions name it, and its GenAI metrics, told to the observer once it
        answered or failed (with ``error.type``; cancelled, or a stream its reader left,
        it did neither). What the answer says (its usage, its model) is given to the
        function yielded, which puts it on both."""
        told: dict[str, AttributeValue] = dict(attributes)
        name = f"{attributes['gen_ai.operation.name']} {attributes['gen_ai.request.model']}"
        started = self._clock()
        with tracer().start_as_current_span(
            name, kind=SpanKind.CLIENT, attributes=attributes
        ) as span:

            def learned(more: Attributes) -> None:
                span.set_attributes(more)
                told.update(more)

            def ended() -> None:
                if self.observer is not None:
                    self.observer.operation_ended(Operation(told, self._clock() - started))

            try:
                yield learned
            except Exception as error:
                learned({"error.type": error_type(error)})
                ended()
                raise
            ended()

    @contextmanager
    def _observed(
        self, request: ChatRequest, options: CallOptions
    ) -> Iterator[Callable[[float], None]]:
        """Tell the observer how a call ended: its seconds holding the slot, or its error."""
        call = {"group": self.spec.id, "model_name": request.model, "stage": options.labels.stage}
        service_id = options.labels.service_id

        def answered(seconds: float) -> None:
            if self.observer is not None:
                self.observer.answered(seconds, call, service_id)

        try:
            yield answered
        except Exception as error:
            if self.observer is not None:
                self.observer.failed(error, call)
            raise

    @asynccontextmanager
    async def _throttling(self, lease: Lease) -> AsyncIterator[None]:
        """Around the backend call: a 429 is told to the slot source, which pauses and slows
        the whole group, before the slot is given back and the call retried."""
        try:
            yield
        except RateLimited as error:
            try:
                await self.slots.ask(Throttled(lease.group, lease.id, error.retry_after))
            except Exception:
                log.warning("telling the manager of a 429 failed", exc_info=True)
            raise

    def _report(self, lease: Lease, usage: Usage) -> None:
        self.slots.report_usage(lease, TokensUsed(usage.input_tokens, usage.output_tokens))

    async def server_restarts(self) -> list[str]:
        """A backend called from here runs no server of its own."""
        return []

    async def group_id(self) -> str:
        return self.spec.id

    async def aclose(self) -> None:
        """Close the backend's connections, once the answers on their way to the cache are
        stored."""
        if self.cache is not None:
            await self.cache.drain()
        await self.backend.aclose()


def with_tokens(request: ChatRequest, options: CallOptions) -> CallOptions:
    """The options with what the request may use at most, for its group's token budget."""
    prompt = sum(len(message.content) for message in request.messages)
    limit = DEFAULT_MAX_TOKENS if request.max_tokens is None else request.max_tokens
    return replace(options, tokens=estimate_tokens(prompt, limit))


def answered_attributes(usage: Usage) -> dict[str, int]:
    """A call span's GenAI attributes once its answer says what it used: none if it said
    nothing (a provider that sends no usage leaves both counts 0; an answer asked with a
    prompt has at least one input token)."""
    if usage == Usage():
        return {}
    return {
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
    }


def server_attributes(base_url: str) -> dict[str, str | int]:
    """``server.address`` and ``server.port`` of a backend's base URL (the port its scheme
    implies if it names none); none if it names no host."""
    parts = urlsplit(base_url)
    if not parts.hostname:
        return {}
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {"server.address": parts.hostname, "server.port": port}
