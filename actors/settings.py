"""raygate settings: one pydantic model, read once from a YAML file and the environment.

Precedence, highest first: environment (``RAYGATE_QUEUE__CONCURRENCY=8``; ``__``
nests), the YAML file, the defaults here. The file is the ``path`` given to
:func:`load_settings`, else ``$RAYGATE_CONFIG``, else none. Everything is
validated at load and frozen; a bad value fails with the field's dotted name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from actors.budget import BudgetLimits
from actors.errors import ConfigError
from actors.groups import ModelEntry, Provider

CONFIG_ENV = "RAYGATE_CONFIG"


class QueueSettings(BaseModel):
    """The manager's limits (seed "LLM Queue Migration Plan": enabled, concurrency)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # false: callers bypass the manager and call backends directly (parity mode).
    enabled: bool = True
    # Global cap on in-flight calls over all groups; None means no global cap.
    concurrency: PositiveInt | None = None
    # Per-group limit overrides by group id; None makes a group unlimited.
    group_limits: dict[str, PositiveInt | None] = Field(default_factory=dict)
    # Per-group requests and tokens per minute by group id, e.g. {"remote-api-openai":
    # {"rpm": 500, "tpm": 200000}}: a grant waits for a slot and for budget.
    group_budgets: dict[str, BudgetLimits] = Field(default_factory=dict)
    # A 429 pauses its group until its Retry-After and lowers the group's rate (see
    # actors.adaptive); false: each call only retries after its own 429.
    adaptive: bool = True
    # A holder's process passes its slot straight to its own waiter that the manager named
    # next, without waiting for the manager's round trip (see SlotEngine.next_in_line);
    # false: every freed slot goes through the manager.
    hand_off: bool = True
    # A holder renews its lease every third of this; a lease not renewed in time is reclaimed.
    lease_ttl_seconds: float = Field(default=60.0, gt=0)
    # Beyond this many waiters in one group, acquire fails at once with QueueFull.
    max_pending_per_group: PositiveInt = 10_000


class ProviderSettings(BaseModel):
    """How provider actors call their backends."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_seconds: float = Field(default=120.0, gt=0)
    retry_attempts: PositiveInt = 4
    retry_deadline_seconds: float = Field(default=300.0, gt=0)
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)
    # A model server raygate runs itself (the embedded model) is restarted when it
    # dies, at most this many times within the window; then its calls fail.
    model_server_restarts: NonNegativeInt = 3
    model_server_restart_window_seconds: float = Field(default=300.0, gt=0)


# The one place of each provider default: the cores that run without settings
# (retry policy, breaker, backends, restart policy) read theirs from here.
PROVIDER_DEFAULTS = ProviderSettings()


class PipelineSettings(BaseModel):
    """The plateau job (``python -m pipelines run``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # A model id of `models`; None runs the embedded model (no keys, no services).
    model: str | None = None
    # The GPU host of the embedded model; None: the node of the driver.
    embedded_host: str | None = None
    plateaus: PositiveInt = 3
    mapping_types: tuple[str, ...] = ("data", "applications", "technologies")
    # How often a stage may ask again after an answer that failed validation.
    output_attempts: PositiveInt = 3
    max_tokens: PositiveInt = 200
    # Whether its calls use the response cache (see providers.cache): a rerun of a
    # finished job then takes no backend call.
    cache: bool = True


class TelemetrySettings(BaseModel):
    """Where OpenTelemetry spans and metrics go (see actors.telemetry).

    Ray's own metrics (the dashboard, each node's Prometheus endpoint) are
    recorded whatever these say.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    traces: Literal["none", "console", "otlp"] = "none"
    metrics: Literal["none", "console", "otlp", "prometheus"] = "none"
    otlp_endpoint: str | None = None
    export_interval_seconds: PositiveFloat = 10.0
    prometheus_host: str = "127.0.0.1"
    prometheus_port: int = Field(default=9464, ge=1024, le=65535)


class ServeSettings(BaseModel):
    """The HTTP endpoint (``serve run serve.app:build``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Bearer keys clients present (``Authorization: Bearer <key>``).
    api_keys: tuple[SecretStr, ...] = ()
    # False serves without keys, with a warning at start; otherwise keys are required.
    auth: bool = True
    # Request bodies over this many bytes get 413.
    max_body_bytes: PositiveInt = 4 * 1024 * 1024
    # A client that shows this many wrong keys (bearer or login form) within the window
    # gets 429 for its next attempts, until the oldest leaves the window (per replica).
    auth_failure_limit: PositiveInt = 10
    auth_failure_window_seconds: float = Field(default=60.0, gt=0)
    # Requests each replica takes at once. Every waiting request must reach the
    # manager, where priority decides: a lower bound would queue them in Serve,
    # first come first served.
    max_ongoing_requests: PositiveInt = 20_000
    # Whether requests use the response cache (see providers.cache), unless one says
    # ``Cache-Control: no-cache`` or ``no-store``.
    cache: bool = False
    replicas: PositiveInt = 1
    # Pipeline jobs over HTTP: input files named by a job are read under data_dir
    # (none: inline services only); each job's records go to results_dir/<id>.jsonl
    # on the node that runs it; a finished job is kept this long for its status.
    data_dir: Path | None = None
    results_dir: Path = Path(tempfile.gettempdir()) / "raygate-results"
    job_retention_seconds: float = Field(default=3600.0, gt=0)


class CacheSettings(BaseModel):
    """The response cache (see providers.cache)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # false: no call uses the cache, whatever it asks (pipeline.cache, serve.cache).
    enabled: bool = True
    # The SQLite file, on the head node.
    path: Path = Path("~/.cache/raygate/responses.sqlite3")
    # Past this many bytes of answers, the least recently used go.
    max_bytes: PositiveInt = 256 * 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAYGATE_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    queue: QueueSettings = Field(default_factory=QueueSettings)
    # Model ids users ask for -> the backend serving them (see actors.groups.ModelEntry).
    models: dict[str, ModelEntry] = Field(default_factory=dict)
    providers: ProviderSettings = Field(default_factory=ProviderSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    # Keys of remote APIs; else each provider's usual variable (OPENAI_API_KEY, ...).
    api_keys: dict[Provider, SecretStr] = Field(default_factory=dict)

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
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    source = str(path) if path is not None else "the environment"
    data = _read_yaml(Path(path)) if path is not None else {}
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(source, _describe(exc)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), (f"cannot read the file: {exc.strerror}",)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(str(path), (f"malformed YAML{where}: {problem}",)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            str(path), (f"the top level must be a mapping, got {type(data).__name__}",)
        )
    return data


def _describe(exc: ValidationError) -> tuple[str, ...]:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        # Echo numbers and flags back; never echo strings, which may be secrets.
        got = error.get("input")
        shown = f" (got {got!r})" if isinstance(got, int | float | bool) else ""
        problems.append(f"{field}: {error['msg']}{shown}")
    return tuple(problems)
