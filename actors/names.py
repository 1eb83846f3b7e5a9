"""The names users see in Ray (``ray list actors``, the dashboard): one place for them."""

from __future__ import annotations

# The Ray namespace of every raygate actor.
NAMESPACE = "raygate"
# The cluster's one ConcurrencyManager.
MANAGER_NAME = "concurrency-manager"
# The cluster's response cache (see providers.cache).
CACHE_NAME = "response-cache"
