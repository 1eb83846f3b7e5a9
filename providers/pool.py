"""A pooled model: one queue in front of its servers, and a downed server's calls moved on.

    provider, name = provider_for_model(settings, "llama", manager)   # a pool's model
    response = await provider.chat(request, CallOptions(priority=8))
    response.group                                   # the server that answered

A call asks the manager for a slot of the pool (the groups of its servers,
see :mod:`actors.engine`: it waits once, in each of their queues, and takes
the first slot it is the best waiter for), then runs on the server of the
group it was granted, in the slot the caller holds: from the caller's own
process where the server is in reach (a remote server; a server on loopback
of the caller's node), else through the server's provider actor, pinned to
its GPU host (see :mod:`providers.routing`).

A server found down (its provider actor lost with its node, its server
refusing connections, its circuit open) is taken out of rotation in the
manager for the breaker's cooldown: the pool's waiters go to its other
servers, and the call it failed is tried again at once, with the same
request id, on the others, once. Other retryable errors (429, 503, a
timeout) are retried as any call's are, each try waiting for a slot of the
pool again, so a retry may run on another server. With every server out,
calls fail at once with :class:`actors.errors.OutOfRotation`, which names
each server's reason. A call that uses the response cache is answered from it
when any server of the pool gave that answer before: the pool is one model (its
cache key names the pool, see :mod:`providers.cache`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from actors.groups import GroupSpec
from actors.leases import Lease, TokensUsed
from actors.ops import Register, TakeOut
from actors.options import DEFAULT_OPTIONS, CallOptions
from actors.settings import CacheSettings
from actors.slots import SlotSource
from providers.actor import reached_from_here
from providers.cache import ResponseCache, cache_key, get_or_create_cache
from providers.client import ProviderClient
from providers.errors import CircuitOpen, ProviderActorLost, ProviderError, ProviderUnavailable
from providers.gated import GatedProvider, with_tokens
from providers.models import ChatRequest, ChatResponse, StreamDelta, Usage
from providers.retry import RetryPolicy, with_retries

log = logging.getLogger(__name__)


def takes_out(error: BaseException) -> bool:
    """Whether ``error`` takes its server out of rotation: it says the server takes no
    calls (not just that it is busy, slow or was asked something wrong)."""
    unreachable = isinstance(error, ProviderUnavailable) and error.status is None
    return unreachable or isinstance(error, ProviderActorLost | CircuitOpen)


@dataclass(frozen=True)
class Server:
    """One server of a pool: its group, its provider actor, and how to build its backend's
    provider in the caller's own process."""

    spec: GroupSpec
    actor: ProviderClient
    nearby: Callable[[], GatedProvider]
    # Whether this process made the actor (none ran), so it runs on this node: the reach
    # of its server is known without waiting for the actor to start. Not in another
    # process the pool travels to.
    made_here: bool = False


class PooledProvider:
    def __init__(
        self,
        model: str,
        servers: Mapping[str, Server],
        slots: SlotSource,
        *,
        retry: RetryPolicy,
        cooldown: float,
        cache: CacheSettings | None = None,
    ) -> None:
        self.model = model
        # By group id, in the order the settings name them.
        self.servers = dict(servers)
        self.slots = slots
        self.retry = retry
        self.cooldown = cooldown
        # The cluster's response cache, for calls that ask for it; None: none.
        self.cache_settings = cache
        # What names the pool in cache keys: its model and its servers' groups.
        self.identity = f"pool:{model}:{','.join(self.servers)}"
        # By group, the server's provider in this process; None: reached through its actor.
        self._near: dict[str, GatedProvider | None] = {}
        # The finding of the servers not in _near yet, which the calls meanwhile share.
        self._locating: asyncio.Future[None] | None = None
        self._cache: ResponseCache | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Another process finds its own way to each server and to the cache.
        servers = {g: replace(s, made_here=False) for g, s in self.servers.items()}
        return {
            **self.__dict__,
            "servers": servers,
            "_near": {},
            "_locating": None,
            "_cache": None,
        }

    @property
    def pool(self) -> tuple[str, ...]:
        return tuple(self.servers)

    async def chat(
        self, request: ChatRequest, options: CallOptions = DEFAULT_OPTIONS
    ) -> ChatResponse:
        """Answer from the response cache if the call allows it and it has the answer of
        any of the pool's servers (no slot, no server); else on the server granted, and
        keep the answer there."""
        asking = with_tokens(request, options)
        failed_over = False

        async def attempt() -> ChatResponse:
            nonlocal failed_over
            try:
                return await self._call(request, asking)
            except ProviderError as error:
                if failed_over or not takes_out(error):
                    raise
                failed_over = True
            return await self._call(request, asking)

        async def call() -> ChatResponse:
            return await with_retries(attempt, self.retry)

        if self.cache_settings is None or not options.cache:
            return await call()
        if self._cache is None:
            self._cache = ResponseCache(partial(get_or_create_cache, self.cache_settings))
        return await self._cache.through(cache_key(self.identity, request), call)

    async def _call(self, request: ChatRequest, options: CallOptions) -> ChatResponse:
        """One try: a slot of the pool, and the call on the server of its group."""
        await self._locate()
        asked = asyncio.get_running_loop().time()
        async with self.slots.slot(self.pool, options) as lease:
            waited = asyncio.get_running_loop().time() - asked
            async with self._out_if_down(lease):
                response = await self._reach(lease.group).chat(request, options, held=lease)
            self._report(lease, response.usage)
        return response.model_copy(update={"queue_wait_seconds": waited})

    async def stream(
        self, request: ChatRequest, options: CallOptions = DEFAULT_OPTIONS
    ) -> AsyncIterator[StreamDelta]:
        """One answer piece by piece, on the server granted; not retried (the caller may
        have used the pieces it got)."""
        asking = with_tokens(request, options)
        await self._locate()
        async with self.slots.slot(self.pool, asking) as lease, self._out_if_down(lease):
            async for delta in self._reach(lease.group).stream(request, options, held=lease):
                if delta.usage is not None:
                    self._report(lease, delta.usage)
                yield delta

    async def ready(self) -> None:
        """Return once a server of the pool can serve; those that cannot are taken out of
        rotation. Raises the first server's error if none can."""
        answers = await asyncio.gather(
            *(server.actor.ready() for server in self.servers.values()), return_exceptions=True
        )
        errors = {g: a for g, a in zip(self.servers, answers, strict=True) if a is not None}
        for group, error in errors.items():
            if not isinstance(error, ProviderError):
                raise error
            await self._mark_out(group, error)
        if len(errors) == len(self.servers):
            raise next(iter(errors.values()))

    async def aclose(self) -> None:
        """Close the connections this process opened to the pool's servers, once the
        answers on their way to the cache are there."""
        if self._cache is not None:
            await self._cache.drain()
        for near in self._near.values():
            if near is not None:
                await near.aclose()

    async def server_restarts(self) -> list[str]:
        """The pool runs no server of its own."""
        return []

    async def group_id(self) -> str:
        """What a failed call names as its group: the pool."""
        return f"pool:{self.model}"

    async def _locate(self) -> None:
        """Before holding a slot: make the pool's groups known to the manager, and learn
        which servers this process reaches itself: a loopback server's, from its provider
        actor's node (which may first have to start; one that does not answer is called
        through, and asked again next time). Done once for the calls that arrive
        meanwhile (a burst of them each building its own providers stalled the process
        for seconds), shielded so that one of them cancelled does not cancel it."""
        if all(group in self._near for group in self.servers):
            return
        if self._locating is None or self._locating.done():
            self._locating = asyncio.ensure_future(self._find())
        await asyncio.shield(self._locating)

    async def _find(self) -> None:
        unknown = [group for group in self.servers if group not in self._near]
        await asyncio.gather(*(self.slots.ask(Register(self.servers[g].spec)) for g in unknown))
        reached = await asyncio.gather(
            *(self._reached(self.servers[g]) for g in unknown), return_exceptions=True
        )
        for group, near in zip(unknown, reached, strict=True):
            if isinstance(near, BaseException) and not isinstance(near, Exception):
                raise near
            if not isinstance(near, Exception):
                self._near[group] = self.servers[group].nearby() if near else None

    @staticmethod
    async def _reached(server: Server) -> bool:
        return await reached_from_here(server.spec, None if server.made_here else server.actor)

    def _reach(self, group: str) -> GatedProvider | ProviderClient:
        """Who calls the server of ``group`` from here: this process, when it reaches the
        server (see :meth:`_locate`), else the server's provider actor."""
        return self._near.get(group) or self.servers[group].actor

    @asynccontextmanager
    async def _out_if_down(self, lease: Lease) -> AsyncIterator[None]:
        """Around a call on a server: if it says the server is down, the server leaves the
        rotation before the slot is given back (so no waiter is granted a slot there)."""
        try:
            yield
        except ProviderError as error:
            if takes_out(error):
                await self._mark_out(lease.group, error)
            raise

    async def _mark_out(self, group: str, error: ProviderError) -> None:
        try:
            await self.slots.ask(TakeOut(group, str(error), self.cooldown))
        except Exception:
            log.warning("taking %s out of rotation failed", group, exc_info=True)

    def _report(self, lease: Lease, usage: Usage) -> None:
        self.slots.report_usage(lease, TokensUsed(usage.input_tokens, usage.output_tokens))
