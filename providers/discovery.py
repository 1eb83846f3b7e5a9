"""Models found on the servers: a bare model id resolved to the server that lists it.

    catalog = Catalog(settings, manager)              # one per process
    settings = await catalog.resolving("gpt-oss:20b")  # then resolve as ever

Ollama's and LM Studio's users call a model by the name their server lists
(``gpt-oss:20b``, ``qwen2.5-7b-instruct``). raygate asks each model server it
knows which models it serves: ``providers.servers``, and the servers of the
``models:`` entries that are not remote APIs. Ollama answers ``GET /api/tags``;
LM Studio, llama.cpp and vLLM answer ``GET /v1/models`` (see
:meth:`providers.http.Backend.model_names`). Each server is asked through its
provider actor, on the node where its loopback address means it, all at once,
each within ``ASK_SECONDS``. A server that does not answer is skipped with a
warning, never an error: its models are unknown until it answers.

A model id resolves (:func:`actors.groups.model_entry`) from the settings' own
``models:`` first, then from these names, then as ``provider/model``:

- a name that one server lists is that server's model, called by that name;
- a name that several servers list is theirs as a pool if one entry of
  ``models:`` pools them all (with its servers' limits and weights);
- else it is ambiguous: a call of it fails with AmbiguousModel, which names
  the servers and how to pool them.

Each process keeps one :class:`Catalog`, which asks the servers only for a
model id the settings do not name, at most once every
``providers.discovery_seconds``: a process that calls only named models never
asks. The embedded models are known without asking (providers.llamacpp).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

from actors.client import ManagerClient
from actors.groups import REMOTE_APIS, ModelEntry, Registry, ServerEntry
from actors.settings import Settings
from providers.actor import get_or_create_provider, options_for
from providers.llamacpp import EMBEDDED_MODELS

log = logging.getLogger(__name__)

# How long one server may take to list its models before it is skipped this time.
ASK_SECONDS = 5.0

# What each server that answered lists (see :func:`asked`).
Asks = Callable[[Settings], Awaitable[Mapping[ServerEntry, list[str]]]]


class Catalog:
    """One process's knowledge of the models its servers serve (see the module)."""

    def __init__(
        self,
        settings: Settings,
        manager: ManagerClient | None,
        *,
        ask: Asks | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._ask = ask or partial(asked, manager=manager)
        self._clock = clock
        self._found: Registry | None = None
        self._asked_at = 0.0
        # One ask of the servers at a time: whoever comes meanwhile takes its answer.
        self._asking = asyncio.Lock()

    async def resolving(self, model_id: str | None) -> Settings:
        """The settings to resolve ``model_id`` with (None: the default embedded model):
        with the models the servers list when the settings do not name it."""
        configured = self.settings.models
        if model_id is None or model_id in configured or model_id in EMBEDDED_MODELS:
            return self.settings
        return self.settings.model_copy(update={"models": await self.models()})

    async def models(self) -> Registry:
        """The settings' models, then those the servers list, asked again if the last
        answer is ``providers.discovery_seconds`` old."""
        every = self.settings.providers.discovery_seconds
        async with self._asking:
            stale = self._found is None or (
                every is not None and self._clock() - self._asked_at >= every
            )
            if stale:
                lists = await self._ask(self.settings) if every is not None else {}
                self._found = registry(self.settings.models, lists)
                self._asked_at = self._clock()
            assert self._found is not None
            return self._found


def servers_asked(settings: Settings) -> list[ServerEntry]:
    """The model servers the settings know, once each: ``providers.servers``, then each
    server of ``models:`` that is not a remote API."""
    named = [server for entry in settings.models.values() for server in entry.each_server()]
    servers: dict[str, ServerEntry] = {}
    for server in [*settings.providers.servers, *named]:
        if server.provider not in REMOTE_APIS:
            servers.setdefault(server.spec().id, server)
    return list(servers.values())


async def asked(settings: Settings, manager: ManagerClient | None) -> dict[ServerEntry, list[str]]:
    """What each server that answered lists."""
    servers = servers_asked(settings)
    lists = await asyncio.gather(*(_listed(server, settings, manager) for server in servers))
    return {
        server: names for server, names in zip(servers, lists, strict=True) if names is not None
    }


async def _listed(
    server: ServerEntry, settings: Settings, manager: ManagerClient | None
) -> list[str] | None:
    spec = server.spec()
    try:
        actor = get_or_create_provider(spec, options_for(spec.provider, settings), manager)
        async with asyncio.timeout(ASK_SECONDS):
            return await actor.model_names()
    except Exception as exc:
        reason = f"no answer within {ASK_SECONDS:g}s" if isinstance(exc, TimeoutError) else exc
        log.warning(
            "model server %s did not list its models (%s): its models are unknown until it does",
            spec.id,
            reason,
        )
        return None


def registry(models: Mapping[str, ModelEntry], lists: Mapping[ServerEntry, list[str]]) -> Registry:
    """The settings' ``models``, and each name the servers list that they do not name,
    as the module says."""
    serving: dict[str, list[ServerEntry]] = {}
    for server, names in lists.items():
        for name in dict.fromkeys(names):
            serving.setdefault(name, []).append(server)
    found: dict[str, ModelEntry] = {}
    ambiguous: dict[str, tuple[str, ...]] = {}
    for name, servers in serving.items():
        if name in models:
            continue
        if len(servers) == 1:
            one = servers[0]
            found[name] = ModelEntry(
                provider=one.provider, base_url=one.base_url, host=one.host, name=name
            )
        elif (pool := _pooled(models, servers)) is not None:
            found[name] = ModelEntry(servers=pool, name=name)
        else:
            ambiguous[name] = tuple(server.spec().id for server in servers)
    return Registry({**found, **models}, ambiguous)


def _pooled(
    models: Mapping[str, ModelEntry], servers: list[ServerEntry]
) -> tuple[ServerEntry, ...] | None:
    """``servers`` as a pool of ``models`` has them (its limits and weights), if one
    pools them all."""
    ids = {server.spec().id for server in servers}
    for entry in models.values():
        pooled = tuple(server for server in entry.servers if server.spec().id in ids)
        if len(pooled) == len(ids):
            return pooled
    return None
