"""A model's backend called from the caller's own process, when it is in reach.

The Serve endpoint answers each request in a replica. Handing the call on to
the group's provider actor costs an actor call both ways (3-4 ms on a
2-core machine, more under load) that a replica can skip when it can reach
the backend itself:

- a remote API or a remote server: from any node;
- a server on loopback: only from the node its provider actor is pinned to,
  where that loopback address means that server;
- the embedded model: never, its actor runs (and restarts) the server.

Either way the call is the same: a slot of its group from the cluster's
manager, the same retries, breaker rules, metrics and spans. What differs:
the breaker and the HTTP connections are the caller's own, and a caller
that dies takes its calls with it (the manager frees their slots through
the caller's lifeline, as for any caller; see :mod:`actors.watch`).
"""

from __future__ import annotations

from actors.client import ManagerClient
from actors.groups import ResourceKind, model_entry
from actors.settings import Settings
from actors.slots import NoSlots
from providers.actor import gated_provider, get_or_create_provider, options_for, provider_for_model
from providers.client import ChatProvider
from providers.llamacpp import embedded_model


async def provider_in_reach(
    settings: Settings, model_id: str, manager: ManagerClient | None
) -> tuple[ChatProvider, str]:
    """The provider of ``model_id`` for a caller that calls its backend itself when it can
    (see the module's docstring), and the name its backend knows the model by.

    Raises UnknownModel, or MissingAPIKey for a remote API without a key.
    """
    entry = None if embedded_model(model_id) else model_entry(settings.models, model_id)
    if entry is None or entry.routed:
        # An embedded model, a pool, a model with fallbacks.
        return provider_for_model(settings, model_id, manager)
    [spec] = entry.specs()
    options = options_for(spec.provider, settings)
    name = entry.name or model_id
    if spec.kind is ResourceKind.LOCAL_SERVER:
        actor = get_or_create_provider(spec, options, manager)
        if not await actor.on_this_node():
            return actor, name
    slots = manager if manager is not None else NoSlots()
    return gated_provider(spec, options, slots), name
