"""The gate on a real event loop: waiters are futures woken by releases, never by polling."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from actors.budget import BudgetLimits
from actors.engine import SlotEngine
from actors.errors import AcquireTimeout, WaitTooLong
from actors.gate import SlotGate
from actors.leases import Lease
from actors.ops import Acquire, Cancel, Release, Stats
from actors.options import CallOptions
from actors.stats import QueueStats
from tests.unit.conftest import EPOCH, LOCAL_OLLAMA

GROUP = LOCAL_OLLAMA.id
_ids = itertools.count(1)


GateFactory = Callable[..., SlotGate]


@pytest.fixture
def make_gate() -> Iterator[GateFactory]:
    gates: list[SlotGate] = []

    def make(**engine_kwargs: object) -> SlotGate:
        engine = SlotEngine(epoch=EPOCH, **engine_kwargs)  # type: ignore[arg-type]
        engine.register(LOCAL_OLLAMA)
        gates.append(SlotGate(engine))
        return gates[-1]

    yield make
    for gate in gates:
        gate.close()


def snapshot(gate: SlotGate) -> QueueStats:
    return gate.apply([Stats()])[0]


def acquire(gate: SlotGate, request: str, priority: int = 5) -> asyncio.Task[Lease]:
    options = CallOptions(priority=priority, request_id=request)
    return asyncio.create_task(gate.acquire(Acquire(GROUP, f"lease-{next(_ids)}", options)))


async def held_with_one_waiter(gate: SlotGate) -> tuple[Lease, asyncio.Task[Lease]]:
    """The group's only slot held, and one request queued behind it."""
    holder = await gate.acquire(Acquire(GROUP, "h", CallOptions(request_id="holder")))
    waiter = acquire(gate, "waiter")
    await queued(gate, 1)
    return holder, waiter


async def queued(gate: SlotGate, count: int) -> None:
    """Let freshly created acquire tasks run until ``count`` of them wait in the engine."""
    for _ in range(1000):
        if snapshot(gate).total_pending >= count:
            return
        await asyncio.sleep(0)  # a bare yield to the loop, not a timed wait
    raise AssertionError(f"{count} acquires never queued")


async def test_waiter_is_woken_by_the_release_that_frees_its_slot(
    make_gate: GateFactory,
) -> None:
    gate = make_gate()
    holder, waiter = await held_with_one_waiter(gate)
    assert not waiter.done()

    gate.apply([Release(holder.id, holder.epoch)])

    lease = await asyncio.wait_for(waiter, timeout=5)
    assert lease.request_id == "waiter"
    assert snapshot(gate).active_by_group[GROUP] == 1


async def test_timeout_raises_typed_error_and_leaves_the_queue(
    make_gate: GateFactory,
) -> None:
    gate = make_gate()
    await gate.acquire(Acquire(GROUP, "h", CallOptions(request_id="holder")))

    with pytest.raises(AcquireTimeout) as caught:
        await gate.acquire(Acquire(GROUP, "l", CallOptions(request_id="late", queue_timeout=0.01)))

    assert str(caught.value) == (
        f"request 'late' got no slot in group '{GROUP}' within 0.01s; it left the queue"
    )
    stats = snapshot(gate)
    assert (stats.total_pending, stats.groups[GROUP].timed_out) == (0, 1)


async def test_a_waiter_with_nothing_to_estimate_by_leaves_once_its_max_wait_passes(
    make_gate: GateFactory,
) -> None:
    # No call of the group has ended: the wait cannot be estimated at its arrival, so it
    # queues; its max_wait counts from when it was asked, 29.9 s of its 30 before it got
    # here (counted from here, it would still wait when wait_for gives up).
    gate = make_gate()
    await gate.acquire(Acquire(GROUP, "h", CallOptions(request_id="holder")))
    asked = CallOptions(request_id="late", max_wait=30.0, asked_at=time.time() - 29.9)

    with pytest.raises(WaitTooLong) as caught:
        await asyncio.wait_for(gate.acquire(Acquire(GROUP, "l", asked)), timeout=10)

    assert str(caught.value) == (
        f"'{GROUP}' granted this call no slot within the 30s it may wait; it left the queue"
    )
    stats = snapshot(gate)
    assert (stats.total_pending, stats.groups[GROUP].timed_out) == (0, 1)


async def test_cancelled_waiter_task_leaves_the_queue(make_gate: GateFactory) -> None:
    gate = make_gate()
    holder, waiter = await held_with_one_waiter(gate)

    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter

    stats = snapshot(gate)
    assert (stats.total_pending, stats.groups[GROUP].cancelled) == (0, 1)
    gate.apply([Release(holder.id, holder.epoch)])
    assert snapshot(gate).total_active == 0


async def test_explicit_cancel_ends_the_waiting_acquire_at_once(
    make_gate: GateFactory,
) -> None:
    gate = make_gate()
    await gate.acquire(Acquire(GROUP, "h", CallOptions(request_id="holder")))
    waiter = asyncio.create_task(gate.acquire(Acquire(GROUP, "w", CallOptions(request_id="w"))))
    await queued(gate, 1)

    gate.apply([Cancel("w")])

    # The engine forgot the waiter in the cancel call itself, before the task ran.
    assert snapshot(gate).total_pending == 0
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert snapshot(gate).groups[GROUP].cancelled == 1


async def test_waiter_cancelled_in_the_instant_of_its_grant_passes_the_slot_on(
    make_gate: GateFactory,
) -> None:
    gate = make_gate()
    holder = await gate.acquire(Acquire(GROUP, "h", CallOptions(request_id="holder")))
    racer = acquire(gate, "racer", priority=9)
    nxt = acquire(gate, "next", priority=1)
    await queued(gate, 2)

    # The release resolves racer's future; racer is cancelled before it can run.
    gate.apply([Release(holder.id, holder.epoch)])
    racer.cancel()

    with pytest.raises(asyncio.CancelledError):
        await racer
    lease = await asyncio.wait_for(nxt, timeout=5)
    assert lease.request_id == "next"
    stats = snapshot(gate)
    assert (stats.total_active, stats.total_pending) == (1, 0)


async def test_unreleased_lease_is_reclaimed_by_the_expiry_timer(
    make_gate: GateFactory,
) -> None:
    gate = make_gate(lease_ttl=0.05)
    await gate.acquire(Acquire(GROUP, "c", CallOptions(request_id="crashed")))

    lease = await asyncio.wait_for(
        gate.acquire(Acquire(GROUP, "n", CallOptions(request_id="next"))), timeout=5
    )

    assert lease.request_id == "next"
    assert snapshot(gate).groups[GROUP].expired == 1


async def test_priorities_decide_the_order_of_wake_ups(make_gate: GateFactory) -> None:
    gate = make_gate()
    holder = await gate.acquire(Acquire(GROUP, "h", CallOptions(request_id="holder")))
    priorities = [3, 9, 5, 9, 1, 7]
    waiters = [acquire(gate, f"p{p}-{i}", priority=p) for i, p in enumerate(priorities)]
    await queued(gate, len(priorities))

    served = []
    lease = holder
    for _ in priorities:
        gate.apply([Release(lease.id, lease.epoch)])
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        (finished,) = done
        waiters.remove(finished)
        lease = finished.result()
        served.append(lease.priority)

    assert served == [9, 9, 7, 5, 3, 1]


@pytest.mark.timeout(20)
async def test_release_from_another_threads_loop_wakes_the_waiter(
    make_gate: GateFactory,
) -> None:
    # The actor releases on its control group's thread and loop while the
    # waiter sits on the default group's loop, asleep with no timer: only a
    # wake-up sent across threads ends its wait (a plain set_result would
    # hang it until the pytest timeout).
    gate = make_gate()
    holder, waiter = await held_with_one_waiter(gate)

    async def release() -> None:
        gate.apply([Release(holder.id, holder.epoch)])

    go = threading.Event()
    other = threading.Thread(target=lambda: (go.wait(), asyncio.run(release())))
    other.start()
    go.set()
    lease = await waiter
    other.join()

    assert lease.request_id == "waiter"


async def test_a_waiter_for_budget_is_granted_when_the_budget_refills_with_no_release(
    make_gate: GateFactory,
) -> None:
    gate = make_gate(group_budgets={GROUP: BudgetLimits(tpm=600)})  # 10 tokens a second
    spent = await gate.acquire(
        Acquire(GROUP, "spender", CallOptions(request_id="spender", tokens=600))
    )
    gate.apply([Release(spent.id, spent.epoch)])  # the slot is back; the tokens are not
    asked = asyncio.get_running_loop().time()

    lease = await asyncio.wait_for(
        gate.acquire(Acquire(GROUP, "next", CallOptions(request_id="next", tokens=5))), timeout=10
    )

    # 5 tokens at 10 a second: the reaper woke for it about half a second later.
    assert lease.request_id == "next"
    assert 0.4 <= asyncio.get_running_loop().time() - asked < 5


async def test_a_waiter_that_a_release_leaves_short_of_budget_is_granted_once_it_refills(
    make_gate: GateFactory,
) -> None:
    gate = make_gate(group_budgets={GROUP: BudgetLimits(tpm=600)})  # one slot; 10 tokens/s
    holder = await gate.acquire(Acquire(GROUP, "h", CallOptions(request_id="holder", tokens=600)))
    waiter = asyncio.create_task(
        gate.acquire(Acquire(GROUP, "w", CallOptions(request_id="waiter", tokens=5)))
    )
    await queued(gate, 1)

    gate.apply([Release(holder.id, holder.epoch)])  # the slot is free, the tokens are not yet

    # Woken by the budget (about 0.5 s), not by the reaper's next lease deadline (60 s).
    lease = await asyncio.wait_for(waiter, timeout=10)
    assert lease.request_id == "waiter"


async def test_a_list_of_operations_refuses_an_acquire_that_could_wait(
    make_gate: GateFactory,
) -> None:
    # Applied there, a queued acquire's grant would find nobody to wake: its slot held
    # for nobody until its lease expired.
    gate = make_gate()

    refused, counted = gate.apply(
        [Acquire(GROUP, "may-wait"), Acquire(GROUP, "started", started=True)]
    )

    assert isinstance(refused, ValueError)
    assert isinstance(counted, Lease)
    assert snapshot(gate).total_active == 1
