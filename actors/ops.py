"""The manager's operations, each one message: what a caller asks of the slot engine.

    caller ─ ManagerClient.ask(op) ─ ConcurrencyManager.apply([op, ...]) ─ SlotGate.apply
        ─ SlotEngine.apply(op) ─ the engine's handler, named by the message

A message is a frozen value whose fields are its handler's parameters; every layer
between a caller and the engine forwards messages through one method, a list of them
in one call (the gate applies them in order under one lock and answers each), and
none restates an operation. Adding one touches its message here, its handler (a
method of :class:`actors.engine.SlotEngine` or of one of its parts) and, where
callers want one, a friendly method of :class:`actors.client.ManagerClient` that
makes it.

``Op[T]``: a message answered with a ``T``. A handler that frees or hands slots
returns the leases it granted to waiters (``grants``): the gate wakes those waiters,
and the message answers None. Waiters that left the queue otherwise (failed, dropped)
the engine keeps for the gate to end (:meth:`actors.engine.SlotEngine.take_left`).
An acquire waits, so it also has a path of its own (:meth:`actors.gate.SlotGate.acquire`);
in a list it never waits: only a ``started`` one, counted past any limit, belongs there.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Generic, TypeVar

from actors.errors import AcquireTimeout, QueueError, WaitTooLong
from actors.groups import GroupSpec, Pool
from actors.holdings import Want
from actors.leases import Lease, TokensUsed
from actors.lending import LentUse
from actors.options import DEFAULT_OPTIONS, CallOptions
from actors.stats import GroupInfo, Outlook, QueuePosition, QueueStats

T = TypeVar("T", covariant=True)


@dataclass(frozen=True, slots=True)
class Op(Generic[T]):
    # Its handler, called with the message's fields: a SlotEngine method, or one of a
    # part of the engine's ("leases.renew").
    handler: ClassVar[str]
    # Whether the handler returns the leases it granted to waiters (see the module).
    grants: ClassVar[bool] = False

    def arguments(self) -> dict[str, object]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


# -- slots ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acquire(Op[Lease | None]):
    """A slot of ``group_id`` (or of any group of a pool) for the lease ``lease_id``, asked
    by the process whose Caller id is ``caller``; None: queued (see SlotEngine.acquire)."""

    handler = "acquire"
    group_id: str | Pool
    lease_id: str
    options: CallOptions = DEFAULT_OPTIONS
    caller: str | None = None
    started: bool = False

    def patience(self, now: float) -> tuple[float, QueueError] | None:
        """How long, from ``now`` (wall clock), this acquire may still wait for its slot,
        and the error that ends its wait then; None: as long as it takes. Its
        ``queue_timeout`` counts from now, its ``max_wait`` from when it was asked."""
        options = self.options
        limits: list[tuple[float, QueueError]] = []
        if options.max_wait is not None:
            asked = options.asked_at if options.asked_at is not None else now
            left = max(0.0, options.max_wait - max(0.0, now - asked))
            limits.append((left, WaitTooLong(self.group_id, options.max_wait)))
        if options.queue_timeout is not None:
            asked_by = options.request_id or self.lease_id
            error = AcquireTimeout(self.group_id, asked_by, options.queue_timeout)
            limits.append((options.queue_timeout, error))
        return min(limits, key=lambda limit: limit[0], default=None)


@dataclass(frozen=True, slots=True)
class Release(Op[None]):
    """``idle``: a lent slot given back idle, whose calls were counted as they ended (see
    Reused)."""

    handler = "release"
    grants = True
    lease_id: str
    epoch: int
    used: TokensUsed | None = None
    idle: bool = False


@dataclass(frozen=True, slots=True)
class HandOver(Op[None]):
    """``lease_id``'s process started ``successor`` in its slot (see docs/architecture.md)."""

    handler = "hand_overs.hand_over"
    grants = True
    group_id: str
    lease_id: str
    epoch: int
    successor: str
    caller: str | None = None
    used: TokensUsed | None = None


@dataclass(frozen=True, slots=True)
class Cancel(Op[None]):
    """The caller gave ``lease_id`` up: whether it waits, holds, or has not arrived yet."""

    handler = "cancel"
    grants = True
    lease_id: str
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class Reused(Op[None]):
    """What the sender's calls did in slots lent to it (see actors.lending), for the
    group's stats and its flows' service."""

    handler = "holdings.reused"
    use: LentUse


@dataclass(frozen=True, slots=True)
class Renew(Op[bool]):
    """Push a held lease's deadline one ttl ahead; False if it is no longer held."""

    handler = "leases.renew"
    lease_id: str
    epoch: int


# -- what callers learn of a group's server ------------------------------------------------


@dataclass(frozen=True, slots=True)
class TakeOut(Op[None]):
    """The server of ``group_id`` was found down: out of rotation (see actors.rotation)."""

    handler = "take_out"
    grants = True
    group_id: str
    reason: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Throttled(Op[GroupInfo]):
    """The call holding ``lease_id`` got a 429 (see actors.adaptive)."""

    handler = "throttled"
    group_id: str
    lease_id: str
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class FellBack(Op[None]):
    """A call of ``model`` went to its ``fallback`` (see providers.fallback)."""

    handler = "fell_back"
    model: str
    fallback: str
    reason: str


# -- callers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DropCaller(Op[None]):
    """``caller`` died: its waiters leave, its slots pass on."""

    handler = "drop_caller"
    grants = True
    caller: str


@dataclass(frozen=True, slots=True)
class Watched(Op[None]):
    """Ray will report the death of ``caller`` (see CallerIndex.watched)."""

    handler = "callers.watched"
    caller: str


@dataclass(frozen=True, slots=True)
class Unwatched(Op[None]):
    handler = "callers.unwatched"
    caller: str


# -- a global cap over shards (see actors.capacity) ---------------------------------------


@dataclass(frozen=True, slots=True)
class Allow(Op[None]):
    """This shard may hold ``slots`` calls at once in all, the global cap's slots another
    shard lent it; ``returning`` of them go back as calls end; counted when calls had given
    up ``seen`` slots (see Holdings.allow)."""

    handler = "holdings.allow"
    grants = True
    slots: int
    returning: int = 0
    seen: int | None = None


@dataclass(frozen=True, slots=True)
class Demand(Op[Want]):
    """What this shard's calls want of the global cap (see actors.holdings.Want)."""

    handler = "holdings.demand"


@dataclass(frozen=True, slots=True)
class HeldBy(Op[tuple[list[Lease], list[str]]]):
    """The leases ``caller`` holds, and the lease ids of its waiters."""

    handler = "holdings.held_by"
    caller: str


@dataclass(frozen=True, slots=True)
class RecallLent(Op[None]):
    """Call back every slot lent to a process (see actors.lending)."""

    handler = "lending.recall_all"


# -- groups and queries -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Register(Op[GroupInfo]):
    handler = "register"
    spec: GroupSpec


@dataclass(frozen=True, slots=True)
class GroupInfoOf(Op[GroupInfo]):
    handler = "group_info"
    group_id: str


@dataclass(frozen=True, slots=True)
class CanRun(Op[bool]):
    """Would a call of ``group_id`` get its slot now, without waiting?"""

    handler = "can_run_immediately"
    group_id: str


@dataclass(frozen=True, slots=True)
class OutlookOf(Op[Outlook]):
    """What a new call of ``group_id`` (a group, or a pool) at ``options`` would meet now:
    whether it runs at once, the slots free, who waits, its wait (see reports.outlook)."""

    handler = "outlook"
    group_id: str | Pool
    options: CallOptions = DEFAULT_OPTIONS


@dataclass(frozen=True, slots=True)
class Stats(Op[QueueStats]):
    handler = "stats"


@dataclass(frozen=True, slots=True)
class Position(Op[QueuePosition | None]):
    handler = "position"
    request_id: str
