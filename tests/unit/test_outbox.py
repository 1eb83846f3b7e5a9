"""The outbox batches fast-path acquires and releases: one manager call in flight at a time."""

from __future__ import annotations

import asyncio

import pytest

from actors.errors import CallerGone
from actors.leases import Lease
from actors.ops import Acquire, Op, Release
from actors.options import CallOptions
from actors.outbox import Outbox


def lease(ask: Acquire, epoch: int = 7) -> Lease:
    assert isinstance(ask.group_id, str)
    return Lease(
        id=ask.lease_id,
        group=ask.group_id,
        request_id=ask.lease_id,
        priority=5,
        epoch=epoch,
        ttl=30,
    )


class Manager:
    """Answers each batch when the test lets it; records every batch it got."""

    def __init__(self) -> None:
        self.batches: list[list[Op[object]]] = []
        self.answer = asyncio.Event()
        self.refuse: set[str] = set()  # lease ids refused with CallerGone

    async def count(self, ops: list[Op[object]]) -> list[object]:
        self.batches.append(ops)
        await self.answer.wait()
        return [
            None
            if isinstance(op, Release)
            else CallerGone("worker-1")
            if op.lease_id in self.refuse
            else lease(op)
            for op in ops
            if isinstance(op, Acquire | Release)
        ]


def ask(lease_id: str) -> Acquire:
    return Acquire("remote-api-openai", lease_id, CallOptions(), "worker-1", started=True)


def acquired(batches: list[list[Op[object]]]) -> list[list[str]]:
    return [[op.lease_id for op in ops if isinstance(op, Acquire)] for ops in batches]


async def test_a_lone_acquire_goes_at_once() -> None:
    manager = Manager()
    manager.answer.set()
    outbox = Outbox(manager.count)

    granted = await outbox.acquire(ask("a"))

    assert granted.id == "a"
    assert acquired(manager.batches) == [["a"]]


async def test_what_comes_while_a_batch_is_on_its_way_goes_together_in_the_next() -> None:
    manager = Manager()
    outbox = Outbox(manager.count)
    first = outbox.acquire(ask("a"))
    await asyncio.sleep(0)  # the first batch is sent and not answered
    later = [outbox.acquire(ask(i)) for i in "bcd"]
    outbox.release(lease(ask("z"), epoch=3))

    manager.answer.set()
    await outbox.drain()

    assert acquired(manager.batches) == [["a"], ["b", "c", "d"]]
    assert [op for op in manager.batches[1] if isinstance(op, Release)] == [Release("z", 3)]
    assert [g.result().id for g in (first, *later)] == ["a", "b", "c", "d"]


async def test_what_comes_in_the_interval_after_a_batch_goes_together_in_the_next() -> None:
    manager = Manager()
    manager.answer.set()  # answers at once: only the interval keeps b and c together
    slept: list[float] = []
    later: list[asyncio.Future[Lease]] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 1:
            later.extend(outbox.acquire(ask(i)) for i in "bc")

    outbox = Outbox(manager.count, interval=0.01, clock=lambda: 100.0, sleep=sleep)
    outbox.acquire(ask("a"))
    await outbox.drain()

    assert acquired(manager.batches) == [["a"], ["b", "c"]]
    assert slept == [0.01, 0.01]  # the clock stood still: the whole interval after each
    assert [g.result().id for g in later] == ["b", "c"]


async def test_each_acquire_gets_its_own_answer_and_a_failed_batch_fails_its_acquires() -> None:
    manager = Manager()
    manager.answer.set()
    manager.refuse = {"b"}
    outbox = Outbox(manager.count)

    a, b = outbox.acquire(ask("a")), outbox.acquire(ask("b"))
    assert (await a).id == "a"
    with pytest.raises(CallerGone):
        await b

    async def unreachable(ops: list[Op[object]]) -> list[object]:
        raise ConnectionError("the manager is gone")

    outbox.send = unreachable
    with pytest.raises(ConnectionError, match="the manager is gone"):
        await outbox.acquire(ask("c"))


async def test_a_grant_its_caller_stopped_waiting_for_does_not_stop_the_others() -> None:
    manager = Manager()
    outbox = Outbox(manager.count)
    abandoned, kept = outbox.acquire(ask("a")), outbox.acquire(ask("b"))
    abandoned.cancel()

    manager.answer.set()

    assert (await kept).id == "b"
