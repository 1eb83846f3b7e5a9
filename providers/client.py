"""Typed access to a provider actor: no handle and no ``.remote`` outside this module.

    provider = get_or_create_provider(spec, options_for(spec.provider, settings), manager)
    response = await provider.chat(request, CallOptions(priority=8))

Cancelling the task that awaits ``chat`` (or stops reading ``stream``)
cancels the call in the provider actor, which then leaves the manager's
queue or gives its slot back: a call nobody waits for does not go on
holding a slot.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Protocol

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from actors.calls import cancellable, cancellable_stream, unwrap
from actors.groups import GroupSpec
from actors.leases import Lease
from actors.options import DEFAULT_OPTIONS, CallOptions
from actors.watch import caller_of
from providers.errors import ProviderActorLost
from providers.models import ChatRequest, ChatResponse, StreamDelta


class ChatProvider(Protocol):
    """What callers of a model need: a provider actor's client, or one in their own process."""

    async def chat(
        self, request: ChatRequest, options: CallOptions = DEFAULT_OPTIONS
    ) -> ChatResponse: ...

    def stream(
        self, request: ChatRequest, options: CallOptions = DEFAULT_OPTIONS
    ) -> AsyncIterator[StreamDelta]: ...


class ModelProvider(ChatProvider, Protocol):
    """What a run of the main job needs of its model: a provider actor's client, or a
    pool's (see :mod:`providers.pool`)."""

    async def ready(self) -> None:
        """Return once calls can be served; raise what keeps them from it."""
        ...

    async def server_restarts(self) -> list[str]:
        """How each restart of a model server it runs came about."""
        ...

    async def group_id(self) -> str:
        """The group its calls take slots of (a pool: the pool's name)."""
        ...

    async def aclose(self) -> None:
        """Close the connections this process opened for it (once the answers on their
        way to the response cache are kept)."""
        ...


class ProviderClient:
    def __init__(self, handle: ActorHandle, name: str) -> None:
        self.handle = handle
        self.name = name

    async def chat(
        self,
        request: ChatRequest,
        options: CallOptions = DEFAULT_OPTIONS,
        held: Lease | None = None,
    ) -> ChatResponse:
        """``held``: a slot of the actor's group this caller holds (see providers.pool)."""
        with self._actor_lost():
            caller = caller_of(self.handle)
            call = self.handle.chat.remote(request, options.flowing(), caller, held)
            response: ChatResponse = await cancellable(call)
        return response

    async def stream(
        self,
        request: ChatRequest,
        options: CallOptions = DEFAULT_OPTIONS,
        held: Lease | None = None,
    ) -> AsyncIterator[StreamDelta]:
        with self._actor_lost():
            pieces = self.handle.stream.options(num_returns="streaming").remote(
                request, options.flowing(), caller_of(self.handle), held
            )
            async for delta in cancellable_stream(pieces):
                yield delta

    async def ready(self) -> None:
        """Return once the provider can serve calls; raise what keeps it from serving."""
        with self._actor_lost():
            await cancellable(self.handle.ready.remote())

    @contextlib.contextmanager
    def _actor_lost(self) -> Iterator[None]:
        """Ray's error for a dead or restarting actor, as raygate's, naming the actor."""
        try:
            yield
        except RayActorError as exc:
            raise ProviderActorLost(self.name, type(exc).__name__) from exc

    async def group_id(self) -> str:
        with self._actor_lost():
            spec: GroupSpec = await unwrap(self.handle.group.remote())
        return spec.id

    async def aclose(self) -> None:
        """Its connections are its actor's own."""

    async def can_run_immediately(self) -> bool:
        with self._actor_lost():
            answer: bool = await unwrap(self.handle.can_run_immediately.remote())
        return answer

    async def server_restarts(self) -> list[str]:
        with self._actor_lost():
            restarts: list[str] = await unwrap(self.handle.server_restarts.remote())
        return restarts

    async def model_names(self) -> list[str]:
        """The models its server lists (see providers.discovery)."""
        with self._actor_lost():
            names: list[str] = await cancellable(self.handle.model_names.remote())
        return names

    async def node_id(self) -> str:
        with self._actor_lost():
            node: str = await unwrap(self.handle.node_id.remote())
        return node

    async def on_this_node(self) -> bool:
        """Whether the actor runs on the caller's node: where a loopback address means
        the server it is pinned beside (see :mod:`providers.routing`)."""
        here: str = ray.get_runtime_context().get_node_id()
        return await self.node_id() == here


class EmbeddedModelClient(ProviderClient):
    """The embedded model's provider, which also runs its model server."""

    async def server_pid(self) -> int | None:
        """The running server's process id, once it is ready."""
        pid: int | None = await unwrap(self.handle.server_pid.remote())
        return pid

    async def shutdown(self) -> None:
        """Stop the server, then the actor."""
        with contextlib.suppress(RayActorError):  # the actor exits instead of answering
            await self.handle.shutdown.remote()
