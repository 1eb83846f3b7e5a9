"""Classification: which concurrency group a backend belongs to.

A group is the unit the manager limits. Remote APIs (OpenAI, Anthropic) take
hundreds of parallel calls, so each provider is one unlimited group. A model
server on loopback is one machine's GPU, so each such server is its own group
with a limit of 1; the same ``localhost`` URL on two GPU hosts is two servers,
so the host is part of the id. A model server reached over the network scales
on its own and is unlimited, like the seed "Parallel LLM Execution System" says.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from actors.errors import (
    AmbiguousModel,
    ClassificationError,
    EmptyPool,
    InvalidBaseURL,
    UnknownModel,
    UnknownProvider,
)


class ResourceKind(StrEnum):
    REMOTE_API = "remote-api"
    REMOTE_SERVER = "remote-server"
    LOCAL_SERVER = "local-server"


class Provider(StrEnum):
    ANTHROPIC = "anthropic"
    OPENAI = "openai"
    OLLAMA = "ollama"
    LMSTUDIO = "lmstudio"
    OPENAI_COMPATIBLE = "openai-compatible"


REMOTE_APIS = frozenset({Provider.ANTHROPIC, Provider.OPENAI})

# Where each provider listens when no base URL is configured. A generic
# OpenAI-compatible server (vLLM, llama.cpp) has no usual address.
DEFAULT_BASE_URLS: Mapping[Provider, str] = {
    Provider.ANTHROPIC: "https://api.anthropic.com",
    Provider.OPENAI: "https://api.openai.com/v1",
    Provider.OLLAMA: "http://localhost:11434",
    Provider.LMSTUDIO: "http://localhost:1234/v1",
}

LOCAL_SERVER_LIMIT = 1

# The groups of a pool: a call asked of a pool waits once, and takes a slot of
# whichever of them has room for it first (see actors.engine).
Pool = tuple[str, ...]


def pool_of(group: str | Pool) -> Pool:
    """The groups a call of ``group`` (one group's id, or a pool) may take, each once, in
    the order given."""
    pool = (group,) if isinstance(group, str) else tuple(dict.fromkeys(group))
    if not pool:
        raise EmptyPool()
    return pool


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """What classification decides for one backend."""

    id: str
    kind: ResourceKind
    provider: Provider
    base_url: str
    host: str | None
    default_limit: int | None


def parse_provider(provider: str | Provider) -> Provider:
    try:
        return Provider(provider)
    except ValueError:
        raise UnknownProvider(str(provider), tuple(p.value for p in Provider)) from None


def normalize_base_url(base_url: str) -> str:
    """Validate an http(s) URL and drop a trailing slash, keeping its path."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https"):
        raise InvalidBaseURL(base_url, "it must start with http:// or https://")
    if not parts.hostname:
        raise InvalidBaseURL(base_url, "it has no host name")
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily, on access
    except ValueError:
        raise InvalidBaseURL(base_url, "its port is not a number from 0 to 65535") from None
    return (
        parts._replace(scheme=parts.scheme.lower(), netloc=parts.netloc.lower())
        .geturl()
        .rstrip("/")
    )


def origin(base_url: str) -> str:
    """``scheme://host[:port]``: one server, whatever API path it is reached at."""
    parts = urlsplit(normalize_base_url(base_url))
    return f"{parts.scheme}://{parts.netloc}"


def is_loopback(base_url: str) -> bool:
    return is_loopback_host(urlsplit(normalize_base_url(base_url)).hostname or "")


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address, no port) means this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def classify(
    provider: str | Provider, base_url: str | None = None, host: str | None = None
) -> GroupSpec:
    """Map a backend to its group, kind and default limit (the table of docs/guide.md,
    "Concurrency groups").

    ``host`` names the GPU host a loopback server runs on; it is ignored for
    servers that are not on loopback, since those are one server for everyone.
    """
    provider = parse_provider(provider)
    if base_url is None:
        if provider not in DEFAULT_BASE_URLS:
            raise InvalidBaseURL("", f"provider {provider.value!r} needs a base URL")
        base_url = DEFAULT_BASE_URLS[provider]
    url = normalize_base_url(base_url)

    if provider in REMOTE_APIS:
        kind, group_id, limit = ResourceKind.REMOTE_API, f"remote-api-{provider.value}", None
        host = None
    elif is_loopback(url):
        kind, limit = ResourceKind.LOCAL_SERVER, LOCAL_SERVER_LIMIT
        group_id = f"local-{provider.value}-{origin(url)}"
        if host:
            group_id = f"{group_id}@{host}"
    else:
        kind, limit = ResourceKind.REMOTE_SERVER, None
        group_id = f"remote-{provider.value}-{origin(url)}"
        host = None
    return GroupSpec(
        id=group_id, kind=kind, provider=provider, base_url=url, host=host, default_limit=limit
    )


# What a server's settings mean, for a model of one server and for each server of a pool.
_PROVIDER_DOC = (
    "The backend's API: `openai`, `anthropic`, `ollama`, `lmstudio`, or `openai-compatible` "
    "(vLLM, llama.cpp's server)."
)
_BASE_URL_DOC = "The server's address; none: the provider's usual one."
# The Ray node label that names a GPU host: its value is the host's name (``host: a``).
GPU_HOST_LABEL = "raygate.io/gpu-host"
_HOST_DOC = (
    "The GPU host of a server on loopback: its provider actor runs on the node labelled "
    f"`{GPU_HOST_LABEL}=<host>`; none: the caller's node."
)


class ServerEntry(BaseModel):
    """One server of a model: its API, address, GPU host and limit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Provider = Field(description=_PROVIDER_DOC)
    base_url: str | None = Field(default=None, description=_BASE_URL_DOC)
    host: str | None = Field(default=None, description=_HOST_DOC)
    limit: PositiveInt | None = Field(
        default=None,
        description="The calls the server takes at once (its group's limit, as "
        "`queue.group_limits` would set it); none: the group's default (1 for a local "
        "server).",
    )
    weight: PositiveFloat | None = Field(
        default=None,
        description="Its share of the calls that find several of the pool's servers with "
        "room: a new call goes to the server with the fewest calls per weight, servers "
        "alike taking turns by weight (2: twice the calls of a server of weight 1); none: "
        "1.",
    )

    @model_validator(mode="after")
    def _classifiable(self) -> ServerEntry:
        # Fail at load, not at the first request, when it names no usable backend.
        try:
            self.spec()
        except ClassificationError as exc:
            raise ValueError(str(exc)) from None
        return self

    def spec(self) -> GroupSpec:
        return classify(self.provider, self.base_url, self.host)


class ModelEntry(BaseModel):
    """One model id users ask for, and the server or servers that serve it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Provider | None = Field(
        default=None, description=_PROVIDER_DOC.removesuffix(".") + "; or name its `servers`."
    )
    base_url: str | None = Field(default=None, description=_BASE_URL_DOC)
    host: str | None = Field(default=None, description=_HOST_DOC)
    name: str | None = Field(
        default=None, description="The name the backend knows the model by; none: the id."
    )
    servers: tuple[ServerEntry, ...] = Field(
        default=(),
        description="The servers of a pool, instead of `provider`, `base_url` and `host`: "
        "a call waits once, for a slot of whichever server has room for it first, and a "
        "server that is down takes no calls while the others serve.",
    )
    fallbacks: tuple[str, ...] = Field(
        default=(),
        description="Models that answer, in order, a call this one cannot: one whose wait "
        "would pass `fallback_after_seconds`, one whose servers are all down, one too long "
        "for its context window. Their own fallbacks are not followed.",
    )
    fallback_after_seconds: PositiveFloat | None = Field(
        default=None,
        description="A call whose wait for this model the manager estimates past this goes "
        "to the fallbacks at once; none: calls wait for this model however long.",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: object) -> object:
        if isinstance(data, dict) and "deployments" in data:
            raise ValueError("`deployments` is now `servers`: name a pool's servers there")
        return data

    @model_validator(mode="after")
    def _one_form(self) -> ModelEntry:
        if self.servers and (self.provider, self.base_url, self.host) != (None,) * 3:
            raise ValueError("name either servers or provider, base_url and host, not both")
        if not self.servers and self.provider is None:
            raise ValueError("name its provider (or its servers)")
        first: dict[str, int] = {}
        for n, spec in enumerate(self.specs()):
            if (before := first.setdefault(spec.id, n)) != n:
                raise ValueError(f"servers {before} and {n} are one server ({spec.id})")
        return self

    @property
    def routed(self) -> bool:
        """Whether its calls may go elsewhere than one server: a pool, or a model with
        fallbacks."""
        return len(self.each_server()) > 1 or bool(self.fallbacks)

    def each_server(self) -> tuple[ServerEntry, ...]:
        """Its servers; the single form as one."""
        if self.servers:
            return self.servers
        assert self.provider is not None
        return (ServerEntry(provider=self.provider, base_url=self.base_url, host=self.host),)

    def specs(self) -> tuple[GroupSpec, ...]:
        """The group of each of its servers: one, or a pool's."""
        return tuple(server.spec() for server in self.each_server())


class Registry(dict[str, ModelEntry]):
    """Model ids with their entries, as the settings' ``models`` are, and the ids known
    but refused: names that servers of no one pool list (see providers.discovery), whose
    entry raises AmbiguousModel."""

    def __init__(
        self, entries: Mapping[str, ModelEntry], ambiguous: Mapping[str, tuple[str, ...]]
    ) -> None:
        super().__init__(entries)
        self.ambiguous = dict(ambiguous)

    def __contains__(self, model_id: object) -> bool:
        return super().__contains__(model_id) or model_id in self.ambiguous

    def __getitem__(self, model_id: str) -> ModelEntry:
        if not super().__contains__(model_id) and model_id in self.ambiguous:
            raise AmbiguousModel(model_id, self.ambiguous[model_id])
        return super().__getitem__(model_id)


def model_entry(models: Mapping[str, ModelEntry], model_id: str) -> ModelEntry:
    """The registry's entry for ``model_id``, else one for a ``provider/model`` id
    (``openai/gpt-4o-mini``, ``ollama/llama3.2``) on the provider's usual address. A
    :class:`Registry` may refuse an id it knows (AmbiguousModel)."""
    if model_id in models:
        return models[model_id]
    provider, slash, name = model_id.partition("/")
    if slash and name and provider in DEFAULT_BASE_URLS:
        return ModelEntry(provider=Provider(provider), name=name)
    raise UnknownModel(model_id, tuple(models))


def fallback_problem(models: Mapping[str, ModelEntry]) -> str | None:
    """What is wrong with the models' fallbacks, if anything: each must name a model there
    is (not the one it is for), and following fallbacks from any model must never come
    back to it."""
    for model_id, entry in models.items():
        for n, fallback in enumerate(entry.fallbacks):
            where = f"models.{model_id}.fallbacks.{n}"
            if fallback == model_id:
                return f"{where} names the model itself"
            try:
                model_entry(models, fallback)
            except UnknownModel as exc:
                return f"{where}: {exc}"
    if (cycle := _fallback_cycle(models)) is not None:
        return f"models' fallbacks go round: {' -> '.join(cycle)}"
    return None


def _fallback_cycle(models: Mapping[str, ModelEntry]) -> list[str] | None:
    """Models whose fallbacks lead back to the first of them (named again at the end), if
    any do."""
    done: set[str] = set()

    def visit(model: str, path: list[str]) -> list[str] | None:
        if model in path:
            return [*path[path.index(model) :], model]
        if model in done or model not in models:
            return None
        for fallback in models[model].fallbacks:
            if (cycle := visit(fallback, [*path, model])) is not None:
                return cycle
        done.add(model)
        return None

    for model in models:
        if (cycle := visit(model, [])) is not None:
            return cycle
    return None
