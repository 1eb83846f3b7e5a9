"""Watching callers through their lifelines, with plain futures standing in for Ray's refs."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError, OwnerDiedError

from actors.callers import Caller
from actors.errors import CallerGone
from actors.watch import CallerCalls, CallerWatch


def lifeline() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


def owner_died() -> OwnerDiedError:
    return OwnerDiedError("ref", None, "")


class Watched:
    """A watch with caller worker-1's lifeline hosted and followed, and the deaths it told."""

    def __init__(self) -> None:
        self.dead: list[str] = []
        self.watch = CallerWatch(lambda caller: self.dead.append(caller.id))
        self.line = lifeline()
        self.hosted = asyncio.create_task(self.watch.lifeline("worker-1"))
        self.following = asyncio.create_task(self.watch.follow(Caller("worker-1"), self.line))


async def test_a_caller_whose_lifeline_fails_as_owner_died_is_reported_once() -> None:
    w = Watched()
    dead, watch, line, hosted, following = w.dead, w.watch, w.line, w.hosted, w.following
    await asyncio.sleep(0)
    assert dead == []
    assert not hosted.done()
    assert not following.done()

    line.set_exception(owner_died())
    # The watch call returns, and the hosted lifeline call ends with it.
    await asyncio.wait_for(asyncio.gather(following, hosted), timeout=5)

    assert dead == ["worker-1"]
    assert watch.gone("worker-1")
    # A lifeline call that arrives late returns at once instead of waiting forever.
    await asyncio.wait_for(watch.lifeline("worker-1"), timeout=5)


async def test_a_callers_exit_reported_by_ray_ends_it_once_before_its_lifeline_fails() -> None:
    w = Watched()
    dead, watch, line, hosted, following = w.dead, w.watch, w.line, w.hosted, w.following
    await asyncio.sleep(0)

    watch.exited("worker-2")  # a process that never called here
    watch.exited("worker-1")
    await asyncio.wait_for(hosted, timeout=5)
    assert dead == ["worker-1"]
    assert watch.gone("worker-1")
    assert not watch.gone("worker-2")

    # Two seconds later, Ray fails the lifeline too: the caller is not ended twice.
    line.set_exception(owner_died())
    await asyncio.wait_for(following, timeout=5)
    assert dead == ["worker-1"]


async def test_a_lifeline_lost_with_its_host_is_not_a_death() -> None:
    dead: list[str] = []
    watch = CallerWatch(lambda caller: dead.append(caller.id))
    stale = lifeline()
    stale.set_exception(ActorDiedError())  # hosted by this actor before its restart

    await asyncio.wait_for(watch.follow(Caller("worker-1"), stale), timeout=5)

    assert dead == []
    assert not watch.gone("worker-1")


async def test_a_dead_callers_running_calls_are_cancelled_and_new_ones_refused() -> None:
    calls = CallerCalls()
    line = lifeline()
    caller, other = Caller("worker-1"), Caller("worker-2")
    following = asyncio.create_task(calls.watch.follow(caller, line))
    started = asyncio.Event()

    async def call(by: Caller) -> None:
        with calls.running(by):
            started.set()
            await asyncio.Event().wait()

    mine, theirs = asyncio.create_task(call(caller)), asyncio.create_task(call(other))
    await started.wait()
    line.set_exception(owner_died())
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(mine, timeout=5)
    await following
    assert not theirs.done()

    with pytest.raises(CallerGone, match="died before it started"):
        await call(caller)
    theirs.cancel()
    await asyncio.gather(theirs, return_exceptions=True)
