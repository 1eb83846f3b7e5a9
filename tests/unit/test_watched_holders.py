"""A holder whose death Ray would report keeps its slot past the ttl, however late its
renewals; the ttl ends only the leases of processes nobody watches."""

from __future__ import annotations

from actors.journal import GroupRecord, HeldLease
from actors.options import CallOptions
from tests.unit.conftest import EPOCH, LOCAL_OLLAMA, Harness


def ask(h: Harness, request: str, caller: str) -> None:
    lease = h.engine.acquire(LOCAL_OLLAMA.id, request, CallOptions(request_id=request), caller)
    if lease is not None:
        h.leases[request] = lease


def test_a_watched_holder_that_never_renews_keeps_its_slot_past_many_ttls() -> None:
    h = Harness(lease_ttl=6.0)
    h.engine.callers.watched("holder-process")
    ask(h, "held", "holder-process")
    ask(h, "waiting", "other-process")

    for _ in range(10):
        h.clock.advance(6.0)
        assert h.reclaim() == []

    assert h.engine.stats().groups[LOCAL_OLLAMA.id].expired == 0
    assert h.done("held") == ["waiting"]


def test_a_holder_no_longer_watched_expires_at_its_next_deadline() -> None:
    h = Harness(lease_ttl=6.0)
    h.engine.callers.watched("holder-process")
    ask(h, "held", "holder-process")
    ask(h, "waiting", "other-process")
    h.clock.advance(6.0)
    assert h.reclaim() == []

    # Its lifeline was lost (a manager restart that Ray did not retry it across).
    h.engine.callers.unwatched("holder-process")
    h.clock.advance(5.9)
    assert h.reclaim() == []
    h.clock.advance(0.1)
    assert h.reclaim() == ["waiting"]
    assert h.engine.stats().groups[LOCAL_OLLAMA.id].expired == 1


def test_a_process_watched_twice_stays_watched_until_both_lifelines_end() -> None:
    # After a restart the manager follows the stored lifeline and Ray's retried one.
    h = Harness(lease_ttl=6.0)
    h.engine.callers.watched("holder-process")
    h.engine.callers.watched("holder-process")
    ask(h, "held", "holder-process")
    ask(h, "waiting", "other-process")

    h.engine.callers.unwatched("holder-process")
    h.clock.advance(6.0)
    assert h.reclaim() == []
    h.engine.callers.unwatched("holder-process")
    h.clock.advance(6.0)
    assert h.reclaim() == ["waiting"]


def test_a_holder_that_asked_without_naming_its_process_expires_at_its_ttl() -> None:
    h = Harness(lease_ttl=6.0)
    h.engine.callers.watched("holder-process")
    h.ask(LOCAL_OLLAMA, "anonymous")
    h.ask(LOCAL_OLLAMA, "waiting")
    h.clock.advance(6.0)
    assert h.reclaim() == ["waiting"]
    # The anonymous holder's late release is a counted no-op.
    anonymous = h.leases.pop("anonymous")
    assert h.engine.release(anonymous.id, EPOCH) == []


def restored_holding(h: Harness) -> None:
    """``h`` restarted holding "held" for process holder-process, which is watched again."""
    h.engine.restore(
        GroupRecord(LOCAL_OLLAMA, {"held": HeldLease(EPOCH, "holder-process")}),
    )
    h.engine.callers.watched("holder-process")
    ask(h, "waiting", "other-process")


def test_a_restored_lease_its_live_holder_never_renews_expires_at_its_ttl() -> None:
    # Its release was lost in the restart: the holder lives, but holds it no more.
    h = Harness(lease_ttl=6.0)
    restored_holding(h)

    h.clock.advance(6.0)

    assert [lease.request_id for lease in h.engine.timekeeper.reclaim_expired()] == ["waiting"]


def test_a_restored_lease_renewed_by_its_live_holder_outlives_its_ttl() -> None:
    h = Harness(lease_ttl=6.0)
    restored_holding(h)

    assert h.engine.leases.renew("held", EPOCH)
    for _ in range(5):
        h.clock.advance(6.0)
        assert h.reclaim() == []
