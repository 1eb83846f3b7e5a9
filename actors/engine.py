"""The slot engine: limits, leases and the queue of waiters, in plain Python.

No Ray, no asyncio and no clock of its own (``clock=`` is injected), so every
ordering and timing rule is tested by calling methods and moving a fake clock.
The asyncio layer (:mod:`actors.gate`) turns "queued" into a future and the
leases each call returns into wake-ups.

Vocabulary (after trio's CapacityLimiter): a *group* has a *limit* of slots; a
*caller* (a process) asks for a slot on behalf of a request id and gets a
*lease*. :class:`SlotEngine` composes the parts, each a module of its own:

- :mod:`actors.leases`: the lease table (held, deadlines, epochs, retired ids);
- :mod:`actors.callers`: which caller asked for what, and which died;
- :mod:`actors.waitqueue`: grant order (who goes next) and arrival numbering;
- :mod:`actors.budget` and :mod:`actors.adaptive`: budgets, 429s and learned rates;
- :mod:`actors.handover`: passing a freed slot on inside its holder's process;
- :mod:`actors.groupstate`: each group's state and the table of groups;
- :mod:`actors.reports`: outcomes, stats, positions, the queue view, estimates.

A group with a budget grants nobody while its best waiter does not fit it (no
later, smaller call goes first). Budget comes back with time, not with a
release, so the asyncio layer asks :meth:`SlotEngine.next_wake` when to call
:meth:`SlotEngine.tick`.

Invariant, restored at the end of every public method: no waiter could be
granted. Either the global cap is reached or every group with waiters is
full or waits for budget. That is why a new arrival that finds room (and,
in a budgeted group, no one waiting) may take it at once without overtaking
anyone.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping

from actors import reports
from actors.adaptive import DEFAULT_PAUSE_SECONDS
from actors.budget import BudgetLimits
from actors.callers import Caller, CallerIndex
from actors.errors import (
    CallerGone,
    DuplicateLease,
    LeaseRetired,
    PoolUnavailable,
    QueueFull,
    WaitTooLong,
)
from actors.groups import GroupSpec, ModelEntry, Pool, pool_of
from actors.groupstate import Group, GroupTable, Outage, Waiter
from actors.handover import HandOvers
from actors.holdings import Holdings
from actors.journal import GroupRecord
from actors.leases import Lease, LeaseTable, TokensUsed
from actors.options import DEFAULT_OPTIONS, CallOptions
from actors.queueview import QueueView
from actors.reports import Observer, Outcome, Recorder
from actors.stats import GroupInfo, ModelStats, QueuePosition, QueueStats
from actors.waitqueue import Arrivals, GrantKey, grant_key, width

__all__ = ["Lease", "Observer", "Outcome", "SlotEngine"]


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
        self.hand_overs = HandOvers(hand_over)
        self.recorder = Recorder(observer, clock)
        self.holdings = Holdings(self.groups, self.leases, self.callers, self.recorder, clock)
        self.waiters = self.holdings.waiters
        # The settings' models of several servers or with fallbacks, as the stats show
        # them; and by model asked and fallback, why the calls each fallback took over
        # went to it.
        self.models = {
            model: ModelStats(
                groups=[spec.id for spec in entry.specs()],
                fallbacks=list(entry.fallbacks),
                fallback_after_seconds=entry.fallback_after_seconds,
            )
            for model, entry in (models or {}).items()
            if entry.routed
        }
        self.fallbacks_taken: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)

    @property
    def version(self) -> int:
        """Moves on every change of a group's levels or pause (see actors.queueview)."""
        return self.recorder.version

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
                lease = self._lease(group, lease_id, epoch=held.epoch)
                self.holdings.hold(group, lease, restored=True)
                self.callers.note(lease_id, held.caller)
        self.recorder.levels(group)

    def take_changed(self) -> set[str]:
        """The groups whose record changed since the last call (for the journal)."""
        return self.groups.take_changed()

    def record(self, group_id: str) -> GroupRecord:
        return self.groups.record(group_id, self.leases, self.callers)

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
        several takes the least busy for its weight (see :func:`_least_busy`).
        ``caller``: the id of the process that asked, whose waiters and leases
        :meth:`drop_caller` ends. ``started``: the call already runs (its caller
        took a group where nobody waits, see :mod:`actors.outbox`): it is
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
        if not started and (unavailable := self._unavailable(groups, now)) is not None:
            raise unavailable
        if self.leases.refuse_late(lease_id):
            raise LeaseRetired(lease_id)
        if lease_id in self.waiters or lease_id in self.leases:
            raise DuplicateLease(lease_id)
        self.recorder.submitted(group)
        arrival = self.arrivals.arrival(options.asked_at)
        unit = self.arrivals.unit(options.unit, arrival)
        self.callers.note(lease_id, caller)
        free = [g for g in groups if g.fits_now(options.tokens, now)] if self._global_room() else []
        if started or free:
            group = group if started else _least_busy(free)
            lease = self._lease(group, lease_id, options.request_id, options.priority)
            return self.holdings.grant(
                group,
                lease,
                waited=0.0,
                tokens=options.tokens,
                flow=options.flow or "",
                weight=options.weight,
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
        if options.max_wait is not None and (late := self._too_long(groups, key, options, now)):
            self.callers.forget(lease_id)
            self.recorder.finished(group, Outcome.REJECTED)
            raise late
        self.holdings.queue(Waiter.of(lease_id, pool, options, key, now))
        return None

    def release(self, lease_id: str, epoch: int, used: TokensUsed | None = None) -> list[Lease]:
        """Give a slot back (idempotent); returns the leases this hands to waiters.
        ``used``: what the call used, as its answer said: corrects its group's budget
        and its flow's service. A release that frees nothing is counted (see
        LeaseTable.releasable)."""
        return self._dispatch() if self._released(lease_id, epoch, used) else []

    def _released(self, lease_id: str, epoch: int, used: TokensUsed | None) -> bool:
        """Free the slot of a release, without granting it again; False if not held."""
        if not self.leases.releasable(lease_id, epoch, self.epoch):
            return False
        self.recorder.finished(self.holdings.free(lease_id, used, released=True), Outcome.RELEASED)
        return True

    def next_in_line(self) -> dict[str, tuple[str, str]]:
        """See :meth:`actors.handover.HandOvers.next_in_line`."""
        return self.hand_overs.next_in_line(self.groups, self.callers, self.global_limit)

    def hand_over(
        self,
        group_id: str,
        lease_id: str,
        epoch: int,
        successor: str,
        caller: str | None = None,
        used: TokensUsed | None = None,
    ) -> list[Lease]:
        """Release ``lease_id``, whose caller has already started ``successor`` in its slot
        (the hand-over, see docs/architecture.md), under ``epoch``. Returns the leases
        granted: the successor's (unless it held one already) and any the release
        leaves room for. An overtaken successor keeps the slot (its call runs), and is
        counted; so does one whose wait ended here (a queue timeout) meanwhile; one its
        caller cancelled does not. A pool's waiter granted a slot of another of its
        groups meanwhile moves here, where its call runs, and frees that one."""
        group = self.groups[group_id]
        self._released(lease_id, epoch, used)
        granted = []
        if (waiter := self.waiters.get(successor)) is not None:
            self.hand_overs.note(group.queue.peek(), successor)
            group.queue.remove(successor)
            granted.append(self._grant_waiter(group, waiter, epoch))
        elif (held := self.leases.get(successor)) is not None and held.group != group_id:
            # A pool's waiter granted a slot of another of its groups while this was on
            # its way: it runs in the slot passed on here, and that other slot is free.
            self.hand_overs.overtaken += 1
            self.recorder.finished(self.holdings.free(successor), Outcome.RELEASED)
            self.callers.note(successor, caller)
            lease = self._lease(group, successor, held.request_id, held.priority, epoch)
            granted.append(self.holdings.grant(group, lease, waited=0.0, tokens=0))
        elif successor not in self.leases and not self.leases.retired(successor):
            self.callers.note(successor, caller)
            lease = self._lease(group, successor, epoch=epoch)
            granted.append(self.holdings.grant(group, lease, waited=0.0, tokens=0))
        group.tally.handed_over += 1
        return granted + self._dispatch()

    def mark_out(
        self, group_id: str, reason: str, seconds: float
    ) -> tuple[dict[str, PoolUnavailable], list[Lease]]:
        """A caller found the group's server down (its circuit open, its server gone, its
        node lost): it takes no grant for ``seconds``. Its waiters that may use no other
        group in rotation fail at once, with each group's reason: returned by lease id,
        with the leases granted meanwhile. Then one call is let in, the probe; the group
        is back in rotation when it ends without finding the server down (see
        :class:`actors.groupstate.Outage`)."""
        group = self.groups[group_id]
        now = self.clock()
        group.outage = Outage(reason, now + seconds)
        self.recorder.rotation(group)
        failed: dict[str, PoolUnavailable] = {}
        for lease_id in group.queue.lease_ids():
            waiter = self.waiters[lease_id]
            unavailable = self._unavailable([self.groups[g] for g in waiter.groups], now)
            if unavailable is not None:
                failed[lease_id] = unavailable
        for lease_id in failed:
            first = self.holdings.unqueue(lease_id)
            assert first is not None
            self.recorder.finished(first, Outcome.REJECTED)
        return failed, self._dispatch()

    def fell_back(self, model: str, fallback: str, reason: str) -> None:
        """A call of ``model`` went to its ``fallback``: ``reason``, the error's type (see
        :mod:`providers.fallback`)."""
        self.fallbacks_taken[model, fallback][reason] += 1
        self.recorder.version += 1

    def throttled(self, group_id: str, lease_id: str, retry_after: float | None) -> GroupInfo:
        """The call holding ``lease_id`` got a 429, to be tried again ``retry_after``
        seconds from now: pause the group until then and learn from it (see
        :mod:`actors.adaptive`), unless not ``adaptive``. Returns the group's info."""
        group = self.groups[group_id]
        group.throttle.count += 1
        if self.adaptive:
            pause = DEFAULT_PAUSE_SECONDS if retry_after is None else retry_after
            granted_at = self.leases.granted_at(lease_id)
            budget = group.throttle.hit(lease_id, granted_at, group.budget, pause, self.clock())
            group.budget, self.budgeted = budget, True
            self.recorder.throttled(group, pause)
        return self._info(group)

    def cancel(self, lease_id: str, *, timed_out: bool = False) -> list[Lease]:
        """The caller gave up: leave the queue, or give back a slot granted meanwhile."""
        granted: list[Lease] = []
        if (group := self.holdings.unqueue(lease_id)) is not None:
            if not timed_out:
                # Its caller gave it up: a hand_over naming it that crossed this on its
                # way must not make it hold a slot.
                self.leases.retire(lease_id)
        elif lease_id in self.leases:
            # Granted in the same instant the caller gave up: pass the slot on.
            group = self.holdings.free(lease_id)
            granted = self._dispatch()
        else:
            self.leases.retire(lease_id)
            return []
        self.recorder.finished(group, Outcome.TIMED_OUT if timed_out else Outcome.CANCELLED)
        return granted

    def drop_caller(self, caller: str) -> tuple[list[str], list[Lease]]:
        """The caller died: drop its waiters and free its leases; returns the lease ids of
        the dropped waiters and the leases handed on. Its later acquires are refused."""
        self.callers.died(caller)
        dropped: list[str] = []
        freed = False
        for lease_id in self.callers.leases(caller):
            if (group := self.holdings.unqueue(lease_id)) is not None:
                dropped.append(lease_id)
            else:
                group = self.holdings.free(lease_id)
                freed = True
            self.recorder.finished(group, Outcome.ABANDONED)
        return dropped, self._dispatch() if freed else []

    def renew(self, lease_id: str, epoch: int) -> bool:
        """Push a held lease's deadline one ttl ahead; False if it is no longer held."""
        return self.leases.renew(lease_id, epoch)

    def watched(self, caller: str) -> None:
        """See :meth:`actors.callers.CallerIndex.watched`."""
        self.callers.watched(caller)

    def unwatched(self, caller: str) -> None:
        self.callers.unwatched(caller)

    # -- time -------------------------------------------------------------------

    def reclaim_expired(self) -> list[Lease]:
        """Take back every lease past its deadline, but those of a watched caller, whose
        deadline moves one ttl on; return the leases handed on."""
        expired = False
        while (lease_id := self.leases.pop_expired()) is not None:
            # A restored lease counts only once its holder asked for it again: one whose
            # release was lost in the restart is never renewed, and must expire.
            if self.callers.is_watched(lease_id) and not self.leases.restored(lease_id):
                self.leases.extend(lease_id)
                continue
            self.recorder.finished(self.holdings.free(lease_id), Outcome.EXPIRED)
            expired = True
        return self._dispatch() if expired else []

    def tick(self) -> list[Lease]:
        """Reclaim what expired and grant what budget now allows; return the leases granted."""
        return self.reclaim_expired() + self._dispatch()

    def next_wake(self) -> float | None:
        """When :meth:`tick` next has something to do: a lease's deadline, the time a
        budgeted group's best waiter fits its budget, or a group's return to rotation.
        None: nothing until a call."""
        times = [self.next_expiry()]
        if self._global_room():  # else a release comes first, and dispatches
            now = self.clock()
            for group in self.groups.values():
                waits = group.budget is not None or group.out(now)
                top = group.next_waiter() if waits else None
                if top is not None:
                    times.append(group.ready_at(self.waiters[top[1]], now))
        return min((t for t in times if t is not None and t < math.inf), default=None)

    def next_expiry(self) -> float | None:
        """The earliest deadline of a held lease (for the caller's timer), or None."""
        return self.leases.next_expiry()

    # -- queries (see actors.reports) -------------------------------------------

    def can_run_immediately(self, group_id: str) -> bool:
        return self._global_room() and self.groups[group_id].fits_now(0, self.clock())

    def position(self, request_id: str) -> QueuePosition | None:
        return reports.position(self, request_id)

    def stats(self) -> QueueStats:
        return reports.stats(self)

    def view(self, first: int) -> QueueView:
        return reports.view(self, first)

    # -- internals ------------------------------------------------------------

    def _too_long(
        self, groups: list[Group], key: GrantKey, options: CallOptions, now: float
    ) -> WaitTooLong | None:
        """The error of a call whose estimated wait, at its best group, is past its
        ``max_wait``; None if it is not, or nothing is known to estimate it by yet."""
        waits = [
            (wait, g.spec.id)
            for g in groups
            if (
                wait := reports.estimate(
                    g, self.global_limit, g.queue.ahead_of_key(key), options.tokens, now
                )
            )
            is not None
        ]
        if len(waits) < len(groups):
            return None  # a group with no call ended yet: no estimate to go by
        wait, group_id = min(waits)
        assert options.max_wait is not None
        return WaitTooLong(group_id, wait, options.max_wait) if wait > options.max_wait else None

    def _unavailable(self, groups: list[Group], now: float) -> PoolUnavailable | None:
        """The error of a call none of whose ``groups`` is in rotation at ``now``; None if
        one is."""
        if any(not group.out(now) for group in groups):
            return None
        return PoolUnavailable({g.spec.id: g.outage.reason for g in groups if g.outage})

    def _global_room(self) -> bool:
        return self.global_limit is None or self.holdings.total_active < self.global_limit

    def _lease(
        self,
        group: Group,
        lease_id: str,
        request_id: str | None = None,
        priority: int = DEFAULT_OPTIONS.priority,
        epoch: int | None = None,
    ) -> Lease:
        """A lease of ``group``; by default of this epoch, known by its lease id, at the
        default priority (a lease restored or handed over, whose options are not here)."""
        epoch = self.epoch if epoch is None else epoch
        return Lease(
            lease_id, group.spec.id, request_id or lease_id, priority, epoch, self.lease_ttl
        )

    def _grant_waiter(self, group: Group, waiter: Waiter, epoch: int | None = None) -> Lease:
        """Grant a waiter just taken out of ``group``'s queue (its caller stays noted)."""
        self.holdings.taken(waiter, group)
        lease = self._lease(group, waiter.lease_id, waiter.request_id, waiter.priority, epoch)
        waited = self.clock() - waiter.queued_at
        return self.holdings.grant(
            group,
            lease,
            waited=waited,
            tokens=waiter.tokens,
            flow=waiter.flow,
            weight=waiter.weight,
        )

    def _dispatch(self) -> list[Lease]:
        """Grant waiters while any can run, best key first across all groups."""
        granted: list[Lease] = []
        now = self.clock()
        while self._global_room():
            best: tuple[GrantKey, str, Group] | None = None
            for group in self.groups.values():
                top = group.next_waiter()
                if top is None or (best is not None and top[0] >= best[0]):
                    continue
                if group.ready_at(self.waiters[top[1]], now) <= now:
                    best = (top[0], top[1], group)
            if best is None:
                break
            _, lease_id, group = best
            group.queue.pop()
            granted.append(self._grant_waiter(group, self.waiters[lease_id]))
        return granted


def _least_busy(free: list[Group]) -> Group:
    """Which of a pool's groups with room a new arrival takes: the one with the fewest
    calls per weight (weighted least connections); those alike take turns by weight
    (smooth weighted round robin, as nginx's: each adds its weight to its turn, the
    highest is taken and gives back the weights of all)."""
    least = min(g.active / g.weight for g in free)
    alike = [g for g in free if g.active / g.weight == least]
    if len(alike) == 1:
        return alike[0]
    for g in alike:
        g.turn += g.weight
    taken = max(alike, key=lambda g: g.turn)
    taken.turn -= sum(g.weight for g in alike)
    return taken


def _pool_limit(groups: list[Group]) -> int | None:
    """How many calls a pool's groups run at once (None: no limit)."""
    limits = [g.limit for g in groups]
    return None if None in limits else sum(limit for limit in limits if limit is not None)
