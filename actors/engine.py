"""The slot engine: limits, leases and the queue of waiters, in plain Python.

No Ray, no asyncio and no clock of its own (``clock=`` is injected), so every
ordering and timing rule is tested by calling methods and moving a fake clock.
The asyncio layer (:mod:`actors.gate`) turns "queued" into a future and the
leases each call returns into wake-ups.

Vocabulary (after trio's CapacityLimiter): a *group* has a *limit* of slots; a
caller asks for a slot on behalf of a request id and gets a *lease*; a lease is
held until released, or until its ttl runs out without a renewal, at which
point it is reclaimed so a crashed caller never keeps a slot. Lease ids are
chosen by the caller so that a release or cancel can be sent before the
acquire's answer is back, and in any order.

A group may also have a requests- and tokens-per-minute budget (see
:mod:`actors.budget`): a grant then takes budget too, and a group whose best
waiter does not fit its budget grants nobody until it does (no later,
smaller call goes first). Budget comes back with time, not with a release,
so the asyncio layer asks :meth:`SlotEngine.next_wake` when to call
:meth:`SlotEngine.tick`. A group whose provider answers 429 gets a budget
learned from them, and a pause (see :mod:`actors.adaptive`).

A freed slot may also pass on without the manager's round trip: where the
waiter a release would grant comes from the holder's own process,
:meth:`SlotEngine.next_in_line` names it to that process, which starts it in
the slot as soon as its call there ends and tells the engine after the fact
(:meth:`SlotEngine.hand_over`). Only where the next grant depends on a
release alone: a capped group, no global cap, no budget or pause.

Invariant, restored at the end of every public method: no waiter could be
granted. Either the global cap is reached or every group with waiters is
full or waits for budget. That is why a new arrival that finds room (and,
in a budgeted group, no one waiting) may take it at once without overtaking
anyone.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from actors.adaptive import DEFAULT_PAUSE_SECONDS, Adaptation, RecentGrants
from actors.budget import Bucket, Budget, BudgetLimits
from actors.callers import Caller
from actors.errors import (
    CallerGone,
    DuplicateLease,
    LeaseRetired,
    QueueFull,
    UnknownGroup,
)
from actors.groups import GroupSpec
from actors.journal import GroupRecord, HeldLease
from actors.options import DEFAULT_OPTIONS, CallLabels, CallOptions
from actors.queueview import GroupActivity, LevelHistory, QueueView, WaitingCall
from actors.stats import GroupInfo, GroupStats, QueuePosition, QueueStats, percentile
from actors.waitqueue import GrantKey, WaitQueue, grant_key

# Weight of the newest hold time in a group's moving average (for wait estimates).
HOLD_SMOOTHING = 0.2
# How many lease ids released or cancelled before their acquire arrived, and how
# many dead caller processes, are remembered.
RETIRED_MEMORY = 65_536
# How many units of work (see actors.waitqueue) keep their number after their last call.
UNIT_MEMORY = 65_536
# How many recent waits per group the wait percentiles are taken over.
WAIT_WINDOW = 1_000


class Observer(Protocol):
    """Told of every change the engine makes (the manager turns these into metrics)."""

    def submitted(self, group: str, kind: str) -> None: ...

    def granted(self, group: str, kind: str, waited: float) -> None: ...

    def finished(self, group: str, kind: str, outcome: str) -> None: ...

    def levels(self, group: str, kind: str, active: int, pending: int) -> None: ...

    def budget_left(self, group: str, kind: str, requests: int | None, tokens: int | None) -> None:
        """What a budgeted group's budget allows now, after each grant and correction."""

    def throttled(self, group: str, kind: str, pause_seconds: float) -> None:
        """A call of the group got a 429: its grants pause for ``pause_seconds``."""

    def learned_rpm(self, group: str, kind: str, rpm: float) -> None:
        """The group's rate, as learned from its 429s, after each change."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted slot: renew it every ``ttl / 3`` under ``epoch``, release it by ``id``."""

    id: str
    group: str
    request_id: str
    priority: int
    epoch: int
    ttl: float


@dataclass(slots=True)
class _Waiter:
    lease_id: str
    group: str
    request_id: str
    priority: int
    key: GrantKey
    queued_at: float
    tokens: int
    labels: CallLabels


@dataclass(slots=True)
class _Group:
    spec: GroupSpec
    limit: int | None
    queue: WaitQueue
    # Whether a restarted manager must know its held leases (see actors.journal).
    journaled: bool
    budget: Budget | None = None
    # The requests per minute learned from the provider's 429s, once there was one.
    adaptation: Adaptation | None = None
    recent: RecentGrants = field(default_factory=RecentGrants)
    throttled: int = 0
    leases: set[str] = field(default_factory=set)
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=WAIT_WINDOW))
    history: LevelHistory = field(default_factory=LevelHistory)
    active: int = 0
    peak_active: int = 0
    avg_hold: float | None = None
    granted: int = 0
    handed_over: int = 0
    released: int = 0
    expired: int = 0
    cancelled: int = 0
    timed_out: int = 0
    rejected: int = 0
    abandoned: int = 0

    def has_room(self) -> bool:
        return self.limit is None or self.active < self.limit


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
        adaptive: bool = True,
        hand_off: bool = True,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
        restarted_at: float | None = None,
    ) -> None:
        self.epoch = epoch
        # Wall-clock time of a restart this engine took over from (see _arrival).
        self.restarted_at = restarted_at
        self._observer = observer
        self.lease_ttl = lease_ttl
        self.global_limit = global_limit
        self.max_pending_per_group = max_pending_per_group
        self._overrides = dict(group_limits or {})
        self._budgets = dict(group_budgets or {})
        # Whether any group has a budget (whose waiters wait for time, not a release).
        self.budgeted = bool(self._budgets)
        # Whether a 429 pauses its group and lowers its rate (see actors.adaptive).
        self.adaptive = adaptive
        # Whether next_in_line names successors (see hand_over).
        self.hand_off = hand_off
        # Leases whose call got a 429: their release is no success to learn from.
        self._throttled: set[str] = set()
        self.clock = clock
        self._groups: dict[str, _Group] = {}
        self._waiters: dict[str, _Waiter] = {}
        self._leases: dict[str, Lease] = {}
        self._expires_at: dict[str, float] = {}
        self._granted_at: dict[str, float] = {}
        # Leases held again after a restart whose holder has not asked for them yet.
        self._restored: set[str] = set()
        # Groups whose record (spec, held leases) changed since take_changed().
        self._changed: set[str] = set()
        # The process that asked for each lease waiting or held, the leases of each
        # process, and the processes that died (an acquire of theirs may still arrive).
        self._workers: dict[str, str] = {}
        self._by_worker: dict[str, set[str]] = {}
        self._gone: OrderedDict[str, None] = OrderedDict()
        # Processes whose death Ray would report (their lifelines followed, by count):
        # their leases outlive the ttl, which only backs up a death nobody reports.
        self._watched: dict[str, int] = {}
        # (deadline, lease id); renewals push a new entry and stale ones are skipped.
        self._deadlines: list[tuple[float, str]] = []
        self._arrivals = itertools.count()
        self._retired: OrderedDict[str, None] = OrderedDict()
        # unit -> its number, least recently used first. Kept past the unit's last
        # waiter: a unit often has a gap between one call and its next.
        self._units: OrderedDict[str, int] = OrderedDict()
        self._unit_numbers = itertools.count()
        self._total_active = 0
        self.stale_epoch_releases = 0
        self.unknown_releases = 0
        self.late_acquires = 0
        self.renewed = 0
        # Hand-overs whose successor was no longer its group's best waiter by the time
        # the engine heard of it: one arrived while the notice was on its way.
        self.overtaken = 0
        # Answers to next_in_line calls (each a Ray reply, counted as a manager call).
        self.next_in_line_answers = 0
        # Moves on every change of a group's levels or pause (see actors.queueview).
        self.version = 0

    # -- groups ---------------------------------------------------------------

    def register(self, spec: GroupSpec) -> GroupInfo:
        """Make a group known (idempotent); a configured override beats the default limit."""
        group = self._groups.get(spec.id)
        if group is None:
            limit = self._overrides.get(spec.id, spec.default_limit)
            journaled = limit is not None or self.global_limit is not None
            group = _Group(spec=spec, limit=limit, queue=WaitQueue(), journaled=journaled)
            if spec.id in self._budgets:
                group.budget = Budget.of(self._budgets[spec.id], self.clock())
            self._groups[spec.id] = group
            self._changed.add(spec.id)
        return self._info(group)

    def restore(self, record: GroupRecord) -> None:
        """After a restart: know the group again and hold its leases, each for one more ttl.

        A holder that lives renews and releases its lease as usual (by id and
        its own epoch); one that died lets it expire. Until then the slot is
        not granted again.
        """
        group = self._groups[self.register(record.spec).id]
        for lease_id, held in record.held.items():
            if lease_id not in self._leases:
                self._hold(group, lease_id, lease_id, DEFAULT_OPTIONS.priority, held.epoch)
                self._restored.add(lease_id)
                self._note_worker(lease_id, held.worker)
        self._levels(group)

    def take_changed(self) -> set[str]:
        """The groups whose record changed since the last call (for the journal)."""
        changed, self._changed = self._changed, set()
        return changed

    def record(self, group_id: str) -> GroupRecord:
        group = self._groups[group_id]
        held = {
            i: HeldLease(self._leases[i].epoch, self._workers.get(i)) for i in sorted(group.leases)
        }
        return GroupRecord(spec=group.spec, held=held)

    def journaled(self, group_id: str) -> bool:
        return self._group(group_id).journaled

    def group_info(self, group_id: str) -> GroupInfo:
        return self._info(self._group(group_id))

    def _info(self, group: _Group) -> GroupInfo:
        return GroupInfo(
            id=group.spec.id,
            kind=group.spec.kind,
            limit=group.limit,
            global_limit=self.global_limit,
            epoch=self.epoch,
            lease_ttl=self.lease_ttl,
            budgeted=group.budget is not None,
        )

    def _group(self, group_id: str) -> _Group:
        try:
            return self._groups[group_id]
        except KeyError:
            raise UnknownGroup(group_id, tuple(self._groups)) from None

    # -- acquire / release ----------------------------------------------------

    def acquire(
        self,
        group_id: str,
        lease_id: str,
        options: CallOptions = DEFAULT_OPTIONS,
        worker: str | None = None,
        *,
        started: bool = False,
    ) -> Lease | None:
        """Grant a slot now and return its lease, or queue the request and return None.

        A queued request is granted later by whichever call frees a slot
        (release, cancel, reclaim_expired); that call returns its lease. A call
        without a request id is known by its lease id. ``worker``: the process
        that asked, whose waiters and leases ``drop_caller`` ends. ``started``:
        the call already runs (its caller took the group for one where nobody
        waits, see :mod:`actors.outbox`): it is counted, past any limit or budget.
        """
        group = self._group(group_id)
        if worker is not None and worker in self._gone:
            raise CallerGone(str(Caller(worker)))
        request_id = options.request_id or lease_id
        priority = options.priority
        if lease_id in self._restored:
            # Granted before a restart, its answer lost: Ray retried the acquire.
            self._restored.discard(lease_id)
            return self._leases[lease_id]
        if lease_id in self._retired:
            del self._retired[lease_id]
            self.late_acquires += 1
            raise LeaseRetired(lease_id)
        if lease_id in self._waiters or lease_id in self._leases:
            raise DuplicateLease(lease_id)
        if self._observer is not None:
            self._observer.submitted(group_id, group.spec.kind)
        arrival = self._arrival(options.asked_at)
        number = self._unit_number(options.unit, arrival)
        if started or (
            group.has_room() and self._global_room() and self._fits_now(group, options.tokens)
        ):
            self._note_worker(lease_id, worker)
            return self._grant(
                group, lease_id, request_id, priority, waited=0.0, tokens=options.tokens
            )
        if len(group.queue) >= self.max_pending_per_group:
            self._finish(group, "rejected")
            raise QueueFull(
                group_id,
                len(group.queue),
                self.max_pending_per_group,
                self._estimate(group, len(group.queue), options.tokens),
            )
        key = grant_key(
            priority,
            arrival,
            unit=number,
            critical=options.critical,
            width=self._width(group),
        )
        self._waiters[lease_id] = _Waiter(
            lease_id,
            group_id,
            request_id,
            priority,
            key,
            self.clock(),
            options.tokens,
            options.labels,
        )
        group.queue.push(lease_id, key)
        self._note_worker(lease_id, worker)
        self._levels(group)
        return None

    def release(self, lease_id: str, epoch: int, used_tokens: int | None = None) -> list[Lease]:
        """Give a slot back (idempotent). Returns the leases this hands to waiters.

        ``used_tokens``: what the call used, as its answer reported, which
        corrects the estimate its group's budget was charged. A lease of
        another epoch (granted before a manager restart), one already
        reclaimed, or one never seen is ignored and counted; an id never seen is
        remembered, so an acquire that arrives after its own release is refused.
        """
        return self._dispatch() if self._released(lease_id, epoch, used_tokens) else []

    def _released(self, lease_id: str, epoch: int, used_tokens: int | None) -> bool:
        """Free the slot of a release, without granting it again; False if not held."""
        lease = self._leases.get(lease_id)
        if lease is not None and lease.epoch == epoch:
            succeeded = lease_id not in self._throttled
            group = self._free(lease_id, used_tokens)
            if succeeded and group.adaptation is not None and group.budget is not None:
                group.adaptation.recover()
                self._retune(group)
            self._finish(group, "released")
            return True
        if epoch != self.epoch:
            self.stale_epoch_releases += 1
            return False
        self.unknown_releases += 1
        self._retire(lease_id)
        return False

    def next_in_line(self) -> dict[str, tuple[str, str]]:
        """By group: the waiter a slot freed now would go to, and its process, where that
        process holds a slot of the group itself and may pass it straight on
        (:meth:`hand_over`). Only groups whose next grant waits for a release and
        nothing else: capped, under no global cap, with no budget or pause."""
        if not self.hand_off or self.global_limit is not None:
            return {}
        named = {}
        for group_id, group in self._groups.items():
            if group.limit is None or group.budget is not None:
                continue
            top = group.queue.peek()
            if top is None:
                continue
            worker = self._workers.get(top[1])
            if worker is not None and any(self._workers.get(i) == worker for i in group.leases):
                named[group_id] = (top[1], worker)
        return named

    def hand_over(
        self,
        group_id: str,
        lease_id: str,
        epoch: int,
        successor: str,
        worker: str | None = None,
        used_tokens: int | None = None,
    ) -> list[Lease]:
        """Release ``lease_id``, whose process has already started ``successor`` in its slot,
        as :meth:`next_in_line` named it. The successor holds the slot under ``epoch``,
        as its process believes. Returns the leases granted: the successor's (unless
        it held one already) and any the release leaves room for.

        A successor overtaken meanwhile (a better waiter arrived while the notice was
        on its way) keeps the slot all the same: its call runs already, and is
        counted. One whose wait ended here (a queue timeout) before this arrived is
        counted too; one its process cancelled is not.
        """
        group = self._group(group_id)
        self._released(lease_id, epoch, used_tokens)
        granted = []
        waiter = self._waiters.get(successor)
        if waiter is not None:
            top = group.queue.peek()
            if top is not None and top[1] != successor:
                self.overtaken += 1
            group.queue.remove(successor)
            granted.append(self._grant_waiter(group, waiter, epoch))
        elif successor not in self._leases and successor not in self._retired:
            self._note_worker(successor, worker)
            lease = self._grant(
                group,
                successor,
                successor,
                DEFAULT_OPTIONS.priority,
                waited=0.0,
                tokens=0,
                epoch=epoch,
            )
            granted.append(lease)
        group.handed_over += 1
        return granted + self._dispatch()

    def throttled(self, group_id: str, lease_id: str, retry_after: float | None) -> GroupInfo:
        """The call holding ``lease_id`` got a 429, to be tried again ``retry_after``
        seconds from now: pause the group until then and learn from it (see
        :mod:`actors.adaptive`), unless not ``adaptive``. Returns the group's info."""
        group = self._group(group_id)
        now = self.clock()
        group.throttled += 1
        if not self.adaptive:
            return self._info(group)
        if lease_id in self._leases:
            self._throttled.add(lease_id)
        configured = self._budgets[group_id].rpm if group_id in self._budgets else None
        adaptation = group.adaptation
        if adaptation is None:
            group.adaptation = Adaptation.first(group.recent.count(now), configured, now)
        elif self._granted_at.get(lease_id, -math.inf) > adaptation.lowered_at:
            adaptation.lower(now)
        budget = group.budget = group.budget or Budget(None, None)
        self.budgeted = True
        pause = DEFAULT_PAUSE_SECONDS if retry_after is None else retry_after
        budget.paused_until = max(budget.paused_until, now + pause)
        if group.adaptation is not None:
            self._retune(group, empty=True)
        if self._observer is not None:
            self._observer.throttled(group.spec.id, group.spec.kind, pause)
        self.version += 1
        return self._info(group)

    def _retune(self, group: _Group, *, empty: bool = False) -> None:
        """Set the group's requests bucket to its learned rate; ``empty``: after a 429, since
        the provider's own is."""
        assert group.adaptation is not None and group.budget is not None
        now = self.clock()
        rpm = group.adaptation.rpm
        requests = group.budget.requests
        if requests is None:
            requests = group.budget.requests = Bucket(rpm, 0.0, now)
        requests.retune(rpm, now)
        if empty:
            requests.level = min(requests.level, 0.0)
        if self._observer is not None:
            self._observer.learned_rpm(group.spec.id, group.spec.kind, rpm)

    def cancel(self, lease_id: str, *, timed_out: bool = False) -> list[Lease]:
        """The caller gave up: leave the queue, or give back a slot granted meanwhile."""
        if (group := self._unqueue(lease_id)) is not None:
            handed_on: list[Lease] = []  # a waiter holds no slot: nothing to pass on
            if not timed_out:
                # Its process gave it up: a hand_over naming it that crossed this
                # on its way must not make it hold a slot.
                self._retire(lease_id)
        elif lease_id in self._leases:
            # Granted in the same instant the caller gave up: pass the slot on.
            group = self._free(lease_id)
            handed_on = self._dispatch()
        else:
            self._retire(lease_id)
            return []
        self._finish(group, "timed_out" if timed_out else "cancelled")
        return handed_on

    def drop_caller(self, worker_id: str) -> tuple[list[str], list[Lease]]:
        """The process ``worker_id`` died: drop its waiters and free its leases.

        Returns the lease ids of the dropped waiters and the leases handed on.
        An acquire of that process that arrives later is refused.
        """
        self._gone[worker_id] = None
        if len(self._gone) > RETIRED_MEMORY:
            self._gone.popitem(last=False)
        dropped: list[str] = []
        freed = False
        for lease_id in sorted(self._by_worker.get(worker_id, ())):
            if (group := self._unqueue(lease_id)) is not None:
                dropped.append(lease_id)
            else:
                group = self._free(lease_id)
                freed = True
            self._finish(group, "abandoned")
        return dropped, self._dispatch() if freed else []

    def renew(self, lease_id: str, epoch: int) -> bool:
        """Push a held lease's deadline one ttl ahead; False if it is no longer held."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.epoch != epoch:
            return False
        self._restored.discard(lease_id)  # its holder still holds it
        deadline = self.clock() + self.lease_ttl
        self._expires_at[lease_id] = deadline
        heapq.heappush(self._deadlines, (deadline, lease_id))
        self.renewed += 1
        return True

    def watched(self, worker_id: str) -> None:
        """Ray will report the death of process ``worker_id`` (a lifeline of it is followed):
        until :meth:`unwatched`, its leases are not reclaimed at their ttl, however late
        its renewals (they queue behind a burst of acquires in the manager's mailbox)."""
        self._watched[worker_id] = self._watched.get(worker_id, 0) + 1

    def unwatched(self, worker_id: str) -> None:
        """A lifeline of ``worker_id`` ended: with its last, its leases expire at their ttl
        again (a death that nobody reports ends them there)."""
        count = self._watched.pop(worker_id, 0) - 1
        if count > 0:
            self._watched[worker_id] = count

    def reclaim_expired(self) -> list[Lease]:
        """Take back every lease past its deadline, but those of a watched process, whose
        deadline moves one ttl on; return the leases handed on."""
        now = self.clock()
        expired = False
        while (deadline := self.next_expiry()) is not None and deadline <= now:
            _, lease_id = heapq.heappop(self._deadlines)
            # A restored lease counts only once its holder asked for it again: one whose
            # release was lost in the restart is never renewed, and must expire.
            if self._workers.get(lease_id) in self._watched and lease_id not in self._restored:
                self._expires_at[lease_id] = now + self.lease_ttl
                heapq.heappush(self._deadlines, (now + self.lease_ttl, lease_id))
                continue
            self._finish(self._free(lease_id), "expired")
            expired = True
        return self._dispatch() if expired else []

    def tick(self) -> list[Lease]:
        """Reclaim what expired and grant what budget now allows; return the leases granted."""
        return self.reclaim_expired() + self._dispatch()

    def next_wake(self) -> float | None:
        """When :meth:`tick` next has something to do: a lease's deadline, or the time
        a budgeted group's best waiter fits its budget. None: nothing until a call."""
        times = [t for t in (self.next_expiry(), self._next_budget_time()) if t is not None]
        return min(times, default=None)

    def _next_budget_time(self) -> float | None:
        if not self._global_room():
            return None  # a release comes first, and dispatches
        now = self.clock()
        times = [
            group.budget.ready_at(self._waiters[top[1]].tokens, now)
            for group in self._groups.values()
            if group.budget is not None
            and group.has_room()
            and (top := group.queue.peek()) is not None
        ]
        return min((t for t in times if t < math.inf), default=None)

    def next_expiry(self) -> float | None:
        """The earliest deadline of a held lease (for the caller's timer), or None."""
        while self._deadlines:
            deadline, lease_id = self._deadlines[0]
            if self._expires_at.get(lease_id) == deadline:
                return deadline
            heapq.heappop(self._deadlines)
        return None

    # -- queries --------------------------------------------------------------

    def can_run_immediately(self, group_id: str) -> bool:
        group = self._group(group_id)
        return group.has_room() and self._global_room() and self._fits_now(group, 0)

    def position(self, request_id: str) -> QueuePosition | None:
        """Where a waiting request stands in its group's queue, or None if it is not waiting."""
        for waiter in self._waiters.values():
            if waiter.request_id == request_id:
                group = self._groups[waiter.group]
                ahead = group.queue.ahead_of(waiter.lease_id)
                return QueuePosition(
                    request_id=request_id,
                    group=waiter.group,
                    priority=waiter.priority,
                    ahead=ahead,
                    waited_seconds=self.clock() - waiter.queued_at,
                    estimated_wait_seconds=self._estimate(group, ahead, waiter.tokens),
                )
        return None

    def stats(self) -> QueueStats:
        now = self.clock()
        left = {gid: g.budget.left(now) for gid, g in self._groups.items() if g.budget is not None}
        groups = {
            gid: GroupStats(
                kind=g.spec.kind,
                limit=g.limit,
                rpm=self._budgets[gid].rpm if gid in self._budgets else None,
                tpm=self._budgets[gid].tpm if gid in self._budgets else None,
                learned_rpm=None if g.adaptation is None else round(g.adaptation.rpm),
                paused_seconds=max(0.0, g.budget.paused_until - now) if g.budget else 0.0,
                throttled=g.throttled,
                requests_left=left[gid][0] if gid in left else None,
                tokens_left=left[gid][1] if gid in left else None,
                active=g.active,
                peak_active=g.peak_active,
                pending=len(g.queue),
                avg_hold_seconds=g.avg_hold,
                wait_p50_seconds=percentile(g.waits, 0.5),
                wait_p95_seconds=percentile(g.waits, 0.95),
                granted=g.granted,
                handed_over=g.handed_over,
                released=g.released,
                expired=g.expired,
                cancelled=g.cancelled,
                timed_out=g.timed_out,
                rejected=g.rejected,
                abandoned=g.abandoned,
            )
            for gid, g in self._groups.items()
        }
        return QueueStats(
            epoch=self.epoch,
            global_limit=self.global_limit,
            active_by_group={gid: s.active for gid, s in groups.items()},
            pending_by_group={gid: s.pending for gid, s in groups.items()},
            total_active=self._total_active,
            total_pending=len(self._waiters),
            groups=groups,
            stale_epoch_releases=self.stale_epoch_releases,
            unknown_releases=self.unknown_releases,
            late_acquires=self.late_acquires,
            renewed=self.renewed,
            overtaken=self.overtaken,
            next_in_line_answers=self.next_in_line_answers,
        )

    def view(self, first: int) -> QueueView:
        """The stats, each group's recent levels, and its first ``first`` waiters in grant
        order with their ETAs."""
        now = self.clock()
        groups = {}
        for gid, group in self._groups.items():
            waiting = []
            for ahead, lease_id in enumerate(group.queue.first(first)):
                waiter = self._waiters[lease_id]
                waiting.append(
                    WaitingCall(
                        request_id=waiter.request_id,
                        priority=waiter.priority,
                        position=ahead + 1,
                        waited_seconds=now - waiter.queued_at,
                        estimated_wait_seconds=self._estimate(group, ahead, waiter.tokens),
                        run=waiter.labels.run,
                        service_id=waiter.labels.service_id,
                        stage=waiter.labels.describe(),
                    )
                )
            held, queued = group.history.series(now)
            groups[gid] = GroupActivity(held_history=held, waiting_history=queued, waiting=waiting)
        return QueueView(version=self.version, stats=self.stats(), groups=groups)

    # -- internals ------------------------------------------------------------

    def _global_room(self) -> bool:
        return self.global_limit is None or self._total_active < self.global_limit

    def _fits_now(self, group: _Group, tokens: int) -> bool:
        """Whether a new arrival's budget allows it now, with nobody waiting before it."""
        if group.budget is None:
            return True
        now = self.clock()
        return len(group.queue) == 0 and group.budget.ready_at(tokens, now) <= now

    def _grant(
        self,
        group: _Group,
        lease_id: str,
        request_id: str,
        priority: int,
        *,
        waited: float,
        tokens: int,
        epoch: int | None = None,
    ) -> Lease:
        group.waits.append(waited)
        epoch = self.epoch if epoch is None else epoch
        lease = self._hold(group, lease_id, request_id, priority, epoch)
        if group.budget is not None:
            group.budget.spend(lease_id, tokens, self.clock())
            self._budget_left(group)
        group.granted += 1
        group.recent.add(self.clock())
        if self._observer is not None:
            self._observer.granted(group.spec.id, group.spec.kind, waited)
        self._levels(group)
        return lease

    def _hold(
        self, group: _Group, lease_id: str, request_id: str, priority: int, epoch: int
    ) -> Lease:
        now = self.clock()
        lease = Lease(lease_id, group.spec.id, request_id, priority, epoch, self.lease_ttl)
        self._leases[lease_id] = lease
        self._granted_at[lease_id] = now
        self._expires_at[lease_id] = now + self.lease_ttl
        heapq.heappush(self._deadlines, (now + self.lease_ttl, lease_id))
        group.leases.add(lease_id)
        group.active += 1
        group.peak_active = max(group.peak_active, group.active)
        self._total_active += 1
        if group.journaled:
            self._changed.add(group.spec.id)
        return lease

    def _unqueue(self, lease_id: str) -> _Group | None:
        """Take a waiter out of its group's queue; the group, or None if it was not waiting."""
        waiter = self._waiters.pop(lease_id, None)
        if waiter is None:
            return None
        group = self._groups[waiter.group]
        group.queue.remove(lease_id)
        self._forget_worker(lease_id)
        return group

    def _free(self, lease_id: str, used_tokens: int | None = None) -> _Group:
        """Forget a held lease; ``used_tokens``: what its call used, if its answer said.

        Its id is retired: an acquire of it that arrives now is late (a slot passed on
        in its caller's process before the acquire got here, or Ray retrying it after a
        restart) and must not be granted a second slot that nobody would release.
        """
        lease = self._leases.pop(lease_id)
        self._retire(lease_id)
        del self._expires_at[lease_id]
        self._throttled.discard(lease_id)
        self._restored.discard(lease_id)
        self._forget_worker(lease_id)
        group = self._groups[lease.group]
        group.leases.discard(lease_id)
        if group.budget is not None:
            group.budget.returned(lease_id, used_tokens, self.clock())
            self._budget_left(group)
        if group.journaled:
            self._changed.add(group.spec.id)
        group.active -= 1
        self._total_active -= 1
        held = self.clock() - self._granted_at.pop(lease_id)
        group.avg_hold = (
            held
            if group.avg_hold is None
            else (1 - HOLD_SMOOTHING) * group.avg_hold + HOLD_SMOOTHING * held
        )
        return group

    def _dispatch(self) -> list[Lease]:
        """Grant waiters while any can run, best key first across all groups."""
        granted: list[Lease] = []
        now = self.clock()
        while self._global_room():
            best: tuple[GrantKey, str, _Group] | None = None
            for group in self._groups.values():
                if not group.has_room():
                    continue
                top = group.queue.peek()
                if top is None or (best is not None and top[0] >= best[0]):
                    continue
                budget = group.budget
                if budget is None or budget.ready_at(self._waiters[top[1]].tokens, now) <= now:
                    best = (top[0], top[1], group)
            if best is None:
                break
            _, lease_id, group = best
            group.queue.pop()
            granted.append(self._grant_waiter(group, self._waiters[lease_id]))
        return granted

    def _grant_waiter(self, group: _Group, waiter: _Waiter, epoch: int | None = None) -> Lease:
        """Grant a waiter just taken out of its group's queue (its process stays noted)."""
        del self._waiters[waiter.lease_id]
        waited = self.clock() - waiter.queued_at
        return self._grant(
            group,
            waiter.lease_id,
            waiter.request_id,
            waiter.priority,
            waited=waited,
            tokens=waiter.tokens,
            epoch=epoch,
        )

    def _note_worker(self, lease_id: str, worker: str | None) -> None:
        if worker is not None:
            self._workers[lease_id] = worker
            self._by_worker.setdefault(worker, set()).add(lease_id)

    def _forget_worker(self, lease_id: str) -> None:
        worker = self._workers.pop(lease_id, None)
        if worker is not None:
            leases = self._by_worker[worker]
            leases.discard(lease_id)
            if not leases:
                del self._by_worker[worker]

    def _finish(self, group: _Group, outcome: str) -> None:
        """Count how a request ended: released, expired, cancelled, timed_out, rejected,
        or abandoned (its caller died)."""
        setattr(group, outcome, getattr(group, outcome) + 1)
        if self._observer is not None:
            self._observer.finished(group.spec.id, group.spec.kind, outcome)
        self._levels(group)

    def _levels(self, group: _Group) -> None:
        self.version += 1
        group.history.note(self.clock(), group.active, len(group.queue))
        if self._observer is not None:
            self._observer.levels(group.spec.id, group.spec.kind, group.active, len(group.queue))

    def _budget_left(self, group: _Group) -> None:
        if self._observer is not None and group.budget is not None:
            requests, tokens = group.budget.left(self.clock())
            self._observer.budget_left(group.spec.id, group.spec.kind, requests, tokens)

    def _width(self, group: _Group) -> int:
        """How many calls of the group can run at once."""
        return min((w for w in (group.limit, self.global_limit) if w is not None), default=1)

    def _arrival(self, asked_at: float | None) -> int:
        """The order of arrival: this engine's count, except for a call asked before a
        restart (an acquire Ray retried), which gets the (negative) microseconds
        between its ask and the restart, so that the waiters a restart interrupted
        go first, in the order they asked."""
        if asked_at is not None and self.restarted_at is not None:
            before = round((asked_at - self.restarted_at) * 1e6)
            if before < 0:
                return before
        return next(self._arrivals)

    def _unit_number(self, unit: str | None, arrival: int) -> int:
        """A unit's number: drawn at its first call; for a call asked before a
        restart, its arrival."""
        drawn = arrival if arrival < 0 else None
        if unit is None:
            return drawn if drawn is not None else next(self._unit_numbers)
        if unit not in self._units:
            self._units[unit] = drawn if drawn is not None else next(self._unit_numbers)
            if len(self._units) > UNIT_MEMORY:
                self._units.popitem(last=False)
        self._units.move_to_end(unit)
        return self._units[unit]

    def _retire(self, lease_id: str) -> None:
        self._retired[lease_id] = None
        if len(self._retired) > RETIRED_MEMORY:
            self._retired.popitem(last=False)

    def _estimate(self, group: _Group, ahead: int, tokens: int) -> float | None:
        """Seconds until a waiter with ``ahead`` others before it is granted.

        Each slot frees about once per average hold, so ``ahead + 1`` grants
        take ``(ahead + 1) / limit`` holds (unknown until a slot was released).
        A budget must also hold ``ahead + 1`` requests, and as many calls of
        ``tokens`` each: the later of the two.
        """
        waits = []
        if group.avg_hold is not None:
            slots = group.limit or self.global_limit or 1
            waits.append((ahead + 1) / slots * group.avg_hold)
        if group.budget is not None:
            waits.append(group.budget.wait_for(ahead + 1, tokens, self.clock()))
        return max(waits, default=None)
