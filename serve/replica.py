"""What one replica of the endpoint keeps between requests.

Each replica builds its own FastAPI app around one :class:`Replica` (see
:func:`serve.app.gateway_api`), which a route takes as a parameter of type
:data:`ThisReplica`: the settings, the tenants and their quotas, the clients
that guessed keys, the manager (None with ``queue.enabled`` false), the models
the servers list (see providers.discovery), and each model's provider, found once.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request
from ray.actor import ActorHandle
from starlette.applications import Starlette

from actors.client import ManagerClient
from actors.settings import Settings
from providers.client import ModelProvider
from providers.discovery import Catalog
from providers.routing import provider_in_reach
from serve.keyguesses import KeyGuesses
from serve.quota import TenantQuotas
from serve.tenants import Tenants


class Replica:
    def __init__(self, settings: Settings) -> None:
        serving = settings.serve
        self.settings = settings
        self.tenants = Tenants(serving)
        self.quotas = TenantQuotas(serving.replicas)
        self.guesses = KeyGuesses(serving.auth_failure_limit, serving.auth_failure_window_seconds)
        self.manager = ManagerClient.create(settings) if settings.queue.enabled else None
        # The models the servers list, for model ids the settings do not name.
        self.catalog = Catalog(settings, self.manager)
        # The cluster's scheduler of serve.schedules, if any (see serve.schedules).
        self.scheduler: ActorHandle | None = None
        # model id -> its provider and the name its backend knows the model by; found
        # once for all the requests that arrive meanwhile, and forgotten if that failed.
        self._providers: dict[str, asyncio.Future[tuple[ModelProvider, str]]] = {}

    async def provider(self, model: str) -> tuple[ModelProvider, str]:
        found = self._providers.get(model)
        if found is None:
            found = asyncio.ensure_future(self._found(model))
            self._providers[model] = found
        try:
            return await asyncio.shield(found)
        except Exception:
            if self._providers.get(model) is found:
                del self._providers[model]
            raise

    async def _found(self, model: str) -> tuple[ModelProvider, str]:
        settings = await self.catalog.resolving(model)
        return await provider_in_reach(settings, model, self.manager)

    def forget_provider(self, model: str) -> None:
        """Find ``model``'s provider again for the next request (its actor was lost)."""
        self._providers.pop(model, None)

    async def aclose(self) -> None:
        """Close the connections the providers opened."""
        for found in self._providers.values():
            if found.done() and not found.cancelled() and found.exception() is None:
                provider, _ = found.result()
                await provider.aclose()


def replica_of(app: Starlette) -> Replica:
    """The replica ``app`` serves from."""
    replica: Replica = app.state.replica
    return replica


async def _serving(request: Request) -> Replica:
    # A coroutine, as every dependency of the routes: FastAPI runs a plain function in its
    # thread pool, a hop (and a bounded pool) this lookup has no use for.
    return replica_of(request.app)


ThisReplica = Annotated[Replica, Depends(_serving)]
