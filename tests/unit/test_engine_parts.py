"""The slot engine's parts, each on its own: the lease table, the caller index, arrival
numbering, throttling, the hand-over's choice, the group table and the read models."""

from __future__ import annotations

import pytest

from actors.adaptive import MIN_SAMPLE, Throttle
from actors.callers import CallerIndex
from actors.errors import UnknownGroup
from actors.groupstate import GroupTable, Waiter
from actors.handover import HandOvers
from actors.holdings import Holdings
from actors.journal import HeldLease, held_entry
from actors.leases import Lease, LeaseTable
from actors.options import CallOptions
from actors.reports import Recorder, estimate
from actors.tally import GroupTally, Outcome
from actors.waitqueue import Arrivals, grant_key, width
from tests.unit.conftest import ANTHROPIC, EPOCH, LOCAL_OLLAMA, FakeClock

GROUP = LOCAL_OLLAMA.id


def lease(lease_id: str, epoch: int = 1) -> Lease:
    return Lease(lease_id, GROUP, lease_id, 5, epoch, 10.0)


# -- actors/leases.py -------------------------------------------------------------


def test_the_lease_table_expires_in_deadline_order_and_a_renewal_moves_the_deadline() -> None:
    clock = FakeClock()
    table = LeaseTable(10.0, clock)
    table.hold(lease("a"))
    clock.advance(1.0)
    table.hold(lease("b"))
    clock.advance(5.0)
    assert table.renew("a", 1)
    assert not table.renew("a", 2)  # another epoch's renewal is not this lease's

    assert table.next_expiry() == clock.now - 5.0 + 10.0  # b's, a's moved past it
    clock.advance(10.0)
    assert [table.pop_expired(), table.pop_expired(), table.pop_expired()] == ["b", "a", None]


def test_a_freed_lease_is_retired_and_a_late_acquire_of_it_is_refused_once() -> None:
    clock = FakeClock()
    table = LeaseTable(10.0, clock)
    table.hold(lease("a"))
    clock.advance(2.5)

    freed, held_for = table.free("a")
    assert (freed.id, held_for) == ("a", 2.5)
    assert table.refuse_late("a")
    assert not table.refuse_late("a")
    assert table.late_acquires == 1


def test_a_release_that_frees_nothing_is_counted_by_why() -> None:
    table = LeaseTable(10.0, FakeClock())
    table.hold(lease("a", epoch=1))

    assert table.releasable("a", 1, current_epoch=1)
    assert not table.releasable("a", 0, current_epoch=1)  # from before a restart
    assert not table.releasable("never-seen", 1, current_epoch=1)
    assert (table.stale_epoch_releases, table.unknown_releases) == (1, 1)
    assert table.retired("never-seen")  # its acquire, arriving later, is refused


def test_a_restored_lease_is_claimed_once_by_its_holders_retried_acquire() -> None:
    table = LeaseTable(10.0, FakeClock())
    table.hold(lease("a"), restored=True)

    assert table.restored("a")
    claimed = table.claim_restored("a")
    assert claimed is not None
    assert claimed.id == "a"
    assert table.claim_restored("a") is None
    assert not table.restored("a")


# -- actors/callers.py ------------------------------------------------------------


def test_the_caller_index_knows_each_callers_leases_and_its_death() -> None:
    callers = CallerIndex()
    callers.note("l1", "p1")
    callers.note("l2", "p1")
    callers.note("l3", "p2")
    callers.note("l4", None)  # a caller that names no process
    callers.forget("l2")

    assert callers.leases("p1") == ["l1"]
    assert callers.of("l3") == "p2"
    assert callers.of("l4") is None
    callers.died("p1")
    assert callers.gone("p1")
    assert not callers.gone("p2")


def test_a_caller_stays_watched_until_its_last_lifeline_ends() -> None:
    callers = CallerIndex()
    callers.note("l1", "p1")
    callers.watched("p1")
    callers.watched("p1")  # followed twice, across a manager restart

    callers.unwatched("p1")
    assert callers.is_watched("l1")
    callers.unwatched("p1")
    assert not callers.is_watched("l1")


# -- actors/waitqueue.py: arrival and unit numbering ----------------------------------


def test_a_unit_keeps_its_first_number_and_calls_asked_before_a_restart_come_first() -> None:
    arrivals = Arrivals(restarted_at=1000.0)
    first = arrivals.unit("run:a", arrivals.arrival(None))
    arrivals.unit("run:b", arrivals.arrival(None))
    assert arrivals.unit("run:a", arrivals.arrival(None)) == first

    before = arrivals.arrival(999.5)  # an acquire Ray retried after the restart
    assert before == -500_000
    assert before < arrivals.arrival(None)
    assert arrivals.unit("run:c", before) == before


def test_the_width_is_the_tighter_of_the_group_and_global_caps() -> None:
    assert (width(4, None), width(4, 2), width(None, 3), width(None, None)) == (4, 2, 3, 1)


# -- actors/adaptive.py: throttling ---------------------------------------------------


def test_a_429_pauses_the_budget_and_a_release_without_one_raises_the_learned_rate() -> None:
    throttle = Throttle(configured_rpm=None)
    for second in range(MIN_SAMPLE):
        throttle.granted(float(second))

    budget = throttle.hit("l1", granted_at=9.0, budget=None, pause=2.0, now=10.0)
    assert budget.paused_until == 12.0
    assert throttle.adaptation is not None
    learned = throttle.adaptation.rpm
    assert not throttle.freed("l1", budget, 11.0, released=True)  # its own call got the 429
    assert throttle.freed("l2", budget, 11.0, released=True)
    assert throttle.adaptation.rpm > learned
    assert not throttle.freed("l3", budget, 11.0, released=False)  # reclaimed: no success


# -- actors/handover.py ------------------------------------------------------------


def test_only_a_caller_holding_a_slot_of_the_group_is_told_its_waiter_is_next() -> None:
    clock = FakeClock()
    groups = GroupTable(limits={}, budgets={}, global_limit=None, clock=clock)
    leases, callers = LeaseTable(10.0, clock), CallerIndex()
    holdings = Holdings(groups, leases, callers, Recorder(None, clock), clock, EPOCH, None)
    group = groups.register(LOCAL_OLLAMA)
    hand_overs = HandOvers(True, holdings)

    callers.note("held", "p1")
    holdings.hold(group, lease("held"))
    key = grant_key(5, 0, unit=0)
    callers.note("waits", "p2")
    holdings.queue(Waiter.of("waits", (GROUP,), CallOptions(), key, clock.now))
    assert hand_overs.next_in_line(None) == {}  # p2 holds nothing

    callers.note("better", "p1")
    better = grant_key(9, 1, unit=1)
    holdings.queue(Waiter.of("better", (GROUP,), CallOptions(priority=9), better, clock.now))
    assert hand_overs.next_in_line(None) == {GROUP: ("better", "p1")}
    assert hand_overs.next_in_line(global_limit=4) == {}
    assert HandOvers(False, holdings).next_in_line(None) == {}


# -- actors/groupstate.py and actors/holdings.py ----------------------------------------


def test_the_group_table_registers_once_and_journals_each_lease_held_or_freed() -> None:
    clock = FakeClock()
    groups = GroupTable(limits={ANTHROPIC.id: 3}, budgets={}, global_limit=None, clock=clock)
    local, remote = groups.register(LOCAL_OLLAMA), groups.register(ANTHROPIC)
    assert groups.register(LOCAL_OLLAMA) is local
    assert (local.limit, remote.limit) == (1, 3)  # the override beats the default
    leases, callers = LeaseTable(10.0, clock), CallerIndex()
    assert groups.changes(leases, callers).keys() == {LOCAL_OLLAMA.id, ANTHROPIC.id}

    holdings = Holdings(groups, leases, callers, Recorder(None, clock), clock, EPOCH, None)
    holdings.grant(local, lease("a"), waited=0.0, tokens=0)
    assert groups.changes(leases, callers) == dict([held_entry(GROUP, "a", HeldLease(1))])
    assert (local.active, holdings.total_active, local.has_room()) == (1, 1, False)
    assert holdings.free("a") is local
    assert local.active == 0
    assert groups.changes(leases, callers) == dict([held_entry(GROUP, "a", None)])
    assert "nope" not in groups
    with pytest.raises(UnknownGroup, match="nope"):
        groups["nope"]


# -- actors/reports.py ---------------------------------------------------------------


def test_the_tally_counts_outcomes_and_averages_hold_times() -> None:
    clock = FakeClock()
    groups = GroupTable(limits={}, budgets={}, global_limit=None, clock=clock)
    group = groups.register(LOCAL_OLLAMA)
    recorder = Recorder(None, clock)

    recorder.finished(group, Outcome.EXPIRED)
    recorder.finished(group, Outcome.EXPIRED)
    assert group.tally.ended == {Outcome.EXPIRED: 2}
    assert recorder.version == 2

    tally = GroupTally()
    tally.held(10.0)
    tally.held(20.0)
    assert tally.avg_hold == 12.0  # 0.8 of the old, 0.2 of the new


def test_the_estimate_is_unknown_before_a_release_then_holds_per_slot() -> None:
    clock = FakeClock()
    groups = GroupTable(limits={GROUP: 2}, budgets={}, global_limit=None, clock=clock)
    group = groups.register(LOCAL_OLLAMA)
    assert estimate(group, None, ahead=3, tokens=0, now=clock.now) is None

    group.tally.held(4.0)
    assert estimate(group, None, ahead=3, tokens=0, now=clock.now) == 8.0  # 4 grants / 2 slots
