"""The ProviderActor: one per backend instance, every call gated through the manager.

A thin shell over :class:`providers.gated.GatedProvider`. Where it runs:

- a remote API or remote server: anywhere (it only makes HTTP calls);
- a server on loopback of a named GPU host: only on the node that carries the
  custom resource ``gpu_host:<host>`` (``ray start --resources='{"gpu_host:a": 1}'``);
- a server on loopback with no host named: on the node of the caller that
  creates it, the machine where that loopback address was meant.

Actors are named ``provider:<group id>`` in the ``raygate`` namespace and got
with get-if-exists, so every driver and job shares one per backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import ray
from pydantic import SecretStr
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.client import ManagerClient
from actors.groups import GroupSpec, ResourceKind
from actors.manager import NAMESPACE
from actors.settings import Settings
from actors.slots import NoSlots, SlotSource
from actors.waitqueue import DEFAULT_PRIORITY
from providers.breaker import CircuitBreaker
from providers.factory import api_key_for, build_backend
from providers.gated import GatedProvider
from providers.models import ChatRequest, ChatResponse, StreamDelta
from providers.openai import SchemaStyle
from providers.retry import RetryPolicy

GPU_HOST_RESOURCE = "gpu_host:{host}"


@dataclass(frozen=True)
class ProviderOptions:
    """Everything a provider actor needs besides its group. The key prints as '**********'."""

    api_key: SecretStr | None = None
    timeout: float = 120.0
    schema_style: SchemaStyle = "json_schema"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker_cooldown: float = 30.0


def options_for(
    spec: GroupSpec, settings: Settings, *, schema_style: SchemaStyle = "json_schema"
) -> ProviderOptions:
    """Options from the settings; raises MissingAPIKey for a remote API without a key."""
    tuning = settings.providers
    return ProviderOptions(
        api_key=api_key_for(spec.provider, settings),
        timeout=tuning.timeout_seconds,
        schema_style=schema_style,
        retry=RetryPolicy(attempts=tuning.retry_attempts, deadline=tuning.retry_deadline_seconds),
        breaker_cooldown=tuning.breaker_cooldown_seconds,
    )


@ray.remote(num_cpus=0, max_restarts=-1)
class ProviderActor:
    def __init__(self, spec: GroupSpec, options: ProviderOptions, manager: Any | None) -> None:
        slots: SlotSource = ManagerClient(manager) if manager is not None else NoSlots()
        backend = build_backend(
            spec,
            api_key=options.api_key,
            timeout=options.timeout,
            schema_style=options.schema_style,
        )
        self._provider = GatedProvider(
            backend,
            spec,
            slots,
            retry=options.retry,
            breaker=CircuitBreaker(backend.provider, spec.id, cooldown=options.breaker_cooldown),
        )
        self._slots = slots
        self._started = False

    async def _start(self) -> None:
        if not self._started:
            await self._provider.start()
            self._started = True

    async def chat(
        self,
        request: ChatRequest,
        priority: int = DEFAULT_PRIORITY,
        request_id: str | None = None,
        queue_timeout: float | None = None,
    ) -> ChatResponse:
        await self._start()
        return await self._provider.chat(
            request, priority=priority, request_id=request_id, queue_timeout=queue_timeout
        )

    async def stream(
        self,
        request: ChatRequest,
        priority: int = DEFAULT_PRIORITY,
        request_id: str | None = None,
        queue_timeout: float | None = None,
    ) -> AsyncIterator[StreamDelta]:
        """Call as ``actor.stream.options(num_returns="streaming").remote(...)``."""
        await self._start()
        async for delta in self._provider.stream(
            request, priority=priority, request_id=request_id, queue_timeout=queue_timeout
        ):
            yield delta

    async def can_run_immediately(self) -> bool:
        """Would a call start now, without waiting for a slot?"""
        await self._start()
        if isinstance(self._slots, ManagerClient):
            return await self._slots.can_group_run_immediately(self._provider.spec.id)
        return True

    def node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())


def placement(spec: GroupSpec) -> dict[str, Any]:
    """Ray scheduling options that keep a local server's actor on its GPU host."""
    if spec.kind is not ResourceKind.LOCAL_SERVER:
        return {}
    if spec.host:
        return {"resources": {GPU_HOST_RESOURCE.format(host=spec.host): 0.001}}
    here = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=here, soft=False)}


def get_or_create_provider(spec: GroupSpec, options: ProviderOptions, manager: Any | None) -> Any:
    """The cluster's provider actor for this group; ``manager=None`` calls without gating."""
    return ProviderActor.options(  # type: ignore[attr-defined]
        name=f"provider:{spec.id}",
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        **placement(spec),
    ).remote(spec, options, manager)
