"""Which servers and fallbacks serve a model id: one answer, for the two ways to call it.

    provider, name = provider_for_model(settings, "llama", manager)   # any process
    provider, name = await provider_in_reach(settings, "llama", manager)   # this one

A model id is an embedded model's (served by its own actor on
``pipeline.embedded_host``), a model of the registry, or ``provider/model``
(see :func:`actors.groups.model_entry`). Its entry names one server, or several
(a pool, see :mod:`providers.pool`), and maybe fallbacks, each a model id
resolved the same way (see :mod:`providers.fallback`).

:func:`provider_for_model` calls each server through its provider actor: the
provider travels (to a pipeline actor, to another driver). The Serve endpoint
answers each request in a replica, and handing a call to a provider actor
costs an actor call both ways (3-4 ms on a 2-core machine, more under load), so
:func:`provider_in_reach` calls a server from the caller's own process where it
can: a remote API or remote server from any node, a server on loopback from the
node its provider actor is pinned to (where that address means that server);
the embedded model never (its actor runs and restarts its server). Either way a
call takes a slot of its group from the cluster's manager, with the same retries,
breaker rules, metrics and spans; what differs is that the breaker and the HTTP
connections are the caller's own, and a caller that dies takes its calls with it
(the manager frees their slots through its lifeline, see :mod:`actors.watch`).
"""

from __future__ import annotations

import logging
from functools import partial

from actors.client import ManagerClient
from actors.groups import GroupSpec, ModelEntry, Provider, model_entry
from actors.settings import Settings
from actors.slots import slots_of
from providers.actor import (
    gated_provider,
    get_or_create_embedded_model,
    get_or_create_provider,
    options_for,
    reached_from_here,
    running_provider,
)
from providers.client import ModelProvider
from providers.errors import NoGpuHost
from providers.fallback import FallbackProvider, Step
from providers.llamacpp import DEFAULT_EMBEDDED, embedded_model
from providers.pool import PooledProvider, Server

log = logging.getLogger(__name__)


def provider_for_model(
    settings: Settings, model_id: str | None, manager: ManagerClient | None
) -> tuple[ModelProvider, str]:
    """The provider that serves ``model_id`` (None: the default embedded model) through
    provider actors, and the name its backends know it by. Raises UnknownModel,
    ModelNotInstalled for an embedded model whose package is not installed,
    MissingAPIKey for a remote API without a key, or NoGpuHost for a local server on a
    GPU host no live node is labelled (a pool leaves such a server out while it has
    others)."""
    found = _embedded(settings, model_id, manager)
    if found is not None:
        return found
    chain = _chain(settings, model_id or DEFAULT_EMBEDDED.id)
    providers = [_servers(settings, m, entry, manager) for m, entry in chain]
    return _chained(chain, providers, manager)


async def provider_in_reach(
    settings: Settings, model_id: str, manager: ManagerClient | None
) -> tuple[ModelProvider, str]:
    """As :func:`provider_for_model`, calling each server from this process where it can
    (see the module's docstring); made once per model by its caller."""
    found = _embedded(settings, model_id, manager)
    if found is not None:
        return found
    chain = _chain(settings, model_id)
    providers = []
    for model, entry in chain:
        specs = entry.specs()
        if len(specs) == 1:
            providers.append(await _in_reach(specs[0], settings, manager))
        else:
            providers.append(_servers(settings, model, entry, manager))
    return _chained(chain, providers, manager)


def _embedded(
    settings: Settings, model_id: str | None, manager: ManagerClient | None
) -> tuple[ModelProvider, str] | None:
    embedded = DEFAULT_EMBEDDED if model_id is None else embedded_model(model_id)
    if embedded is None:
        return None
    options = options_for(Provider.OPENAI_COMPATIBLE, settings)
    host = settings.pipeline.embedded_host
    return get_or_create_embedded_model(options, manager, host, embedded), embedded.id


def _chain(settings: Settings, model_id: str) -> list[tuple[str, ModelEntry]]:
    """The model and its fallbacks, in order, each with its entry."""
    entry = model_entry(settings.models, model_id)
    return [(model_id, entry), *((f, model_entry(settings.models, f)) for f in entry.fallbacks)]


def _chained(
    chain: list[tuple[str, ModelEntry]],
    providers: list[ModelProvider],
    manager: ManagerClient | None,
) -> tuple[ModelProvider, str]:
    """The first model's provider, behind its fallbacks if it has some."""
    model_id, entry = chain[0]
    name = entry.name or model_id
    if len(chain) == 1:
        return providers[0], name
    steps = [
        Step(model, provider, entry.name or model, entry.fallback_after_seconds)
        for (model, entry), provider in zip(chain, providers, strict=True)
    ]
    return FallbackProvider(steps, slots_of(manager)), name


def _servers(
    settings: Settings, model_id: str, entry: ModelEntry, manager: ManagerClient | None
) -> ModelProvider:
    """The provider of ``entry``'s server, through its actor, or of its pool (whose calls
    reach each server from here when it can, see :mod:`providers.pool`)."""
    specs = entry.specs()
    if len(specs) == 1:
        return get_or_create_provider(specs[0], options_for(specs[0].provider, settings), manager)
    slots = slots_of(manager)
    servers = {}
    hostless: list[NoGpuHost] = []
    for spec in specs:
        options = options_for(spec.provider, settings)
        made_here = running_provider(spec, manager) is None
        try:
            actor = get_or_create_provider(spec, options, manager)
        except NoGpuHost as missing:  # the pool serves on its other hosts
            log.warning("model %r: server %s left out of its pool: %s", model_id, spec.id, missing)
            hostless.append(missing)
            continue
        nearby = partial(gated_provider, spec, options, slots)
        servers[spec.id] = Server(spec, actor, nearby, made_here)
    if not servers:
        raise hostless[0]
    return PooledProvider(
        model_id,
        servers,
        slots,
        retry=options.retry,
        cooldown=options.breaker_cooldown,
        cache=options.cache,
    )


async def _in_reach(
    spec: GroupSpec, settings: Settings, manager: ManagerClient | None
) -> ModelProvider:
    """One server, called from here unless it is on loopback of another node (then
    through its provider actor)."""
    options = options_for(spec.provider, settings)
    if await reached_from_here(spec, running_provider(spec, manager)):
        return gated_provider(spec, options, slots_of(manager))
    return get_or_create_provider(spec, options, manager)
