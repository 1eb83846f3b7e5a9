"""The courier sends a client's operations in batches: one manager call in flight at a time."""

from __future__ import annotations

import asyncio

from actors.courier import Courier
from actors.errors import DuplicateLease
from actors.ops import Op, Release, Renew


class Manager:
    """Answers each call when the test lets it; records every batch it got."""

    def __init__(self) -> None:
        self.batches: list[list[Op[object]]] = []
        self.answer = asyncio.Event()
        self.fail: Exception | None = None

    async def apply(self, ops: list[Op[object]]) -> list[object]:
        self.batches.append(ops)
        await self.answer.wait()
        if self.fail is not None:
            raise self.fail
        return [_answer(op) for op in ops]


def _answer(op: Op[object]) -> object:
    """An operation's lease id; a lease id "dup", refused."""
    assert isinstance(op, Release | Renew)
    return DuplicateLease(op.lease_id) if op.lease_id == "dup" else op.lease_id


def release(lease_id: str) -> Release:
    return Release(lease_id, epoch=1)


async def test_a_lone_operation_goes_at_once_with_no_timer() -> None:
    manager = Manager()
    manager.answer.set()
    courier = Courier(manager.apply)

    [answer] = courier.send([release("a")])

    assert await asyncio.wait_for(answer, timeout=1) == "a"
    assert manager.batches == [[release("a")]]


async def test_operations_sent_while_a_call_is_in_flight_go_together_in_the_next() -> None:
    manager = Manager()
    courier = Courier(manager.apply)
    first = courier.send([release("a")])
    await asyncio.sleep(0)  # the first call leaves
    later = [*courier.send([release("b"), Renew("c", 1)]), *courier.send([release("d")])]

    assert manager.batches == [[release("a")]]  # one call at a time
    manager.answer.set()

    assert await asyncio.gather(*first, *later) == ["a", "b", "c", "d"]
    assert manager.batches == [[release("a")], [release("b"), Renew("c", 1), release("d")]]


async def test_operations_sent_in_one_turn_of_the_loop_share_a_call() -> None:
    manager = Manager()
    manager.answer.set()
    courier = Courier(manager.apply)

    answers = [courier.send([release(lease)])[0] for lease in "abc"]

    assert await asyncio.gather(*answers) == ["a", "b", "c"]
    assert manager.batches == [[release("a"), release("b"), release("c")]]


async def test_an_operations_error_is_its_answer_and_the_others_still_get_theirs() -> None:
    manager = Manager()
    manager.answer.set()
    courier = Courier(manager.apply)

    answers = await asyncio.gather(*courier.send([release("a"), release("dup"), release("b")]))

    assert (answers[0], answers[2]) == ("a", "b")
    assert isinstance(answers[1], DuplicateLease)


async def test_a_failed_call_answers_each_of_its_operations_with_the_error() -> None:
    manager = Manager()
    manager.fail = ConnectionError("the manager is gone")
    manager.answer.set()
    courier = Courier(manager.apply)

    answers = await asyncio.gather(*courier.send([release("a"), release("b")]))

    assert answers == [manager.fail, manager.fail]


async def test_drain_waits_for_every_operation_sent() -> None:
    manager = Manager()
    courier = Courier(manager.apply)
    answers = courier.send([release("a")])
    await asyncio.sleep(0)
    answers += courier.send([release("b")])
    draining = asyncio.create_task(courier.drain())
    await asyncio.sleep(0.01)
    assert not draining.done()

    manager.answer.set()
    await asyncio.wait_for(draining, timeout=1)

    assert all(answer.done() for answer in answers)


def test_a_client_used_from_a_new_event_loop_sends_from_it() -> None:
    """A driver's second asyncio.run: the first loop's sending task is gone with it."""
    manager = Manager()
    manager.answer.set()
    courier = Courier(manager.apply)

    async def one(lease_id: str) -> object:
        return await courier.send([release(lease_id)])[0]

    assert asyncio.run(one("a")) == "a"
    assert asyncio.run(one("b")) == "b"
