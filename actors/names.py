"""The names users see in Ray (``ray list actors``, the dashboard): one place for them,
and the one way raygate makes a named actor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ray.actor import ActorClass, ActorHandle

# The Ray namespace of every raygate actor.
NAMESPACE = "raygate"
# The cluster's one ConcurrencyManager.
MANAGER_NAME = "concurrency-manager"
# The cluster's response cache (see providers.cache).
CACHE_NAME = "response-cache"
# Ray's own resource of the head node: a little of it pins an actor to the one node a
# cluster cannot lose.
HEAD_NODE: Mapping[str, object] = {"resources": {"node:__internal_head__": 0.001}}


def this_node() -> dict[str, object]:
    """Placement (see :func:`named_actor`) on the node of the calling process, and no other."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=here, soft=False)}


def named_actor(
    actor_class: ActorClass,
    name: str,
    *args: object,
    placement: Mapping[str, object] | None = None,
    detached: bool = True,
) -> ActorHandle:
    """The actor ``name`` of ``actor_class`` (a ``@ray.remote`` class) in raygate's
    namespace, placed by ``placement`` (Ray options: resources, a scheduling strategy,
    restarts).

    ``detached``: the running one if any, else a new one made with ``args``, that
    outlives the process that made it. Else a new one that dies with its maker (its
    name must be free). The handle is for the typed client of the actor's module to
    wrap; nothing else should hold it.
    """
    options: dict[str, object] = {"name": name, "namespace": NAMESPACE, **(placement or {})}
    if detached:
        options.update(lifetime="detached", get_if_exists=True)
    return actor_class.options(**options).remote(*args)
