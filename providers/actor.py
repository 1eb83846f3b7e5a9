"""The ProviderActor: one per backend instance, every call gated through the manager.

A thin shell over :class:`providers.gated.GatedProvider`. Where it runs:

- a remote API or remote server: anywhere (it only makes HTTP calls);
- a server on loopback of a named GPU host: only on a node labelled
  ``raygate.io/gpu-host=<host>`` (``ray start --labels raygate.io/gpu-host=a``; on
  KubeRay, the worker group's labels), by Ray's ``label_selector``; with no live
  node so labelled, :class:`providers.errors.NoGpuHost` says so instead of an actor
  pending for good;
- a server on loopback with no host named: on the node of the caller that
  creates it, the machine where that loopback address was meant.

Actors are named ``provider:<group id>`` in the ``raygate`` namespace and got
with get-if-exists, so every driver and job shares one per backend. The
embedded models (:class:`EmbeddedModelActor`) each run their own llama.cpp
server, named ``provider:embedded-<model id>@<host>``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial

import ray
from pydantic import SecretStr

from actors.callers import Caller
from actors.client import ManagerClient
from actors.groups import GPU_HOST_LABEL, GroupSpec, Provider, ResourceKind, classify
from actors.leases import Lease
from actors.names import NAMESPACE, named_actor, this_node
from actors.ops import CanRun
from actors.options import DEFAULT_OPTIONS, CallOptions
from actors.settings import PROVIDER_DEFAULTS, CacheSettings, Settings, TelemetrySettings
from actors.slots import SlotSource, slots_of
from actors.telemetry import configure_telemetry
from actors.watch import CallerCalls, LifelineHost
from providers.breaker import CircuitBreaker
from providers.cache import ResponseCache, get_or_create_cache
from providers.client import EmbeddedModelClient, ProviderClient
from providers.errors import NoGpuHost
from providers.factory import api_key_for, build_backend
from providers.gated import GatedProvider
from providers.http import Backend
from providers.llamacpp import DEFAULT_EMBEDDED, EmbeddedModel, LlamaCppServer
from providers.metrics import CallMetrics
from providers.models import ChatRequest, ChatResponse, StreamDelta
from providers.openai import Quirks
from providers.retry import RetryPolicy
from providers.supervisor import RestartPolicy, ServerSupervisor, SupervisedBackend


@dataclass(frozen=True)
class ProviderOptions:
    """Everything a provider actor needs besides its group. The key prints as '**********'."""

    api_key: SecretStr | None = None
    timeout: float = PROVIDER_DEFAULTS.timeout_seconds
    # How an OpenAI-compatible server differs from OpenAI (ignored by other providers).
    quirks: Quirks = field(default_factory=Quirks)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker_cooldown: float = PROVIDER_DEFAULTS.breaker_cooldown_seconds
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    # For a model server raygate runs itself (the embedded model).
    restarts: RestartPolicy = field(default_factory=RestartPolicy)
    # The cluster's response cache, for calls that ask for it; None: none.
    cache: CacheSettings | None = None


def options_for(
    provider: Provider, settings: Settings, *, quirks: Quirks | None = None
) -> ProviderOptions:
    """Options from the settings; raises MissingAPIKey for a remote API without a key."""
    tuning = settings.providers
    return ProviderOptions(
        api_key=api_key_for(provider, settings),
        timeout=tuning.timeout_seconds,
        quirks=quirks or Quirks(),
        retry=RetryPolicy(attempts=tuning.retry_attempts, deadline=tuning.retry_deadline_seconds),
        breaker_cooldown=tuning.breaker_cooldown_seconds,
        telemetry=settings.telemetry,
        restarts=RestartPolicy(
            tuning.model_server_restarts, tuning.model_server_restart_window_seconds
        ),
        cache=settings.cache if settings.cache.enabled else None,
    )


def gated_provider(
    spec: GroupSpec,
    options: ProviderOptions,
    slots: SlotSource,
    backend: Backend | None = None,
    identity: str | None = None,
) -> GatedProvider:
    """The group's backend (built from ``options`` unless given) behind ``slots``, with the
    options' retries, breaker and response cache (its answers kept under ``identity``,
    by default the group), its calls counted in this process's metrics."""
    configure_telemetry(options.telemetry)
    backend = backend or build_backend(
        spec, api_key=options.api_key, timeout=options.timeout, quirks=options.quirks
    )
    return GatedProvider(
        backend,
        spec,
        slots,
        retry=options.retry,
        breaker=CircuitBreaker(backend.provider, spec.id, cooldown=options.breaker_cooldown),
        observer=CallMetrics(),
        cache=None
        if options.cache is None
        else ResponseCache(partial(get_or_create_cache, options.cache)),
        identity=identity,
    )


class _ProviderShell(LifelineHost):
    """What both provider actors answer; the remote classes only differ in their start.

    Each call names its caller; when Ray reports that caller dead (a pipeline
    whose driver was killed), its calls here are cancelled, which gives back
    their slots and waits (see :mod:`actors.watch`). Detached, as a host of
    its callers' lifelines must be.
    """

    _provider: GatedProvider
    _slots: SlotSource
    _calls: CallerCalls

    def _make(
        self,
        spec: GroupSpec,
        options: ProviderOptions,
        manager: ManagerClient | None,
        backend: Backend | None = None,
        identity: str | None = None,
    ) -> None:
        self._calls = CallerCalls()
        self._watch = self._calls.watch
        self._slots = slots_of(manager)
        self._provider = gated_provider(spec, options, self._slots, backend, identity)

    async def chat(
        self,
        request: ChatRequest,
        options: CallOptions = DEFAULT_OPTIONS,
        caller: Caller | None = None,
        held: Lease | None = None,
    ) -> ChatResponse:
        """One gated call (``held``: in a slot its caller holds, see GatedProvider.chat)."""
        with self._calls.running(caller):
            return await self._provider.chat(request, options, held)

    async def stream(
        self,
        request: ChatRequest,
        options: CallOptions = DEFAULT_OPTIONS,
        caller: Caller | None = None,
        held: Lease | None = None,
    ) -> AsyncIterator[StreamDelta]:
        """Call as ``actor.stream.options(num_returns="streaming").remote(...)``."""
        with self._calls.running(caller):
            async for delta in self._provider.stream(request, options, held):
                yield delta

    async def ready(self) -> None:
        """Return once calls can be served (raises what stops them, e.g. a server that fails)."""
        await self._provider.ready()

    def server_restarts(self) -> list[str]:
        """How each restart of a server this actor runs came about (none for other backends)."""
        return []

    async def model_names(self) -> list[str]:
        """The models the server lists (see providers.discovery): asked from here, the node
        where its loopback address means it."""
        return await self._provider.backend.model_names()

    async def can_run_immediately(self) -> bool:
        """Would a call start now, without waiting for a slot?"""
        await self._provider.ready()
        return await self._slots.ask(CanRun(self._provider.spec.id))

    def group(self) -> GroupSpec:
        return self._provider.spec

    def node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())


@ray.remote(num_cpus=0)
class ProviderActor(_ProviderShell):
    def __init__(
        self, spec: GroupSpec, options: ProviderOptions, manager: ManagerClient | None
    ) -> None:
        self._make(spec, options, manager)


@ray.remote(num_cpus=0)
class EmbeddedModelActor(_ProviderShell):
    """An embedded model: a llama.cpp server this actor starts, owns and stops.

    Served as an openai-compatible local-server group (limit 1) at the
    server's loopback port, on the GPU host the actor is pinned to.
    """

    def __init__(
        self,
        embedded: EmbeddedModel,
        options: ProviderOptions,
        manager: ManagerClient | None,
        host: str | None,
    ) -> None:
        model = embedded.path()
        server = LlamaCppServer(embedded, model)
        # Started by the first call (or ready()), on this actor's event loop, which
        # lives as long as the actor: the server dies with the thread that started it.
        self._supervisor = ServerSupervisor(server, options.restarts)
        spec = classify(Provider.OPENAI_COMPATIBLE, server.base_url, host=host)
        backend = SupervisedBackend(
            self._supervisor, group=spec.id, timeout=options.timeout, quirks=embedded.quirks
        )
        # Its answers are the model file's, whatever port the server has this run.
        identity = f"embedded:{model.name}:{model.stat().st_size}"
        self._make(spec, options, manager, backend, identity)

    async def ready(self) -> None:
        await super().ready()
        await self._supervisor.ready()

    async def server_pid(self) -> int | None:
        """The running server's process id, once it is ready."""
        await self._supervisor.ready()
        return self._supervisor.pid

    def server_restarts(self) -> list[str]:
        exits = self._supervisor.exits[: self._supervisor.restarts]
        return [f"{e.how} (pid {e.pid})" for e in exits]

    async def shutdown(self) -> None:
        """Stop the server, then this actor."""
        await self._supervisor.stop()
        await self._provider.aclose()
        ray.actor.exit_actor()


def placement(spec: GroupSpec) -> dict[str, object]:
    """Ray options that keep a local server's actor on its GPU host.

    Only an actor that may run anywhere is restarted by Ray. A local server's
    actor could only restart on its own node: when that node is lost, Ray
    would keep it restarting until the node is back, and a call pending on
    it may then neither answer nor fail. Not restarted, it is dead at once,
    every call to it fails with ProviderActorLost, and the next run gets a new
    one once that node is back (until then, NoGpuHost).
    """
    if spec.kind is not ResourceKind.LOCAL_SERVER:
        return {"max_restarts": -1}
    return {"max_restarts": 0, **local_placement(spec.host)}


def local_placement(host: str | None) -> dict[str, object]:
    """On the node labelled GPU host ``host`` (one must be alive: else NoGpuHost), or
    the caller's node when None."""
    if not host:
        return this_node()
    if not any(
        node["Alive"] and node.get("Labels", {}).get(GPU_HOST_LABEL) == host for node in ray.nodes()
    ):
        raise NoGpuHost(host)
    return {"label_selector": {GPU_HOST_LABEL: host}}


def get_or_create_provider(
    spec: GroupSpec, options: ProviderOptions, manager: ManagerClient | None
) -> ProviderClient:
    """The cluster's provider actor for this group; ``manager=None`` calls without gating."""
    name = _provider_name(spec, manager)
    handle = named_actor(ProviderActor, name, spec, options, manager, placement=placement(spec))
    return ProviderClient(handle, name)


def running_provider(spec: GroupSpec, manager: ManagerClient | None) -> ProviderClient | None:
    """The provider actor of this group if one runs (nothing made)."""
    name = _provider_name(spec, manager)
    try:
        return ProviderClient(ray.get_actor(name, namespace=NAMESPACE), name)
    except ValueError:
        return None


async def reached_from_here(spec: GroupSpec, actor: ProviderClient | None) -> bool:
    """Whether this process reaches the server of ``spec`` itself: a remote one from any
    node; one on loopback from the node its provider actor (``actor``, if one runs) runs
    on, which is a named GPU host's (known by its label, no actor asked), else the
    node of the process that made the actor: asked of the actor, this node if none runs
    (whoever makes it next from here makes it here)."""
    if spec.kind is not ResourceKind.LOCAL_SERVER:
        return True
    if spec.host is not None:
        labels: dict[str, str] = ray.get_runtime_context().get_node_labels()
        return labels.get(GPU_HOST_LABEL) == spec.host
    return actor is None or await actor.on_this_node()


def _provider_name(spec: GroupSpec, manager: ManagerClient | None) -> str:
    return _gated_or_direct(f"provider:{spec.id}", manager)


def _gated_or_direct(name: str, manager: ManagerClient | None) -> str:
    # Gated and direct (parity mode) actors of one backend are different actors.
    return name if manager is not None else f"{name}:direct"


def get_or_create_embedded_model(
    options: ProviderOptions,
    manager: ManagerClient | None,
    host: str | None = None,
    model: EmbeddedModel = DEFAULT_EMBEDDED,
) -> EmbeddedModelClient:
    """The cluster's server of the embedded ``model`` on ``host`` (the caller's node when
    None)."""
    name = _gated_or_direct(embedded_actor_name(model.id, host), manager)
    handle = named_actor(
        EmbeddedModelActor, name, model, options, manager, host, placement=local_placement(host)
    )
    return EmbeddedModelClient(handle, name)


def embedded_actor_name(model_id: str, host: str | None) -> str:
    """The name of the (gated) actor that serves the embedded model ``model_id`` on ``host``."""
    return f"provider:embedded-{model_id}@{host or 'local'}"
