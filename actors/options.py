"""What one call asks of the queue and what it is: one frozen value through every layer.

    PlateauJob -> PipelineActor -> ProviderClient -> ProviderActor -> GatedProvider
        -> SlotSource.slot -> ManagerClient -> ConcurrencyManager -> SlotGate -> SlotEngine

Each layer passes the :class:`CallOptions` it got on whole; none copies its
fields into a parameter list of its own. The engine reads the ordering
fields (see :mod:`actors.waitqueue`), the caller's slot keeper the queue
timeout and max wait (see :meth:`actors.ops.Acquire.patience`), the provider
the labels for its metrics and spans.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace

import ray

from actors.waitqueue import DEFAULT_PRIORITY, check_priority


@dataclass(frozen=True, slots=True)
class CallLabels:
    """What a call is, for metrics, spans and the queue page; never for ordering."""

    stage: str = ""
    service_id: str = ""
    plateau: int | None = None
    mapping_type: str | None = None
    # Which try of the same question this is (a job asks again after an invalid answer).
    attempt: int = 1
    # The pipeline run that asked.
    run: str = ""

    def describe(self) -> str:
        """E.g. "mappings (data) of plateau 2"."""
        kind = f" ({self.mapping_type})" if self.mapping_type else ""
        where = f" of plateau {self.plateau}" if self.plateau is not None else ""
        return f"{self.stage}{kind}{where}"

    def call_id(self) -> str:
        """Unique among the calls of one service: stage, plateau, mapping type, attempt."""
        parts = [self.stage, self.plateau, self.mapping_type, self.attempt]
        return ":".join(str(part) for part in parts if part is not None)


@dataclass(frozen=True, slots=True)
class CallOptions:
    """How one call waits for its slot.

    ``priority`` 1..10, higher first. ``unit``: calls naming the same unit of
    work keep the place of its first call; ``critical`` puts a call before the
    others of its unit. ``request_id`` identifies the call to ``position()``
    (one is drawn when None). ``queue_timeout``: seconds to wait for a slot,
    None for as long as it takes. ``asked_at``: when the call first asked
    (wall clock, stamped when None); Ray retries an acquire with it, so a
    restarted manager queues the waiters it lost in the order they asked.
    ``tokens``: what the call may use, charged to its group's tokens-per-minute
    budget when granted (see :mod:`actors.budget`) and corrected with the
    usage its answer reports. ``cache``: whether a deterministic request may be
    answered from the cluster's response cache, and its answer kept there
    (see :mod:`providers.cache`). ``flow``: who the call is for (a tenant; by
    default the Ray job that asked, stamped by :meth:`identified`), whose share
    of a group at one priority is ``weight`` (see :mod:`actors.waitqueue`).
    ``max_wait``: rather than queue for longer than this many seconds, as the
    manager estimates the wait, fail at once with WaitTooLong (None: queue
    whatever the wait); a model's fallbacks set it (see
    :mod:`providers.fallback`). ``fallbacks``: whether the model's fallbacks may
    answer the call.
    """

    priority: int = DEFAULT_PRIORITY
    critical: bool = False
    unit: str | None = None
    request_id: str | None = None
    queue_timeout: float | None = None
    asked_at: float | None = None
    tokens: int = 0
    cache: bool = False
    flow: str | None = None
    weight: float = 1.0
    max_wait: float | None = None
    fallbacks: bool = True
    labels: CallLabels = field(default_factory=CallLabels)

    def __post_init__(self) -> None:
        check_priority(self.priority)
        if not self.weight > 0:
            raise ValueError(f"a flow's weight must be above 0, not {self.weight!r}")

    def identified(self) -> CallOptions:
        """These options with a request id, an ask time and a flow (see :meth:`flowing`),
        drawn now where none was given."""
        if self.request_id is not None and self.asked_at is not None and self.flow is not None:
            return self
        return replace(
            self,
            request_id=self.request_id or uuid.uuid4().hex,
            asked_at=self.asked_at if self.asked_at is not None else time.time(),
            flow=self.flow if self.flow is not None else _this_job(),
        )

    def flowing(self) -> CallOptions:
        """These options with a flow: this process's Ray job where none was given. Called
        where a call starts (a driver, a pipeline run), so that a call passed on to a
        provider actor keeps the flow of the job that asked, not the actor's."""
        return self if self.flow is not None else replace(self, flow=_this_job())


def tenant_flow(name: str) -> str:
    """The flow of the tenant ``name``'s calls (see :mod:`serve.tenants`)."""
    return TENANT_FLOW + name


def flow_tenant(flow: str) -> str:
    """The tenant whose flow ``flow`` is, "" if it is no tenant's (a Ray job's)."""
    return flow.removeprefix(TENANT_FLOW) if flow.startswith(TENANT_FLOW) else ""


def _this_job() -> str:
    """The Ray job of this process ("" outside Ray): the flow of its calls by default."""
    if not ray.is_initialized():
        return ""
    return f"job:{ray.get_runtime_context().get_job_id()}"


DEFAULT_OPTIONS = CallOptions()
TENANT_FLOW = "tenant:"
