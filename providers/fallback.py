"""A model's fallbacks: the models that answer the calls this one cannot.

    models:
      llama:
        servers: [...]
        fallbacks: [openai/gpt-4o-mini]
        fallback_after_seconds: 2

A call of ``llama`` goes to the next model of its fallbacks, at once, when
the manager estimates its wait for llama past ``fallback_after_seconds`` (it
is then not queued for llama at all: see ``CallOptions.max_wait``), when
none of llama's servers takes calls (``OutOfRotation``, or a call that
found its one server down: see :func:`providers.pool.takes_out`), or when
llama's server says the request does not fit its context window
(``ContextTooLong``). A fallback with a ``fallback_after_seconds`` of its
own falls back the same way; the last one waits. The call keeps its options
(priority, flow, request id, labels); its request names the fallback's
model, so the call's span (``gen_ai.request.model``) and metrics
(``model_name``) name the model that answered, and the answer says which
model was asked (``ChatResponse.fallback_from``). ``CallOptions.fallbacks =
False`` (over HTTP, ``X-Fallback: off``) keeps a call on the model asked.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from actors.errors import OutOfRotation, WaitTooLong
from actors.ops import FellBack
from actors.options import DEFAULT_OPTIONS, CallOptions
from actors.slots import SlotSource
from providers.client import ModelProvider
from providers.errors import ContextTooLong
from providers.metrics import FallbackMetrics
from providers.models import ChatRequest, ChatResponse, StreamDelta
from providers.pool import takes_out

log = logging.getLogger(__name__)

# What a model's fallbacks answer instead of it (and a server found down).
FALLS_BACK_ON = (WaitTooLong, OutOfRotation, ContextTooLong)


def falls_back(error: Exception) -> bool:
    """Whether a fallback answers a call that failed with ``error``."""
    return isinstance(error, FALLS_BACK_ON) or takes_out(error)


@dataclass(frozen=True)
class Step:
    """One model of the chain: its id, its provider, the name its backends know it by,
    and how long a call may wait for it before the next one answers (None: as long as it
    takes)."""

    model: str
    provider: ModelProvider
    name: str
    after: float | None


class FallbackProvider:
    def __init__(self, steps: Sequence[Step], slots: SlotSource) -> None:
        # The model asked for first, then its fallbacks in order.
        self.steps = tuple(steps)
        # Told of each call that fell back, for the queue's stats.
        self.slots = slots
        self._metrics: FallbackMetrics | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_metrics": None}  # each process records its own

    def _tries(
        self, request: ChatRequest, options: CallOptions
    ) -> Iterator[tuple[int, bool, ModelProvider, ChatRequest, CallOptions]]:
        """Each step a call tries, in order: its number, whether it is the last (its error
        is the call's), its provider, and the request and options it is asked with."""
        for n, step in enumerate(self.steps):
            last = n == len(self.steps) - 1 or not options.fallbacks
            asking = options if last else replace(options, max_wait=step.after)
            yield n, last, step.provider, request.model_copy(update={"model": step.name}), asking
            if last:
                return

    async def _fall_back(self, n: int, last: bool, error: Exception) -> None:
        """Step ``n`` failed with ``error``: raise it, unless the next step takes the call
        (counted in the metric ``llm_fallbacks`` and the queue's stats)."""
        if last or not falls_back(error):
            raise error
        if self._metrics is None:
            self._metrics = FallbackMetrics()
        asked, fallback, reason = self.steps[0].model, self.steps[n + 1].model, type(error).__name__
        self._metrics.fell_back(asked, fallback, reason)
        log.info("a call of %s goes to its fallback %s: %s", asked, fallback, error)
        try:
            await self.slots.ask(FellBack(asked, fallback, reason))
        except Exception:
            log.warning("counting a fallback of %s in the stats failed", asked, exc_info=True)

    async def chat(
        self, request: ChatRequest, options: CallOptions = DEFAULT_OPTIONS
    ) -> ChatResponse:
        for n, last, provider, asked, asking in self._tries(request, options):
            try:
                response = await provider.chat(asked, asking)
            except Exception as error:
                await self._fall_back(n, last, error)
                continue
            if n == 0:
                return response
            return response.model_copy(update={"fallback_from": self.steps[0].model})
        raise AssertionError("the last step raises or answers")

    async def stream(
        self, request: ChatRequest, options: CallOptions = DEFAULT_OPTIONS
    ) -> AsyncIterator[StreamDelta]:
        """Streamed by the first model that takes the call (before its first piece: a
        stream that failed midway is not started again elsewhere)."""
        for n, last, provider, asked, asking in self._tries(request, options):
            pieces = provider.stream(asked, asking)
            try:
                first = await anext(aiter(pieces))
            except StopAsyncIteration:
                return
            except Exception as error:
                await self._fall_back(n, last, error)
                continue
            yield first
            async for delta in pieces:
                yield delta
            return

    async def ready(self) -> None:
        """Return once the model asked for, or else one of its fallbacks, can serve."""
        for n, step in enumerate(self.steps):
            try:
                await step.provider.ready()
            except Exception:
                if n == len(self.steps) - 1:
                    raise
                log.warning("%s cannot serve; its fallbacks will", step.model, exc_info=True)
            else:
                return

    async def server_restarts(self) -> list[str]:
        return await self.steps[0].provider.server_restarts()

    async def group_id(self) -> str:
        return await self.steps[0].provider.group_id()

    async def aclose(self) -> None:
        for step in self.steps:
            await step.provider.aclose()
