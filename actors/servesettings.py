"""The HTTP endpoint's settings: the ``serve`` section and its tenants.

:class:`ServeSettings` is the ``serve`` section of :class:`actors.settings.Settings`
(``serve run serve.app:build``); :class:`TenantSettings` is one entry of its
``tenants``. They live apart from the other sections because the endpoint's
tenants carry rules of their own, checked here at load: a tenant's name, each
key held by one tenant only, ``api_keys`` as the keys of the tenant ``default``,
and each tenant's ``rpm``, ``tpm`` and ``max_pending`` at least ``replicas``,
among which they are shared. Both models hold keys, so their errors never echo
what was given.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)


class TenantSettings(BaseModel):
    """One tenant of the HTTP endpoint: who holds which keys, and what it may ask for."""

    # Its errors never echo what was given: keys are among it.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    keys: tuple[SecretStr, ...] = Field(
        min_length=1, description="The tenant's bearer keys (`Authorization: Bearer <key>`)."
    )
    weight: PositiveFloat = Field(
        default=1.0,
        description="The tenant's share of a group at one priority, against the other "
        "tenants waiting there (`queue.fairness`).",
    )
    priority: int | None = Field(
        default=None,
        ge=1,
        le=10,
        description="Its requests' priority when they name none; none: 5, or "
        "`max_priority` if that is lower.",
    )
    max_priority: int = Field(
        default=10,
        ge=1,
        le=10,
        description="The highest priority it gets: a request above it is served at it, "
        "and its answer's `X-Priority` says so.",
    )
    models: tuple[str, ...] | None = Field(
        default=None,
        description="The model ids it may call (others answer 404, as unknown models "
        "do); none: every model.",
    )
    rpm: PositiveInt | None = Field(
        default=None,
        description="Its requests per minute; over them: 429. Each of `serve.replicas` "
        "admits its equal share (rounded down).",
    )
    tpm: PositiveInt | None = Field(
        default=None,
        description="Its tokens (prompt and completion) per minute; over them: 429. Each "
        "of `serve.replicas` admits its equal share (rounded down).",
    )
    max_pending: PositiveInt | None = Field(
        default=None,
        description="Its requests waiting or running at once; over them: 429. Each of "
        "`serve.replicas` admits its equal share (rounded down).",
    )
    max_jobs: PositiveInt | None = Field(
        default=None,
        description="Its pipeline jobs running at once; a job submitted or retried over "
        "them: 429. None: no bound.",
    )

    sees_all: bool = Field(
        default=False,
        description="Whether its keys see every caller's flows and waiting calls on the "
        "queue page and `/v1/queue` (true for `serve.api_keys`, the operator's); false: "
        "its own by name, everyone else's summed as `others`, and others' waiting calls "
        "without their request ids or labels.",
    )

    @model_validator(mode="after")
    def _default_within_ceiling(self) -> TenantSettings:
        if self.priority is not None and self.priority > self.max_priority:
            raise ValueError(f"priority {self.priority} is above max_priority {self.max_priority}")
        return self


# The tenant that serve.api_keys' holders are.
DEFAULT_TENANT = "default"
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ScheduleSettings(BaseModel):
    """A pipeline job run on a schedule (see serve.schedules)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cron: str = Field(
        description="When, in UTC: a cron expression (`0 2 * * *`: each night at 02:00); "
        "a sixth field gives seconds."
    )
    input: str = Field(description="Its services: a JSONL file under `serve.data_dir`.")
    priority: int | None = Field(
        default=None, description="Its calls' priority; none: its tenant's default."
    )
    tenant: str = Field(
        default=DEFAULT_TENANT,
        description="Whose job it is: a tenant of `serve.tenants`, or `default`.",
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, cron: str) -> str:
        if not croniter.is_valid(cron):
            raise ValueError(f"{cron!r} is not a cron expression (minute hour day month weekday)")
        return cron


class ServeSettings(BaseModel):
    """The HTTP endpoint (``serve run serve.app:build``)."""

    # Its errors never echo what was given: keys are among it.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    api_keys: tuple[SecretStr, ...] = Field(
        default=(),
        description="Bearer keys clients present (`Authorization: Bearer <key>`): the "
        "keys of the tenant `default` (every model, priorities 1-10, weight 1).",
    )
    tenants: dict[str, TenantSettings] = Field(
        default_factory=dict,
        description="Tenants by name, each with its keys, weight, default and highest "
        "priority, and models.",
    )
    auth: bool = Field(
        default=True,
        description="false serves without keys, with a warning at start; otherwise "
        "keys are required.",
    )
    max_body_bytes: PositiveInt = Field(
        default=4 * 1024 * 1024, description="Request bodies over this many bytes get 413."
    )
    auth_failure_limit: PositiveInt = Field(
        default=10,
        description="A client that shows this many wrong keys (bearer or the page's "
        "login) within the window gets 429 for its next attempts, until the oldest "
        "leaves the window (per replica; behind a proxy every client has the proxy's "
        "address, so raise it there).",
    )
    auth_failure_window_seconds: float = Field(
        default=60.0, gt=0, description="The window of `auth_failure_limit`."
    )
    max_ongoing_requests: PositiveInt = Field(
        default=20_000,
        description="Requests each replica takes at once. Every waiting request must "
        "reach the manager, where priority decides: a lower bound would queue them in "
        "Serve, first come first served.",
    )
    cache: bool = Field(
        default=False,
        description="Whether requests use the response cache, unless one says "
        "`Cache-Control: no-cache` or `no-store`.",
    )
    replicas: PositiveInt = Field(default=1, description="Serve replicas of the endpoint.")
    data_dir: Path | None = Field(
        default=None,
        description="Input files named by a pipeline job over HTTP are read under it; "
        "none: inline services only.",
    )
    results_dir: Path = Field(
        default=Path(tempfile.gettempdir()) / "raygate-results",
        description="Each HTTP pipeline job's files: its record (`<id>.job.json`), input, "
        "results (`<id>.jsonl`) and transcript, written as it runs, on the node that "
        "runs it; a folder every replica's node sees (the head's, or shared storage).",
    )
    job_retention_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A finished job's actor is kept this long; its files stay after.",
    )
    schedules: dict[str, ScheduleSettings] = Field(
        default_factory=dict,
        description="Pipeline jobs run on schedules, by name: each a cron expression, an "
        "input file, a priority and a tenant.",
    )

    @model_validator(mode="after")
    def _one_tenant_per_key(self) -> ServeSettings:
        if self.api_keys and DEFAULT_TENANT in self.tenants:
            raise ValueError(
                f"serve.api_keys are the keys of tenant {DEFAULT_TENANT!r}: name it once, "
                "in serve.tenants or as serve.api_keys"
            )
        for name in self.tenants:
            if not TENANT_NAME.fullmatch(name):
                raise ValueError(
                    f"tenant name {name!r}: letters, digits, '.', '_' and '-' only, "
                    "starting with a letter or digit"
                )
        for name, tenant in self.tenants.items():
            for bound in ("rpm", "tpm", "max_pending"):
                value = getattr(tenant, bound)
                if value is not None and value < self.replicas:
                    raise ValueError(
                        f"serve.tenants.{name}.{bound}: {value} is less than serve.replicas "
                        f"({self.replicas}): each replica admits an equal share of it"
                    )
        owners: dict[str, str] = {}
        for name, tenant in self.tenant_list():
            for key in tenant.keys:
                other = owners.setdefault(key.get_secret_value(), name)
                if other != name or tenant.keys.count(key) > 1:
                    raise ValueError(f"a key of tenant {name!r} is also a key of {other!r}")
        return self

    @model_validator(mode="after")
    def _schedules_runnable(self) -> ServeSettings:
        tenants = {DEFAULT_TENANT, *self.tenants}
        for name, schedule in self.schedules.items():
            if self.data_dir is None:
                raise ValueError(f"serve.schedules.{name}: its input needs serve.data_dir")
            if schedule.tenant not in tenants:
                raise ValueError(
                    f"serve.schedules.{name}.tenant: no tenant {schedule.tenant!r} "
                    "(a name of serve.tenants, or default)"
                )
        return self

    def tenant_list(self) -> list[tuple[str, TenantSettings]]:
        """Every tenant by name, with ``api_keys``' holders as the tenant ``default``, who
        sees all of the queue."""
        named = list(self.tenants.items())
        if self.api_keys:
            named.append((DEFAULT_TENANT, TenantSettings(keys=self.api_keys, sees_all=True)))
        return named
