"""Snapshots the manager hands out: group info, queue stats, a request's position.

Frozen pydantic models. ``model_dump(by_alias=True)`` gives the seed's camelCase
shape (``activeByGroup``, ``pendingByGroup``, ``totalActive``, ``totalPending``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from actors.groups import ResourceKind


class Snapshot(BaseModel):
    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)


class GroupInfo(Snapshot):
    """What a caller needs to know about a group before asking for slots."""

    id: str
    kind: ResourceKind
    limit: int | None
    global_limit: int | None
    epoch: int
    lease_ttl: float
    # Whether the group has a requests- or tokens-per-minute budget.
    budgeted: bool = False

    @property
    def gated(self) -> bool:
        """False when no call of this group can ever wait: no limit, no global cap, no
        budget."""
        return self.limit is not None or self.global_limit is not None or self.budgeted


class FlowStats(Snapshot):
    """One flow's part of a group (a tenant's, or a Ray job's; see actors.waitqueue)."""

    waiting: int
    running: int
    # Call-seconds its calls held the group's slots, since the manager started.
    served_seconds: float
    # What its fair share counted of them (see actors.waitqueue): weighted tokens
    # (prompt + 2 x completion), a call without usage at the group's learned tokens a
    # second; call-seconds in a group none of whose calls reported usage.
    service: float
    # Of the service of the flows listed with it.
    share: float


class GroupStats(Snapshot):
    kind: ResourceKind
    limit: int | None
    # The group's budget per minute (None: unlimited), and what of it could start now.
    rpm: int | None = None
    tpm: int | None = None
    requests_left: int | None = None
    tokens_left: int | None = None
    # The requests per minute learned from the provider's 429s (None: none yet), the
    # seconds its grants stay paused, and how many 429s its calls got.
    learned_rpm: int | None = None
    paused_seconds: float = 0.0
    throttled: int = 0
    # Why the group's server is out of rotation (see SlotEngine.mark_out), and for how
    # many seconds more; None: in rotation. Once those pass it is ``probing``: one call is
    # let in, and the group is back in rotation when it ends without finding the server
    # down.
    out_reason: str | None = None
    out_seconds: float = 0.0
    probing: bool = False
    active: int
    # The most calls of this group that ever held a slot at once.
    peak_active: int
    pending: int
    avg_hold_seconds: float | None
    # Over the group's last 1,000 grants; an immediate grant waited 0.
    wait_p50_seconds: float
    wait_p95_seconds: float
    granted: int
    # Of the grants, those handed over in the holder's process (see "The hand-over" in
    # docs/architecture.md).
    handed_over: int = 0
    # How often slots lent to processes were called back for a waiter (see
    # actors/lending.py): each a priority inversion across processes of one round trip
    # at most.
    recalls: int = 0
    released: int
    expired: int
    cancelled: int
    timed_out: int
    rejected: int
    # Waiters dropped and leases freed because the process that asked died.
    abandoned: int
    # By flow: those waiting or running now, and the last FLOW_MEMORY that were served.
    flows: dict[str, FlowStats] = {}


class ModelStats(Snapshot):
    """A model of several servers (a pool) or with fallbacks, as the settings name it."""

    # Its servers' groups, in the settings' order (each group's figures, its health and
    # grants among them, are the queue stats' ``groups``).
    groups: list[str]
    fallbacks: list[str] = []
    fallback_after_seconds: float | None = None
    # By fallback, then why (the error's type): the calls it took over since the manager
    # started.
    fallbacks_taken: dict[str, dict[str, int]] = {}


class QueueStats(Snapshot):
    epoch: int
    global_limit: int | None
    active_by_group: dict[str, int]
    pending_by_group: dict[str, int]
    total_active: int
    total_pending: int
    groups: dict[str, GroupStats]
    # Releases ignored because they came from before a manager restart.
    stale_epoch_releases: int
    # Releases of leases the manager does not hold: reclaimed already, or never seen.
    unknown_releases: int
    # Acquires refused because their lease id had been released or cancelled first.
    late_acquires: int
    renewed: int
    # Hand-overs to a successor that a better waiter had overtaken while the manager's
    # notice was on its way; and the notices sent (see "The hand-over" in
    # docs/architecture.md).
    overtaken: int = 0
    next_in_line_answers: int = 0
    # By id, the models of several servers or with fallbacks.
    models: dict[str, ModelStats] = {}


class QueuePosition(Snapshot):
    request_id: str
    group: str
    priority: int
    # Its flow (see actors.waitqueue): a tenant's, a Ray job's, "" for none.
    flow: str = ""
    # Waiters that will be granted before this one.
    ahead: int
    waited_seconds: float
    # None until the group has released a slot (no hold time measured yet).
    estimated_wait_seconds: float | None


class Outlook(Snapshot):
    """What a new call of a group or a pool (``groups``) at ``priority`` would meet now."""

    groups: tuple[str, ...]
    priority: int
    # Whether it would start at once.
    runs_now: bool
    # Slots free now in all its groups, within the global cap; None: no limit.
    free: int | None
    # Calls waiting for its groups, by priority.
    waiting_by_priority: dict[int, int]
    # How long it would wait: 0 if it runs now; None until a slot of its groups was
    # released (no hold time measured yet).
    estimated_wait_seconds: float | None


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.5 is the median); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]
