"""raygate settings: one pydantic model, read once from a YAML file and the environment.

Precedence, highest first: environment (``RAYGATE_QUEUE__CONCURRENCY=8``; ``__``
nests), the YAML file, the defaults here. The file is the ``path`` given to
:func:`load_settings`, else ``$RAYGATE_CONFIG``, else none. Everything is
validated at load and frozen; a bad value fails with the field's dotted name.

This module holds :class:`Settings`, its sections, the rules that span sections
(one limit and one weight per server; fallbacks known and acyclic, as
:func:`actors.groups.fallback_problem` says) and :func:`load_settings`. Two
parts live next door, and are imported from here as before: the HTTP
endpoint's section, with its tenants and their rules
(:mod:`actors.servesettings`), and reading the file and wording its errors
(:mod:`actors.settingsfile`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from actors.budget import BudgetLimits
from actors.errors import ConfigError
from actors.groups import ModelEntry, Provider, ServerEntry, fallback_problem
from actors.servesettings import ServeSettings, TenantSettings
from actors.settingsfile import describe, read_source

__all__ = [
    "PROVIDER_DEFAULTS",
    "CacheSettings",
    "PipelineSettings",
    "ProviderSettings",
    "QueueSettings",
    "ServeSettings",
    "Settings",
    "TelemetrySettings",
    "TenantSettings",
    "load_settings",
]


class QueueSettings(BaseModel):
    """The manager's limits (seed "LLM Queue Migration Plan": enabled, concurrency)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        default=True,
        description="false: callers bypass the manager and call backends directly (parity mode).",
    )
    concurrency: PositiveInt | None = Field(
        default=None,
        description="A cap on in-flight calls over all groups, e.g. to keep all jobs "
        "under one shared API key's limit; none: no global cap.",
    )
    group_limits: dict[str, PositiveInt | None] = Field(
        default_factory=dict,
        description="Per-group limit overrides by group id "
        "(`local-ollama-http://localhost:11434@gpu-a: 2`); null makes a group unlimited. "
        "A local server's default is 1: what Ollama and LM Studio on one GPU handle; vLLM "
        "and llama.cpp with `--parallel N` take N.",
    )
    group_budgets: dict[str, BudgetLimits] = Field(
        default_factory=dict,
        description="Per-group requests and tokens per minute by group id "
        "(`remote-api-openai: {rpm: 500, tpm: 200000}`): a grant waits for a slot and "
        "for budget, in priority order.",
    )
    adaptive: bool = Field(
        default=True,
        description="A 429 pauses its group until its Retry-After and gives the group a "
        "requests-per-minute rate learned from its 429s (actors/adaptive.py); false: "
        "each call only retries after its own 429.",
    )
    hand_over: bool = Field(
        default=True,
        description="A freed slot whose next waiter is of the holder's own process is "
        "handed over there, without the manager's round trip (see the hand-over in "
        "docs/architecture.md); false: every freed slot goes through the manager.",
    )
    lend: bool = Field(
        default=True,
        description="A slot granted while nobody waits for its group is lent to the "
        "caller's process, which keeps it for its next calls of the group without asking "
        "until a waiter elsewhere makes the manager call it back (see actors/lending.py); "
        "false: every slot goes back to the manager after its call.",
    )
    fairness: Literal["fair", "fifo"] = Field(
        default="fair",
        description="Within one priority of a group: `fair` grants the flow (tenant, or "
        "by default the Ray job) that has had the least weighted service next, so one "
        "flow's burst cannot make the others wait behind all of it (actors/waitqueue.py); "
        "`fifo`: by arrival alone, across flows.",
    )
    lease_ttl_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A holder renews its lease every third of this. A lease not renewed "
        "in time is reclaimed, unless Ray would report its holder's death: the backstop "
        "for a caller that names no process.",
    )
    max_pending_per_group: PositiveInt = Field(
        default=10_000,
        description="Beyond this many waiters in one group, acquire fails at once with "
        "QueueFull and the estimated wait.",
    )
    shards: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Manager actors the groups are split between, each group decided by "
        "one of them (a pool's servers together), each with its own journal "
        "(actors/shards.py): for more gated calls a second than one manager's event loop "
        "takes. Under a global cap (`concurrency`), the first keeps it and lends its slots "
        "to the others (actors/capacity.py).",
    )


class ProviderSettings(BaseModel):
    """How provider actors call their backends."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_seconds: float = Field(
        default=120.0, gt=0, description="The longest one backend call may take."
    )
    retry_attempts: PositiveInt = Field(
        default=4,
        description="Tries of a call, with full-jitter backoff or the server's "
        "Retry-After between them, the slot given back while it waits.",
    )
    retry_deadline_seconds: float = Field(
        default=300.0,
        gt=0,
        description="A call's tries and waits end within this: no wait starts that "
        "would end past it.",
    )
    breaker_cooldown_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a group's circuit stays open after its backend failed "
        "(timeouts, 5xx), its calls failing at once, before one call probes it.",
    )
    model_server_restarts: NonNegativeInt = Field(
        default=3,
        description="A model server raygate runs itself (the embedded model) is "
        "restarted when it dies, at most this many times within the window; then its "
        "calls fail.",
    )
    model_server_restart_window_seconds: float = Field(
        default=300.0, gt=0, description="The window of `model_server_restarts`."
    )
    servers: tuple[ServerEntry, ...] = Field(
        default=(),
        description="Model servers whose models are called by the names they list "
        "(Ollama's tags, a `/v1/models`), besides the servers `models:` names.",
    )
    discovery_seconds: PositiveFloat | None = Field(
        default=60.0,
        description="How often, at most, raygate asks the servers which models they "
        "serve (at the first call of a model the settings do not name, then when that "
        "answer is this old); none: never, every model is named in `models:`.",
    )


# The one place of each provider default: the cores that run without settings
# (retry policy, breaker, backends, restart policy) read theirs from here.
PROVIDER_DEFAULTS = ProviderSettings()


class PipelineSettings(BaseModel):
    """The plateau job (``python -m pipelines run``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = Field(
        default=None,
        description="A model id of `models`; none runs the embedded model (no keys, no services).",
    )
    embedded_host: str | None = Field(
        default=None,
        description="The GPU host of the embedded model; none: the node of the driver.",
    )
    plateaus: PositiveInt = Field(default=3, description="Plateaus per service.")
    mapping_types: tuple[str, ...] = Field(
        default=("data", "applications", "technologies"),
        description="What each plateau's features are mapped to.",
    )
    output_attempts: PositiveInt = Field(
        default=3,
        description="How often a stage may ask again after an answer that failed validation.",
    )
    max_tokens: PositiveInt = Field(default=200, description="Tokens per answer, at most.")
    cache: bool = Field(
        default=True,
        description="Whether its calls use the response cache: a rerun of a finished "
        "job then takes no backend call.",
    )
    transcripts: bool = Field(
        default=False,
        description="Write, beside a run's results (`<out>.transcript.jsonl`), one JSON "
        "line per backend call: who asked, where it went, its wait, time, tokens, outcome.",
    )
    transcripts_text: bool = Field(
        default=True,
        description="Whether a transcript line holds the call's messages and its answer.",
    )


class TelemetrySettings(BaseModel):
    """Where OpenTelemetry spans and metrics go (see actors.telemetry).

    Ray's own metrics (the dashboard, each node's Prometheus endpoint) are
    recorded whatever these say.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    traces: Literal["none", "console", "otlp"] = Field(
        default="none", description="Where spans go."
    )
    metrics: Literal["none", "console", "otlp", "prometheus"] = Field(
        default="none", description="Where OpenTelemetry metrics go."
    )
    otlp_endpoint: str | None = Field(default=None, description="The OTLP collector, for `otlp`.")
    export_interval_seconds: PositiveFloat = Field(
        default=10.0, description="How often metrics are exported."
    )
    prometheus_host: str = Field(
        default="127.0.0.1", description="Where the `prometheus` exporter listens."
    )
    prometheus_port: int = Field(
        default=9464, ge=1024, le=65535, description="The `prometheus` exporter's port."
    )


class CacheSettings(BaseModel):
    """The response cache (see providers.cache)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        default=True,
        description="false: no call uses the cache, whatever it asks (`pipeline.cache`, "
        "`serve.cache`).",
    )
    path: Path = Field(
        default=Path("~/.cache/raygate/responses.sqlite3"),
        description="The SQLite file, on the head node.",
    )
    max_bytes: PositiveInt = Field(
        default=256 * 1024 * 1024,
        description="Past this many bytes of answers, the least recently used go.",
    )


class Settings(BaseSettings):
    """All of raygate's settings."""

    model_config = SettingsConfigDict(
        env_prefix="RAYGATE_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    queue: QueueSettings = Field(default_factory=QueueSettings)
    models: dict[str, ModelEntry] = Field(
        default_factory=dict,
        description="Model ids users ask for, each with the backend serving it "
        "(`provider`, `base_url`, `host`, `name`), or the servers of its pool "
        "(`servers`).",
    )
    providers: ProviderSettings = Field(default_factory=ProviderSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    api_keys: dict[Provider, SecretStr] = Field(
        default_factory=dict,
        description="Keys of remote APIs by provider; else each provider's usual "
        "variable (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`).",
    )

    @model_validator(mode="after")
    def _one_limit_per_server(self) -> Settings:
        """A server named by several models (one Ollama serving two pooled models) is
        one group with one limit and one weight: they may not disagree, nor with
        `queue.group_limits`."""
        for said in (self._limits_said(), self._weights_said()):
            first: dict[str, tuple[float | None, str]] = {}
            for group, value, where in said:
                before = first.setdefault(group, (value, where))
                if before[0] != value:
                    field = where.rpartition(".")[2]
                    raise ValueError(
                        f"{where} is {value}, but {before[1]} gives {group} the {field} "
                        f"{before[0]}: one server, one {field}"
                    )
        return self

    @model_validator(mode="after")
    def _fallbacks_known_and_acyclic(self) -> Settings:
        if (problem := fallback_problem(self.models)) is not None:
            raise ValueError(problem)
        return self

    def group_limits(self) -> dict[str, int | None]:
        """Each group's configured limit: `queue.group_limits`, and each deployment's."""
        return {group: limit for group, limit, _ in self._limits_said()}

    def group_weights(self) -> dict[str, float]:
        """Each group's share of a pool's new calls: each deployment's `weight`."""
        return {group: weight for group, weight, _ in self._weights_said()}

    def _limits_said(self) -> Iterator[tuple[str, int | None, str]]:
        """Each limit the settings give a group, with the field that gives it:
        `queue.group_limits` first, then the servers' `limit`."""
        for group, limit in self.queue.group_limits.items():
            yield group, limit, "queue.group_limits"
        for group, server, where in self._servers_said():
            if server.limit is not None:
                yield group, server.limit, f"{where}.limit"

    def _weights_said(self) -> Iterator[tuple[str, float, str]]:
        """Each weight the models' servers give a group, with the field that gives it."""
        for group, server, where in self._servers_said():
            if server.weight is not None:
                yield group, server.weight, f"{where}.weight"

    def _servers_said(self) -> Iterator[tuple[str, ServerEntry, str]]:
        """Each server a pool or `providers.servers` names: its group, itself, and where."""
        for model_id, entry in self.models.items():
            for n, server in enumerate(entry.servers):
                yield server.spec().id, server, f"models.{model_id}.servers.{n}"
        for n, server in enumerate(self.providers.servers):
            yield server.spec().id, server, f"providers.servers.{n}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)


def load_settings(path: str | Path | None = None) -> Settings:
    """Read, validate and freeze the settings; raise ConfigError naming each bad field."""
    source, data = read_source(path)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(source, describe(exc)) from None
    except SettingsError as exc:  # a RAYGATE_ variable whose value is not the JSON due
        raise ConfigError("the environment", (f"{exc}: its value is not JSON",)) from None
