"""Pools in the slot engine: a call waits once on several groups and takes the first slot
it is best for (actors.engine, actors.holdings)."""

from __future__ import annotations

import pytest

from actors.errors import EmptyPool, OutOfRotation, QueueFull, WaitTooLong
from actors.groups import ModelEntry, ServerEntry, classify, pool_of
from actors.journal import GroupRecord, HeldLease
from actors.ops import TakeOut
from actors.options import CallOptions
from actors.slots import NoSlots
from pipelines.view import render
from tests.unit.conftest import Harness

GPU_A = classify("openai-compatible", "http://gpu-a:8000")
GPU_B = classify("openai-compatible", "http://gpu-b:8000")
POOL = (GPU_A, GPU_B)


def pool(limit: int = 1, **engine: object) -> Harness:
    harness = Harness(group_limits={GPU_A.id: limit, GPU_B.id: limit}, **engine)
    harness.engine.register(GPU_A)
    harness.engine.register(GPU_B)
    return harness


def held_group(harness: Harness, request: str) -> str:
    return harness.leases[request].group


def test_a_better_waiter_takes_whichever_server_frees_first() -> None:
    harness = pool()
    harness.ask(POOL, "a-busy")
    harness.ask(POOL, "b-busy")
    harness.ask(POOL, "low", priority=3)
    harness.ask(POOL, "high", priority=8)

    assert harness.done("b-busy") == ["high"]
    assert held_group(harness, "high") == GPU_B.id
    assert harness.done("a-busy") == ["low"]
    assert held_group(harness, "low") == GPU_A.id
    assert harness.engine.stats().total_pending == 0


def test_the_order_holds_across_a_pool_and_a_servers_own_callers() -> None:
    """A call that can use only server B, and pool calls that can use either: each freed
    slot goes to the best waiter that can use it."""
    harness = pool()
    harness.ask(POOL, "a-busy")
    harness.ask(POOL, "b-busy")
    harness.ask(POOL, "pool-3", priority=3)
    harness.ask(GPU_B, "b-only-5", priority=5)
    harness.ask(POOL, "pool-7", priority=7)

    assert harness.done("a-busy") == ["pool-7"]  # b-only-5 cannot use A
    assert harness.done("b-busy") == ["b-only-5"]
    assert harness.done("pool-7") == ["pool-3"]
    assert held_group(harness, "pool-3") == GPU_A.id


def test_a_new_call_takes_the_least_busy_server_with_room() -> None:
    harness = pool(limit=2)
    harness.ask(GPU_A, "on-a")

    harness.ask(POOL, "new")

    assert held_group(harness, "new") == GPU_B.id
    harness.ask(POOL, "next")
    assert held_group(harness, "next") == GPU_A.id  # a tie: the first named


def test_calls_that_find_both_servers_free_are_shared_by_weight() -> None:
    harness = pool(limit=4, group_weights={GPU_A.id: 3.0})

    taken = []
    for n in range(8):  # one at a time: each call ends before the next
        harness.ask(POOL, f"call-{n}")
        taken.append(held_group(harness, f"call-{n}"))
        harness.done(f"call-{n}")

    assert taken.count(GPU_A.id) == 6
    assert taken[:4] == [GPU_A.id, GPU_A.id, GPU_B.id, GPU_A.id]  # turns, not runs


def test_under_load_a_new_call_goes_to_the_server_with_the_fewest_calls_per_weight() -> None:
    harness = pool(limit=4, group_weights={GPU_A.id: 3.0})

    for n in range(4):
        harness.ask(POOL, f"call-{n}")

    held = harness.engine.stats().active_by_group
    assert (held[GPU_A.id], held[GPU_B.id]) == (3, 1)  # A, then B (1/3 against 0/1), A, A


def test_a_pool_waiter_cancelled_or_of_a_dead_caller_leaves_every_servers_queue() -> None:
    harness = pool()
    harness.ask(POOL, "a-busy")
    harness.ask(POOL, "b-busy")
    gone = harness.ask(POOL, "cancelled")
    harness.engine.acquire(pool_of((GPU_A.id, GPU_B.id)), "of-dead", caller="dead")
    waiting = harness.engine.stats().pending_by_group
    assert (waiting[GPU_A.id], waiting[GPU_B.id]) == (2, 2)

    harness.cancel(gone)
    harness.engine.drop_caller("dead")

    stats = harness.engine.stats()
    assert (stats.pending_by_group[GPU_A.id], stats.pending_by_group[GPU_B.id]) == (0, 0)
    assert harness.done("a-busy") == []


def test_a_slot_handed_over_to_a_pool_waiter_takes_it_out_of_the_other_queue() -> None:
    harness = pool()
    harness.ask(POOL, "a-busy")
    harness.ask(POOL, "b-busy")
    successor = harness.ask(POOL, "next")
    held = harness.leases["a-busy"]

    granted = harness.engine.hand_overs.hand_over(GPU_A.id, held.id, held.epoch, successor)

    assert [(lease.request_id, lease.group) for lease in granted] == [("next", GPU_A.id)]
    assert harness.engine.stats().pending_by_group[GPU_B.id] == 0
    assert harness.done("b-busy") == []


def test_a_full_queue_of_one_server_refuses_the_pool_naming_it() -> None:
    harness = pool(max_pending_per_group=1)
    harness.ask(POOL, "a-busy")
    harness.ask(POOL, "b-busy")
    harness.ask(GPU_B, "b-waits")

    with pytest.raises(QueueFull) as refused:
        harness.ask(POOL, "refused")

    assert refused.value.group == GPU_B.id


def test_a_pool_waiters_position_is_where_it_is_granted_soonest() -> None:
    harness = pool()
    harness.ask(POOL, "a-busy")
    harness.ask(POOL, "b-busy")
    harness.ask(GPU_A, "a-only", priority=9)
    harness.ask(POOL, "pooled")

    position = harness.engine.position("pooled")

    assert position is not None
    assert (position.group, position.ahead) == (GPU_B.id, 0)


def test_a_pool_names_at_least_one_group_and_each_once() -> None:
    assert pool_of((GPU_A.id, GPU_B.id, GPU_A.id)) == (GPU_A.id, GPU_B.id)
    assert pool_of(GPU_A.id) == (GPU_A.id,)
    with pytest.raises(EmptyPool, match="names no group"):
        pool_of(())


# -- health: a server out of rotation ----------------------------------------------------


def test_a_server_out_of_rotation_is_skipped_and_its_pool_waiters_go_to_the_other() -> None:
    harness = pool()
    harness.ask(POOL, "a-busy")
    harness.ask(POOL, "b-busy")
    harness.ask(POOL, "waits")

    granted = harness.engine.take_out(GPU_A.id, "connection refused", 30.0)

    assert (harness.engine.take_left(), granted) == ({}, [])  # it may still use B
    assert harness.done("a-busy") == []  # A is out: its freed slot goes to nobody
    assert harness.done("b-busy") == ["waits"]
    assert held_group(harness, "waits") == GPU_B.id
    stats = harness.engine.stats().groups
    assert (stats[GPU_A.id].out_reason, stats[GPU_A.id].out_seconds) == ("connection refused", 30)
    assert stats[GPU_B.id].out_reason is None
    assert f"out of rotation for 30.0 s more: {GPU_A.id}: connection refused" in render(
        harness.engine.stats()
    )


def test_waiters_left_without_a_server_in_rotation_fail_at_once_naming_each_reason() -> None:
    harness = pool()
    harness.ask(POOL, "a-busy")
    harness.ask(POOL, "b-busy")
    pooled = harness.ask(POOL, "pooled")
    a_only = harness.ask(GPU_A, "a-only")
    harness.engine.take_out(GPU_A.id, "circuit open", 30.0)
    assert set(harness.engine.take_left()) == {a_only}

    harness.engine.take_out(GPU_B.id, "node lost", 30.0)

    failed = harness.engine.take_left()
    assert set(failed) == {pooled}  # a-only failed when A went out
    assert str(failed[pooled]) == (
        "no server this call may use takes calls now "
        f"({GPU_A.id}: circuit open; {GPU_B.id}: node lost)"
    )
    assert a_only not in harness.engine.waiters
    assert harness.engine.stats().total_pending == 0
    with pytest.raises(OutOfRotation, match="node lost"):
        harness.ask(POOL, "refused")


def test_a_server_is_back_in_rotation_after_its_time_out_and_takes_its_waiter() -> None:
    harness = pool()
    harness.ask(GPU_A, "a-busy")
    harness.ask(GPU_B, "b-busy")
    harness.ask(GPU_A, "waits-for-a")
    harness.engine.take_out(GPU_B.id, "server exited", 5.0)
    harness.done("b-busy")

    # A is full and B has nobody waiting: only the held leases' deadlines wake the engine.
    assert harness.engine.timekeeper.next_wake() == harness.clock.now + harness.engine.lease_ttl
    harness.ask(POOL, "pooled")
    assert harness.engine.timekeeper.next_wake() == harness.clock.now + 5.0
    harness.clock.advance(5.0)
    assert harness._record(harness.engine.timekeeper.tick()) == ["pooled"]
    assert held_group(harness, "pooled") == GPU_B.id


def probing(limit: int = 2) -> Harness:
    """A pool whose server B was out for 5 s, which have passed; A is busy."""
    harness = pool(limit=limit)
    for n in range(limit):
        harness.ask(GPU_A, f"a-busy-{n}")
    harness.engine.take_out(GPU_B.id, "connection refused", 5.0)
    harness.clock.advance(5.0)
    return harness


def test_a_server_back_from_its_time_out_takes_one_call_the_probe_until_it_answers() -> None:
    harness = probing(limit=2)

    harness.ask(POOL, "probe")
    harness.ask(POOL, "held-back")

    assert held_group(harness, "probe") == GPU_B.id
    assert not harness.granted_now("held-back")  # B has room, but its probe is out
    stats = harness.engine.stats()
    assert stats.groups[GPU_B.id].probing
    assert f"probing (one call let in): {GPU_B.id}: connection refused" in render(stats)
    assert harness.done("probe") == ["held-back"]  # answered: B is back in rotation
    after = harness.engine.stats().groups[GPU_B.id]
    assert (after.probing, after.out_reason) == (False, None)
    harness.ask(POOL, "beside")
    assert held_group(harness, "beside") == GPU_B.id  # B's limit of 2 again


def test_a_probe_that_finds_the_server_down_keeps_it_out_for_another_time_out() -> None:
    harness = probing()
    harness.ask(GPU_B, "probe")
    harness.ask(POOL, "waits")

    harness.engine.take_out(GPU_B.id, "connection refused again", 5.0)  # then it releases

    assert harness.done("probe") == []
    assert harness.engine.stats().groups[GPU_B.id].out_reason == "connection refused again"
    harness.clock.advance(5.0)
    assert harness._record(harness.engine.timekeeper.tick()) == ["waits"]  # the next probe
    assert held_group(harness, "waits") == GPU_B.id


def test_a_probe_whose_caller_died_lets_in_another() -> None:
    harness = probing()
    harness.engine.acquire(GPU_B.id, "probe", caller="dead")
    harness.ask(GPU_B, "waits")

    granted = harness.engine.drop_caller("dead")

    assert [lease.request_id for lease in granted] == ["waits"]
    assert harness.engine.stats().groups[GPU_B.id].probing  # its answer is the one awaited


def test_a_lease_restored_after_a_restart_is_found_again_though_its_pool_went_out() -> None:
    """Ray retried an acquire across a manager restart; its servers went out meanwhile:
    it holds its restored slot all the same (its call may be running)."""
    harness = pool()
    harness.engine.restore(GroupRecord(GPU_A, {"granted": HeldLease(7, "p1")}))
    harness.engine.take_out(GPU_A.id, "circuit open", 30.0)
    harness.engine.take_out(GPU_B.id, "circuit open", 30.0)

    again = harness.engine.acquire((GPU_A.id, GPU_B.id), "granted", caller="p1")

    assert again is not None
    assert again.group == GPU_A.id


def test_a_pool_waiter_granted_elsewhere_while_a_slot_was_handed_to_it_moves_there() -> None:
    """Its process passed it the slot of A while the manager granted it B: its call runs
    on A, so it holds A, and B is free again (else B would let in a second call)."""
    harness = pool()
    harness.engine.acquire(GPU_A.id, "a-held", caller="p1")
    harness.engine.acquire(GPU_B.id, "b-held", caller="p2")
    harness.engine.acquire((GPU_A.id, GPU_B.id), "pooled", CallOptions(priority=9), caller="p1")
    assert harness.engine.next_in_line() == {GPU_A.id: ("pooled", "p1")}
    b = harness.engine.leases.get("b-held")
    assert b is not None
    [granted] = harness.engine.release("b-held", b.epoch)  # the manager grants it B
    assert (granted.id, granted.group) == ("pooled", GPU_B.id)
    a = harness.engine.leases.get("a-held")
    assert a is not None

    moved = harness.engine.hand_overs.hand_over(GPU_A.id, "a-held", a.epoch, "pooled", caller="p1")

    assert [(lease.id, lease.group) for lease in moved] == [("pooled", GPU_A.id)]
    stats = harness.engine.stats()
    assert (stats.active_by_group[GPU_A.id], stats.active_by_group[GPU_B.id]) == (1, 0)
    assert harness.engine.can_run_immediately(GPU_B.id)


def test_the_stats_name_each_pools_servers_grants_and_the_fallbacks_taken() -> None:
    servers = tuple(ServerEntry(provider="openai-compatible", base_url=s.base_url) for s in POOL)
    llama = ModelEntry(servers=servers, fallbacks=("gpt",), fallback_after_seconds=2)
    harness = pool(models={"llama": llama, "gpt": ModelEntry(provider="openai")})
    harness.ask(POOL, "first")
    harness.ask(POOL, "second")
    harness.engine.fell_back("llama", "gpt", "WaitTooLong")
    harness.engine.fell_back("llama", "gpt", "WaitTooLong")
    harness.engine.fell_back("llama", "gpt", "OutOfRotation")

    stats = harness.engine.stats()

    assert list(stats.models) == ["llama"]  # gpt: one server, no fallbacks
    assert stats.models["llama"].groups == [GPU_A.id, GPU_B.id]
    assert stats.models["llama"].fallbacks_taken == {"gpt": {"WaitTooLong": 2, "OutOfRotation": 1}}
    row = next(line for line in render(stats).splitlines() if line.startswith("llama"))
    assert row.endswith("1 / 1  gpt after 2.0 s  3: WaitTooLong 2, OutOfRotation 1")


# -- fallbacks' cue: a wait estimated past what the call may wait -----------------------


def test_a_call_that_may_not_wait_as_long_as_estimated_is_not_queued() -> None:
    harness = pool()
    harness.ask(GPU_A, "first")
    harness.clock.advance(2.0)
    harness.done("first")  # the group's calls take 2 s
    harness.ask(GPU_A, "busy")
    patient = harness.ask(GPU_A, "patient", max_wait=3.0)  # granted in about 2 s

    with pytest.raises(WaitTooLong) as refused:
        harness.ask(GPU_A, "hurried", max_wait=3.0)  # behind one: about 4 s

    assert str(refused.value) == (
        f"group {GPU_A.id!r} would take an estimated 4.0s to grant this call, past the 3s "
        "it may wait"
    )
    assert list(harness.engine.waiters) == [patient]
    assert harness.engine.stats().groups[GPU_A.id].rejected == 1


def test_a_call_waits_while_a_server_it_may_use_has_no_estimate_yet() -> None:
    harness = pool()
    harness.ask(GPU_A, "a-busy")
    harness.ask(GPU_A, "no-estimate-yet", max_wait=0.001)  # no call of A has ended
    harness.clock.advance(2.0)
    harness.done("a-busy")
    harness.ask(GPU_B, "b-busy")

    harness.ask(POOL, "pooled", max_wait=0.001)

    assert harness.engine.stats().total_pending == 1  # B has no estimate: it may be soon


# -- without the queue (queue.enabled: false) ---------------------------------------------


async def test_without_the_queue_a_pool_takes_its_servers_in_turn_skipping_one_found_down() -> None:
    slots = NoSlots()
    groups = (GPU_A.id, GPU_B.id)

    async def taken() -> str:
        async with slots.slot(groups) as lease:
            return lease.group

    assert [await taken() for _ in range(4)] == [GPU_A.id, GPU_B.id, GPU_A.id, GPU_B.id]
    await slots.ask(TakeOut(GPU_B.id, "connection refused", 30.0))
    assert [await taken() for _ in range(2)] == [GPU_A.id, GPU_A.id]
    await slots.ask(TakeOut(GPU_A.id, "circuit open", 30.0))
    with pytest.raises(OutOfRotation, match=r"circuit open; .*: connection refused"):
        await taken()
    await slots.ask(TakeOut(GPU_A.id, "circuit open", 0.0))  # its time out over
    assert await taken() == GPU_A.id
