"""The slot engine's groups: each group's live state, and the table that registers them.

A group is known by the id of its :class:`~actors.groups.GroupSpec`; a configured
limit overrides the spec's default, a configured budget gives it requests- and
tokens-per-minute buckets, and a configured weight its share of a pool's new
calls. A group whose held leases a restarted manager must know (a capped group,
or any under a global cap) is *journaled*: every change of its held leases
marks it for :mod:`actors.journal`.
"""

from __future__ import annotations

from collections.abc import Callable, ItemsView, Iterator, Mapping, ValuesView
from dataclasses import dataclass, field

from actors.adaptive import Throttle
from actors.budget import Budget, BudgetLimits
from actors.callers import CallerIndex
from actors.errors import UnknownGroup
from actors.groups import GroupSpec
from actors.journal import Entries, HeldLease, held_entry, spec_entry
from actors.leases import LeaseTable
from actors.options import CallLabels, CallOptions
from actors.rotation import Out
from actors.stats import GroupInfo
from actors.tally import GroupTally
from actors.waitqueue import GrantKey, WaitQueue


@dataclass(slots=True)
class Waiter:
    lease_id: str
    # The groups whose slot it may take: one, or a pool's (see actors.groups.Pool).
    groups: tuple[str, ...]
    request_id: str
    priority: int
    key: GrantKey
    queued_at: float
    tokens: int
    labels: CallLabels
    flow: str
    weight: float

    @classmethod
    def of(
        cls,
        lease_id: str,
        groups: tuple[str, ...],
        options: CallOptions,
        key: GrantKey,
        now: float,
    ) -> Waiter:
        """A call without a request id is known by its lease id."""
        request_id = options.request_id or lease_id
        flow = options.flow or ""
        return cls(
            lease_id,
            groups,
            request_id,
            options.priority,
            key,
            now,
            options.tokens,
            options.labels,
            flow,
            options.weight,
        )


@dataclass(slots=True)
class Group:
    spec: GroupSpec
    limit: int | None
    journaled: bool
    budget_limits: BudgetLimits | None
    throttle: Throttle
    budget: Budget | None = None
    queue: WaitQueue = field(default_factory=WaitQueue)
    leases: set[str] = field(default_factory=set)
    active: int = 0
    tally: GroupTally = field(default_factory=GroupTally)
    # Its time out of rotation, if its server was found down (see actors.rotation).
    out: Out | None = None
    # Its share of a pool's new calls, and its place in their turns (see actors.rotation).
    weight: float = 1.0
    turn: float = 0.0

    def has_room(self) -> bool:
        """Below its limit, and no probe in flight (see :mod:`actors.rotation`)."""
        if self.out is not None and not self.out.admits():
            return False
        return self.limit is None or self.active < self.limit

    def is_out(self, now: float) -> bool:
        """Whether the group's server is out of rotation at ``now``."""
        return self.out is not None and self.out.excludes(now)

    def probing(self, now: float) -> bool:
        """Whether its cooldown has passed at ``now`` and its next grant is the probe, or
        the probe is in flight."""
        return self.out is not None and self.out.probing(now)

    def fits_now(self, tokens: int, now: float) -> bool:
        """Whether a new arrival may start now: in rotation, room, and budget with nobody
        waiting."""
        if not self.has_room() or self.is_out(now):
            return False
        return self.budget is None or (
            len(self.queue) == 0 and self.budget.ready_at(tokens, now) <= now
        )

    def next_waiter(self) -> tuple[GrantKey, str] | None:
        """The best waiter, with its key, if the group has room for it."""
        return self.queue.peek() if self.has_room() else None

    def ready_at(self, waiter: Waiter, now: float) -> float:
        """When the group may grant ``waiter``: once back in rotation, when its budget
        allows the call (``now`` without a budget; inf: the budget is paused for good or
        the call never fits)."""
        ready = now if self.budget is None else self.budget.ready_at(waiter.tokens, now)
        if self.out is not None and self.out.excludes(now):
            return max(ready, self.out.until)
        return ready

    def info(self, *, epoch: int, lease_ttl: float, global_limit: int | None) -> GroupInfo:
        return GroupInfo(
            id=self.spec.id,
            kind=self.spec.kind,
            limit=self.limit,
            global_limit=global_limit,
            epoch=epoch,
            lease_ttl=lease_ttl,
            budgeted=self.budget is not None,
        )


class GroupTable(Mapping[str, Group]):
    """The registered groups by id, and which of them changed since the journal looked."""

    def __init__(
        self,
        *,
        limits: Mapping[str, int | None],
        budgets: Mapping[str, BudgetLimits],
        global_limit: int | None,
        clock: Callable[[], float],
        fair: bool = True,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        self._fair = fair
        self._limits = dict(limits)
        self._weights = dict(weights or {})
        self._budgets = dict(budgets)
        self._global_limit = global_limit
        self._clock = clock
        self._groups: dict[str, Group] = {}
        # What the journal has not written yet (see changes()): groups registered, and
        # leases of journaled groups held or freed (lease id -> group id).
        self._registered: set[str] = set()
        self._moved: dict[str, str] = {}

    def __getitem__(self, group_id: str) -> Group:
        try:
            return self._groups[group_id]
        except KeyError:
            raise UnknownGroup(group_id, tuple(self._groups)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)

    def __contains__(self, group_id: object) -> bool:
        return group_id in self._groups

    def values(self) -> ValuesView[Group]:
        return self._groups.values()

    def items(self) -> ItemsView[str, Group]:
        return self._groups.items()

    def register(self, spec: GroupSpec) -> Group:
        """The group of ``spec``, made on first sight (a configured override beats the
        spec's default limit)."""
        group = self._groups.get(spec.id)
        if group is None:
            limit = self._limits.get(spec.id, spec.default_limit)
            budget = self._budgets.get(spec.id)
            group = self._groups[spec.id] = Group(
                spec=spec,
                limit=limit,
                journaled=limit is not None or self._global_limit is not None,
                budget_limits=budget,
                throttle=Throttle(None if budget is None else budget.rpm),
                budget=None if budget is None else Budget.of(budget, self._clock()),
                queue=WaitQueue(fair=self._fair),
                weight=self._weights.get(spec.id, 1.0),
            )
            self._registered.add(spec.id)
        return group

    def changed(self, group: Group, lease_id: str) -> None:
        """``lease_id`` of ``group`` was held or freed: the journal writes it if it keeps
        the group."""
        if group.journaled:
            self._moved[lease_id] = group.spec.id

    def changes(self, leases: LeaseTable, callers: CallerIndex) -> Entries:
        """The journal's entries changed since the last call (see :mod:`actors.journal`):
        each group registered, each lease held (its epoch and caller) or freed."""
        entries: dict[str, bytes | None] = dict(
            spec_entry(self._groups[g].spec) for g in self._registered
        )
        for lease_id, group_id in self._moved.items():
            lease = leases.get(lease_id)
            held = (
                None
                if lease is None
                else HeldLease(lease.epoch, callers.of(lease_id), lease.lent is not None)
            )
            key, value = held_entry(group_id, lease_id, held)
            entries[key] = value
        self._registered, self._moved = set(), {}
        return entries
