"""The slot engine's read models: how each request ended, stats, a waiter's position, the
queue view, wait estimates, and the observer that turns changes into metrics.

The engine tells its :class:`Recorder` of every change; it keeps a
:class:`GroupTally` per group and tells the :class:`Observer` (the manager's
metrics). The functions here read the engine (under the gate's lock) and
build the snapshots of :mod:`actors.stats` and :mod:`actors.queueview`.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

from actors.budget import Budget
from actors.errors import WaitTooLong
from actors.groups import Pool
from actors.groupstate import Group, Waiter
from actors.leases import LeaseTable
from actors.options import CallOptions, flow_tenant
from actors.queueview import GroupActivity, QueueView, WaitingCall
from actors.stats import GroupStats, Outlook, QueuePosition, QueueStats, percentile
from actors.tally import ModelTally, Outcome
from actors.waitqueue import GrantKey, grant_key


class HandOverCounts(Protocol):
    @property
    def overtaken(self) -> int: ...
    @property
    def answers(self) -> int: ...


class LendingCounts(Protocol):
    @property
    def recalls(self) -> Mapping[str, int]: ...


class EngineState(Protocol):
    """What the read models read of the slot engine (:class:`actors.engine.SlotEngine`),
    under the gate's lock: nothing here changes it."""

    @property
    def epoch(self) -> int: ...
    @property
    def global_limit(self) -> int | None: ...
    @property
    def version(self) -> int: ...
    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def groups(self) -> Mapping[str, Group]: ...
    @property
    def waiters(self) -> Mapping[str, Waiter]: ...
    @property
    def total_active(self) -> int: ...
    @property
    def leases(self) -> LeaseTable: ...
    @property
    def hand_overs(self) -> HandOverCounts: ...
    @property
    def models(self) -> ModelTally: ...
    @property
    def lending(self) -> LendingCounts: ...


class Observer(Protocol):
    """Told of every change the engine makes (the manager turns these into metrics)."""

    def submitted(self, group: str, kind: str) -> None: ...

    def granted(self, group: str, kind: str, waited: float, tenant: str) -> None:
        """A grant after ``waited`` seconds, to a call of ``tenant`` ("" for no tenant's)."""

    def served(self, group: str, kind: str, tenant: str, seconds: float, cost: float) -> None:
        """A call of ``tenant`` ended, having held its slot ``seconds``, and cost its
        fair share ``cost`` (see actors.waitqueue)."""

    def finished(self, group: str, kind: str, outcome: Outcome) -> None: ...

    def levels(self, group: str, kind: str, active: int, pending: int) -> None: ...

    def budget_left(self, group: str, kind: str, requests: int | None, tokens: int | None) -> None:
        """What a budgeted group's budget allows now, after each grant and correction."""

    def throttled(self, group: str, kind: str, pause_seconds: float) -> None:
        """A call of the group got a 429: its grants pause for ``pause_seconds``."""

    def learned_rpm(self, group: str, kind: str, rpm: float) -> None:
        """The group's rate, as learned from its 429s, after each change."""

    def rotation(self, group: str, kind: str, out: bool) -> None:
        """The group's server left the rotation (``out``), or its probe brought it back."""


class Recorder:
    """Notes the engine's changes in each group's tally and tells the observer.

    ``version`` moves on every change of a group's levels or pause (see
    :mod:`actors.queueview`).
    """

    def __init__(self, observer: Observer | None, clock: Callable[[], float]) -> None:
        self._observer = observer
        self._clock = clock
        self.version = 0

    def submitted(self, group: Group) -> None:
        if self._observer is not None:
            self._observer.submitted(group.spec.id, group.spec.kind)

    def granted(self, group: Group, waited: float, flow: str) -> None:
        group.tally.grant(waited)
        group.throttle.granted(self._clock())
        if self._observer is not None:
            self._observer.granted(group.spec.id, group.spec.kind, waited, flow_tenant(flow))
        self.budget_left(group)
        self.levels(group)

    def served(self, group: Group, flow: str, seconds: float, cost: float) -> None:
        if self._observer is not None:
            self._observer.served(group.spec.id, group.spec.kind, flow_tenant(flow), seconds, cost)

    def finished(self, group: Group, outcome: Outcome) -> None:
        group.tally.ended[outcome] += 1
        if self._observer is not None:
            self._observer.finished(group.spec.id, group.spec.kind, outcome)
        self.levels(group)

    def levels(self, group: Group) -> None:
        self.version += 1
        group.tally.levels(self._clock(), group.active, len(group.queue))
        if self._observer is not None:
            self._observer.levels(group.spec.id, group.spec.kind, group.active, len(group.queue))

    def budget_left(self, group: Group) -> None:
        if self._observer is not None and group.budget is not None:
            requests, tokens = group.budget.left(self._clock())
            self._observer.budget_left(group.spec.id, group.spec.kind, requests, tokens)

    def throttled(self, group: Group, pause: float) -> None:
        self.version += 1
        self.learned(group)
        if self._observer is not None:
            self._observer.throttled(group.spec.id, group.spec.kind, pause)

    def rotation(self, group: Group) -> None:
        self.levels(group)
        if self._observer is not None:
            self._observer.rotation(group.spec.id, group.spec.kind, group.out is not None)

    def learned(self, group: Group) -> None:
        adaptation = group.throttle.adaptation
        if self._observer is not None and adaptation is not None:
            self._observer.learned_rpm(group.spec.id, group.spec.kind, adaptation.rpm)


def too_long(
    groups: list[Group],
    global_limit: int | None,
    key: GrantKey,
    options: CallOptions,
    now: float,
) -> WaitTooLong | None:
    """The error of a call whose estimated wait, at its best group, is past its
    ``max_wait``; None if it is not, or nothing is known to estimate it by yet (the
    call's own patience then ends its wait when ``max_wait`` has passed)."""
    waits = []
    for g in groups:
        ahead = g.queue.ahead_of_new(key, options.flow or "")
        wait = estimate(g, global_limit, ahead, options.tokens, now)
        if wait is None:
            return None  # a group with no call ended yet: no estimate to go by
        waits.append((wait, g.spec.id))
    wait, group_id = min(waits)
    assert options.max_wait is not None
    return WaitTooLong(group_id, options.max_wait, wait) if wait > options.max_wait else None


def estimate(
    group: Group, global_limit: int | None, ahead: int, tokens: int, now: float
) -> float | None:
    """Seconds until a waiter of ``group`` with ``ahead`` others before it is granted.

    Each slot frees about once per average hold, so ``ahead + 1`` grants
    take ``(ahead + 1) / limit`` holds (unknown until a slot was released).
    A budget must also hold ``ahead + 1`` requests, and as many calls of
    ``tokens`` each: the later of the two.
    """
    waits = []
    if group.tally.avg_hold is not None:
        slots = group.limit or global_limit or 1
        waits.append((ahead + 1) / slots * group.tally.avg_hold)
    if group.budget is not None:
        waits.append(group.budget.wait_for(ahead + 1, tokens, now))
    return max(waits, default=None)


def outlook(
    engine: EngineState, pool: Pool, room_left: int | None, options: CallOptions
) -> Outlook:
    """What a new call of ``pool``'s groups at ``options`` would meet now (``room_left``:
    the calls the global cap lets start, None: no cap): it would wait behind every call
    asked so far at its priority and above, in the order grants follow (the fair share
    among flows included)."""
    now = engine.clock()
    groups = [engine.groups[group_id] for group_id in pool]
    waiting = {lease_id for group in groups for lease_id in group.queue.lease_ids()}
    room = room_left is None or room_left > 0
    runs_now = room and any(group.fits_now(options.tokens, now) for group in groups)
    limits = [group.limit for group in groups]
    free = None if None in limits else sum(max(0, (g.limit or 0) - g.active) for g in groups)
    if room_left is not None:
        free = room_left if free is None else min(free, room_left)
    wait: float | None = 0.0
    if not runs_now:
        key = grant_key(options.priority, sys.maxsize, unit=sys.maxsize)
        flow = options.flow or ""
        waits = [
            estimate(g, engine.global_limit, g.queue.ahead_of_new(key, flow), options.tokens, now)
            for g in groups
        ]
        wait = min((w for w in waits if w is not None), default=None)
    return Outlook(
        groups=pool,
        priority=options.priority,
        runs_now=runs_now,
        free=free,
        waiting_by_priority=dict(Counter(engine.waiters[w].priority for w in waiting)),
        estimated_wait_seconds=wait,
    )


def position(engine: EngineState, request_id: str) -> QueuePosition | None:
    """Where a waiting request stands in its group's queue (a pool's waiter: in the
    group of its pool it would be granted soonest), or None if it is not waiting."""
    for waiter in engine.waiters.values():
        if waiter.request_id == request_id:
            now = engine.clock()
            places = []
            for group_id in waiter.groups:
                group = engine.groups[group_id]
                ahead = group.queue.ahead_of(waiter.lease_id)
                wait = estimate(group, engine.global_limit, ahead, waiter.tokens, now)
                places.append((math.inf if wait is None else wait, ahead, group_id, wait))
            _, ahead, group_id, wait = min(places)
            return QueuePosition(
                request_id=request_id,
                group=group_id,
                priority=waiter.priority,
                flow=waiter.flow,
                ahead=ahead,
                waited_seconds=now - waiter.queued_at,
                estimated_wait_seconds=wait,
            )
    return None


def group_stats(group: Group, now: float, recalls: int = 0) -> GroupStats:
    tally, budget, limits, throttle = group.tally, group.budget, group.budget_limits, group.throttle
    left = (None, None) if budget is None else budget.left(now)
    return GroupStats(
        kind=group.spec.kind,
        limit=group.limit,
        rpm=None if limits is None else limits.rpm,
        tpm=None if limits is None else limits.tpm,
        learned_rpm=None if throttle.adaptation is None else round(throttle.adaptation.rpm),
        paused_seconds=_paused(budget, now),
        throttled=throttle.count,
        out_reason=group.out.reason if group.out else None,
        out_seconds=max(0.0, group.out.until - now) if group.out else 0.0,
        probing=group.probing(now),
        requests_left=left[0],
        tokens_left=left[1],
        active=group.active,
        peak_active=tally.peak_active,
        pending=len(group.queue),
        avg_hold_seconds=tally.avg_hold,
        wait_p50_seconds=percentile(tally.waits, 0.5),
        wait_p95_seconds=percentile(tally.waits, 0.95),
        granted=tally.granted,
        handed_over=tally.handed_over,
        recalls=recalls,
        **{outcome.value: tally.ended[outcome] for outcome in Outcome},
        flows=group.queue.share.stats(),
    )


def _paused(budget: Budget | None, now: float) -> float:
    return 0.0 if budget is None else max(0.0, budget.paused_until - now)


def stats(engine: EngineState) -> QueueStats:
    now = engine.clock()
    recalls = engine.lending.recalls
    groups = {
        gid: group_stats(group, now, recalls.get(gid, 0)) for gid, group in engine.groups.items()
    }
    leases = engine.leases
    return QueueStats(
        epoch=engine.epoch,
        global_limit=engine.global_limit,
        active_by_group={gid: s.active for gid, s in groups.items()},
        pending_by_group={gid: s.pending for gid, s in groups.items()},
        total_active=engine.total_active,
        total_pending=len(engine.waiters),
        groups=groups,
        stale_epoch_releases=leases.stale_epoch_releases,
        unknown_releases=leases.unknown_releases,
        late_acquires=leases.late_acquires,
        renewed=leases.renewed,
        overtaken=engine.hand_overs.overtaken,
        next_in_line_answers=engine.hand_overs.answers,
        models=engine.models.stats(),
    )


def view(engine: EngineState, first: int) -> QueueView:
    """The stats, each group's recent levels, and its first ``first`` waiters in grant
    order with their ETAs."""
    now = engine.clock()
    groups = {}
    for gid, group in engine.groups.items():
        waiting = []
        for ahead, lease_id in enumerate(group.queue.first(first)):
            waiter = engine.waiters[lease_id]
            waiting.append(
                WaitingCall(
                    request_id=waiter.request_id,
                    priority=waiter.priority,
                    position=ahead + 1,
                    waited_seconds=now - waiter.queued_at,
                    estimated_wait_seconds=estimate(
                        group, engine.global_limit, ahead, waiter.tokens, now
                    ),
                    flow=waiter.flow,
                    run=waiter.labels.run,
                    service_id=waiter.labels.service_id,
                    stage=waiter.labels.describe(),
                )
            )
        held, queued = group.tally.history.series(now)
        groups[gid] = GroupActivity(held_history=held, waiting_history=queued, waiting=waiting)
    return QueueView(version=engine.version, stats=stats(engine), groups=groups)
