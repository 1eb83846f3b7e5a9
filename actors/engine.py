"""The slot engine: limits, leases and the queue of waiters, in plain Python.

No Ray, no asyncio and no clock of its own (``clock=`` is injected), so every
ordering and timing rule is tested by calling methods and moving a fake clock.
The asyncio layer (:mod:`actors.gate`) turns "queued" into a future and the
leases each call returns into wake-ups.

Vocabulary (after trio's CapacityLimiter): a *group* has a *limit* of slots; a
*caller* (a process) asks for a slot on behalf of a request id and gets a
*lease*. Every operation is a message of :mod:`actors.ops`, which names its
handler: a method of this engine, or of one of its parts, each a module of
its own:

- :mod:`actors.leases`: the lease table (held, deadlines, epochs, retired ids);
- :mod:`actors.callers`: which caller asked for what, and which died;
- :mod:`actors.waitqueue` and :mod:`actors.fairshare`: grant order (who goes
  next), arrival numbering, and each flow's service;
- :mod:`actors.holdings`: the moves between waiting, holding and gone, and the
  grant of the waiters that can run;
- :mod:`actors.rotation`: servers out of rotation, and the choice of a pool's;
- :mod:`actors.budget` and :mod:`actors.adaptive`: budgets, 429s and learned rates;
- :mod:`actors.handover`: passing a freed slot on inside its holder's process;
- :mod:`actors.groupstate`: each group's state and the table of groups;
- :mod:`actors.timekeeper`: what time does (expiry, budgets refilled, cooldowns);
- :mod:`actors.tally` and :mod:`actors.reports`: outcomes, stats, positions, the
  queue view, estimates.

A group with a budget grants nobody while its best waiter does not fit it (no
later, smaller call goes first). Budget comes back with time, not with a
release, so the asyncio layer asks :meth:`Timekeeper.next_wake` when to call
:meth:`Timekeeper.tick`.

Invariant, restored at the end of every public method: no waiter could be
granted. Either the global cap is reached or every group with waiters is
full or waits for budget. That is why a new arrival that finds room (and,
in a budgeted group, no one waiting) may take it at once without overtaking
anyone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from operator import attrgetter

from actors import reports
from actors.adaptive import DEFAULT_PAUSE_SECONDS
from actors.budget import BudgetLimits
from actors.callers import Caller, CallerIndex
from actors.errors import (
    CallerGone,
    DuplicateLease,
    LeaseRetired,
    OutOfRotation,
    QueueFull,
)
from actors.groups import GroupSpec, ModelEntry, Pool, pool_of
from actors.groupstate import Group, GroupTable, Waiter
from actors.handover import HandOvers
from actors.holdings import Holdings
from actors.journal import GroupRecord
from actors.leases import Lease, LeaseTable, TokensUsed
from actors.lending import Lending
from actors.ops import Op
from actors.options import DEFAULT_OPTIONS, CallOptions
from actors.queueview import QueueView
from actors.reports import Observer, Recorder
from actors.rotation import Out, least_busy, none_in_rotation
from actors.stats import GroupInfo, Outlook, QueuePosition, QueueStats
from actors.tally import ModelTally, Outcome
from actors.timekeeper import Timekeeper
from actors.waitqueue import Arrivals, grant_key, width

__all__ = ["Observer", "Outcome", "SlotEngine"]


class SlotEngine:
    def __init__(
        self,
        *,
        epoch: int,
        lease_ttl: float = 60.0,
        global_limit: int | None = None,
        max_pending_per_group: int = 10_000,
        group_limits: Mapping[str, int | None] | None = None,
        group_budgets: Mapping[str, BudgetLimits] | None = None,
        group_weights: Mapping[str, float] | None = None,
        adaptive: bool = True,
        hand_over: bool = True,
        lend: bool = True,
        fair: bool = True,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
        restarted_at: float | None = None,
        models: Mapping[str, ModelEntry] | None = None,
    ) -> None:
        self.epoch = epoch
        self.lease_ttl = lease_ttl
        self.global_limit = global_limit
        self.max_pending_per_group = max_pending_per_group
        self.clock = clock
        limits, budgets = group_limits or {}, group_budgets or {}
        self.groups = GroupTable(
            limits=limits,
            budgets=budgets,
            global_limit=global_limit,
            clock=clock,
            fair=fair,
            weights=group_weights,
        )
        # Whether any group has a budget (whose waiters wait for time, not a release).
        self.budgeted = bool(budgets)
        # Whether a 429 pauses its group and lowers its rate (see actors.adaptive).
        self.adaptive = adaptive
        self.leases = LeaseTable(lease_ttl, clock)
        self.callers = CallerIndex()
        self.arrivals = Arrivals(restarted_at)
        self.recorder = Recorder(observer, clock)
        self.lending = Lending(epoch, enabled=lend)
        self.holdings = Holdings(
            self.groups,
            self.leases,
            self.callers,
            self.recorder,
            clock,
            epoch,
            global_limit,
            self.lending,
        )
        self.timekeeper = Timekeeper(self.holdings)
        self.hand_overs = HandOvers(hand_over, self.holdings)
        self.waiters = self.holdings.waiters
        self.models = ModelTally(models or {})
        # Waiters that left the queue other than by a grant or their own caller's cancel,
        # each with the error that ends its wait (None: it was dropped).
        self._left: dict[str, Exception | None] = {}

    @property
    def version(self) -> int:
        """Moves on every change of a group's levels or pause (see actors.queueview)."""
        return self.recorder.version

    @property
    def total_active(self) -> int:
        return self.holdings.total_active

    def apply(self, op: Op[object]) -> object:
        """One operation (see :mod:`actors.ops`): its handler's answer. A handler is a
        method of this engine or of one of its parts (``"leases.renew"``)."""
        return attrgetter(op.handler)(self)(**op.arguments())

    def take_left(self) -> dict[str, Exception | None]:
        """The waiters that left the queue since the last call other than by a grant: each
        with the error that ends its wait (see :meth:`take_out`), or None (cancelled, or
        its caller died). The gate ends the waits it still holds."""
        left, self._left = self._left, {}
        return left

    # -- groups and the journal ---------------------------------------------------

    def register(self, spec: GroupSpec) -> GroupInfo:
        """Make a group known (idempotent); a configured override beats the default limit."""
        return self._info(self.groups.register(spec))

    def restore(self, record: GroupRecord) -> None:
        """After a restart: know the group again and hold its leases, each for one more
        ttl, until its holder renews and releases it as usual (by id and its own epoch)
        or, dead, lets it expire. Until then the slot is not granted again."""
        group = self.groups.register(record.spec)
        for lease_id, held in record.held.items():
            if lease_id not in self.leases:
                lease = self.holdings.lease(group, lease_id, epoch=held.epoch)
                self.holdings.hold(group, lease, restored=True)
                self.callers.note(lease_id, held.caller)
                if held.lent and held.caller is not None:
                    self.lending.held(group.spec.id, lease_id, held.caller)
        self.recorder.levels(group)

    def group_info(self, group_id: str) -> GroupInfo:
        return self._info(self.groups[group_id])

    def _info(self, group: Group) -> GroupInfo:
        return group.info(
            epoch=self.epoch, lease_ttl=self.lease_ttl, global_limit=self.global_limit
        )

    # -- acquire / release ----------------------------------------------------

    def acquire(
        self,
        group_id: str | Pool,
        lease_id: str,
        options: CallOptions = DEFAULT_OPTIONS,
        caller: str | None = None,
        *,
        started: bool = False,
    ) -> Lease | None:
        """Grant a slot now and return its lease, or queue the request and return None
        (whichever call frees a slot later returns its lease).

        ``group_id``: a group, or a pool of groups: the call waits once, in each
        of their queues with one key, and takes a slot of the first that has
        room for it (the lease names which); a new arrival that finds room in
        several takes the least busy for its weight (see :mod:`actors.rotation`).
        ``caller``: the id of the process that asked, whose waiters and leases
        :meth:`drop_caller` ends. ``started``: the call already runs (its caller
        took a group where nobody waits, see :mod:`actors.slotkeeper`): it is
        counted, past any limit or budget.
        """
        pool = pool_of(group_id)
        groups = [self.groups[g] for g in pool]
        group = groups[0]
        now = self.clock()
        if caller is not None and self.callers.gone(caller):
            raise CallerGone(str(Caller(caller)))
        if (restored := self.leases.claim_restored(lease_id)) is not None:
            return restored  # granted before a restart, its answer lost: Ray retried it
        if not started and (out := self._none_in_rotation(groups, now)) is not None:
            raise out
        if self.leases.refuse_late(lease_id):
            raise LeaseRetired(lease_id)
        if lease_id in self.waiters or lease_id in self.leases:
            raise DuplicateLease(lease_id)
        self.recorder.submitted(group)
        arrival = self.arrivals.arrival(options.asked_at)
        unit = self.arrivals.unit(options.unit, arrival)
        self.callers.note(lease_id, caller)
        fits = self.holdings.room()
        free = [g for g in groups if g.fits_now(options.tokens, now)] if fits else []
        if started or free:
            group = group if started else least_busy(free)
            lease = self.holdings.lease(group, lease_id, options.request_id, options.priority)
            return self.holdings.grant(
                group,
                lease,
                waited=0.0,
                tokens=options.tokens,
                flow=options.flow or "",
                weight=options.weight,
                lendable=len(pool) == 1 and not started,
            )
        full = max(groups, key=lambda g: len(g.queue))
        if len(full.queue) >= self.max_pending_per_group:
            self.callers.forget(lease_id)
            self.recorder.finished(full, Outcome.REJECTED)
            ahead = len(full.queue)
            wait = reports.estimate(full, self.global_limit, ahead, options.tokens, now)
            raise QueueFull(full.spec.id, ahead, self.max_pending_per_group, wait)
        room = width(_pool_limit(groups), self.global_limit)
        key = grant_key(options.priority, arrival, unit=unit, critical=options.critical, width=room)
        if options.max_wait is not None and (
            late := reports.too_long(groups, self.global_limit, key, options, now)
        ):
            self.callers.forget(lease_id)
            self.recorder.finished(group, Outcome.REJECTED)
            raise late
        self.holdings.queue(Waiter.of(lease_id, pool, options, key, now))
        return None

    def release(
        self, lease_id: str, epoch: int, used: TokensUsed | None = None, idle: bool = False
    ) -> list[Lease]:
        """Give a slot back (idempotent); returns the leases this hands to waiters.
        ``used``: what the call used, as its answer said: corrects its group's budget
        and its flow's service; ``idle``: a lent slot, given back between calls (see
        :mod:`actors.lending`). A release that frees nothing is counted (see
        LeaseTable.releasable)."""
        freed = self.holdings.released(lease_id, epoch, used, idle)
        return self.holdings.dispatch() if freed else []

    def next_in_line(self) -> dict[str, tuple[str, str]]:
        """See :meth:`actors.handover.HandOvers.next_in_line`."""
        return self.hand_overs.next_in_line(self.global_limit)

    def take_out(self, group_id: str, reason: str, seconds: float) -> list[Lease]:
        """A caller found the group's server down (its circuit open, its server gone, its
        node lost): it is out of rotation for ``seconds`` (see :mod:`actors.rotation`).
        Its waiters that may use no other group in rotation fail at once, with each
        group's reason (see :meth:`take_left`). Returns the leases granted meanwhile."""
        group = self.groups[group_id]
        now = self.clock()
        group.out = Out(reason, now + seconds)
        self.lending.recall([group_id])
        self.recorder.rotation(group)
        for lease_id in group.queue.lease_ids():
            waiter = self.waiters[lease_id]
            out = self._none_in_rotation([self.groups[g] for g in waiter.groups], now)
            if out is not None:
                first = self.holdings.unqueue(lease_id)
                assert first is not None
                self.recorder.finished(first, Outcome.REJECTED)
                self._left[lease_id] = out
        return self.holdings.dispatch()

    def fell_back(self, model: str, fallback: str, reason: str) -> None:
        """A call of ``model`` went to its ``fallback``: ``reason``, the error's type (see
        :mod:`providers.fallback`)."""
        self.models.fell_back(model, fallback, reason)
        self.recorder.version += 1

    def throttled(self, group_id: str, lease_id: str, retry_after: float | None) -> GroupInfo:
        """The call holding ``lease_id`` got a 429, to be tried again ``retry_after``
        seconds from now: pause the group until then and learn from it (see
        :mod:`actors.adaptive`), unless not ``adaptive``. Returns the group's info."""
        group = self.groups[group_id]
        group.throttle.count += 1
        self.lending.recall([group_id])
        if self.adaptive:
            pause = DEFAULT_PAUSE_SECONDS if retry_after is None else retry_after
            granted_at = self.leases.granted_at(lease_id)
            budget = group.throttle.hit(lease_id, granted_at, group.budget, pause, self.clock())
            group.budget, self.budgeted = budget, True
            self.recorder.throttled(group, pause)
        return self._info(group)

    def cancel(self, lease_id: str, timed_out: bool = False) -> list[Lease]:
        """The caller gave up: leave the queue, or give back a slot granted meanwhile."""
        granted: list[Lease] = []
        if (group := self.holdings.unqueue(lease_id)) is not None:
            self._left[lease_id] = None
            if not timed_out:
                # Its caller gave it up: a hand_over naming it that crossed this on its
                # way must not make it hold a slot.
                self.leases.retire(lease_id)
        elif lease_id in self.leases:
            # Granted in the same instant the caller gave up: pass the slot on.
            group = self.holdings.free(lease_id)
            granted = self.holdings.dispatch()
        else:
            self.leases.retire(lease_id)
            return []
        self.recorder.finished(group, Outcome.TIMED_OUT if timed_out else Outcome.CANCELLED)
        return granted

    def drop_caller(self, caller: str) -> list[Lease]:
        """The caller died: drop its waiters (see :meth:`take_left`) and free its leases;
        returns the leases handed on. Its later acquires are refused."""
        self.callers.died(caller)
        freed = False
        for lease_id in self.callers.leases(caller):
            if (group := self.holdings.unqueue(lease_id)) is not None:
                self._left[lease_id] = None
            else:
                group = self.holdings.free(lease_id)
                freed = True
            self.recorder.finished(group, Outcome.ABANDONED)
        return self.holdings.dispatch() if freed else []

    # -- queries (see actors.reports) -------------------------------------------

    def can_run_immediately(self, group_id: str) -> bool:
        return self.outlook(group_id).runs_now

    def outlook(self, group_id: str | Pool, options: CallOptions = DEFAULT_OPTIONS) -> Outlook:
        return reports.outlook(self, pool_of(group_id), self.holdings.room_left(), options)

    def position(self, request_id: str) -> QueuePosition | None:
        return reports.position(self, request_id)

    def stats(self) -> QueueStats:
        return reports.stats(self)

    def view(self, first: int) -> QueueView:
        return reports.view(self, first)

    # -- internals ------------------------------------------------------------

    def _none_in_rotation(self, groups: list[Group], now: float) -> OutOfRotation | None:
        return none_in_rotation({g.spec.id: g.out for g in groups}, now)


def _pool_limit(groups: list[Group]) -> int | None:
    """How many calls a pool's groups run at once (None: no limit)."""
    limits = [g.limit for g in groups]
    return None if None in limits else sum(limit for limit in limits if limit is not None)
