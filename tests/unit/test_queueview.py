"""The queue page's view: waiters in grant order with who asked and their ETAs, the recent
levels, and a view that the next change pushes to whoever waits for it."""

from __future__ import annotations

import asyncio

from actors.engine import SlotEngine
from actors.gate import SlotGate
from actors.ops import Acquire, Release
from actors.options import CallLabels, CallOptions
from actors.queueview import HISTORY_STEP_SECONDS, HISTORY_STEPS, LevelHistory
from tests.unit.conftest import EPOCH, LOCAL_OLLAMA, Harness

GROUP = LOCAL_OLLAMA.id


def test_the_view_lists_the_first_waiters_in_grant_order_with_who_asked_and_when(
    harness: Harness,
) -> None:
    harness.ask(LOCAL_OLLAMA, "blocker")
    harness.clock.advance(2.0)
    harness.done("blocker")  # a 2 s hold: ETAs are known from now on
    harness.ask(LOCAL_OLLAMA, "holder")
    labels = CallLabels("mappings", "svc-7", plateau=2, mapping_type="data", run="run-1")
    for request, priority in (("low", 2), ("high", 9), ("mid", 5), ("high-2", 9)):
        harness.ask(LOCAL_OLLAMA, request, priority, labels=labels)
        harness.clock.advance(1.0)

    view = harness.engine.view(first=3)
    waiting = view.groups[GROUP].waiting

    assert [w.request_id for w in waiting] == ["high", "high-2", "mid"]
    assert [w.position for w in waiting] == [1, 2, 3]
    assert [w.estimated_wait_seconds for w in waiting] == [2.0, 4.0, 6.0]
    assert [w.waited_seconds for w in waiting] == [3.0, 1.0, 2.0]
    assert (waiting[0].run, waiting[0].service_id) == ("run-1", "svc-7")
    assert waiting[0].stage == "mappings (data) of plateau 2"
    assert view.stats.groups[GROUP].pending == 4  # the count beyond the rows shown


def test_every_change_of_a_groups_levels_moves_the_version(harness: Harness) -> None:
    before = harness.engine.version
    harness.ask(LOCAL_OLLAMA, "a")
    granted = harness.engine.version
    harness.ask(LOCAL_OLLAMA, "b")
    queued = harness.engine.version
    harness.engine.view(first=10)
    harness.engine.stats()

    assert before < granted < queued == harness.engine.version  # reading moves nothing
    harness.done("a")
    assert harness.engine.version > queued


def test_the_history_keeps_the_most_held_and_waiting_of_each_step() -> None:
    history = LevelHistory()
    step = HISTORY_STEP_SECONDS
    history.note(0.0, 1, 0)
    history.note(1.0, 1, 7)  # a burst within the first step
    history.note(2.0, 1, 2)
    history.note(3 * step, 0, 0)  # two steps later

    held, waiting = history.series(3 * step + 1.0)

    assert len(held) == len(waiting) == HISTORY_STEPS
    assert held[-4:] == [1, 1, 1, 0]
    assert waiting[-4:] == [7, 2, 2, 0]  # the steps between keep the level it ended at
    assert held[:-4] == [0] * (HISTORY_STEPS - 4)


async def test_a_view_waiting_for_a_change_is_answered_by_the_release_that_makes_it() -> None:
    engine = SlotEngine(epoch=EPOCH)
    engine.register(LOCAL_OLLAMA)
    gate = SlotGate(engine)
    try:
        held = await gate.acquire(Acquire(GROUP, "held", CallOptions(request_id="held")))
        waiter = asyncio.create_task(
            gate.acquire(Acquire(GROUP, "next", CallOptions(request_id="next")))
        )
        first = await gate.view(-1, first=10, wait=0.0)
        while first.stats.groups[GROUP].pending == 0:  # the waiter not queued yet
            first = await gate.view(first.version, first=10, wait=5.0)

        pushed = asyncio.create_task(gate.view(first.version, first=10, wait=60.0))
        await asyncio.sleep(0)
        assert not pushed.done()  # nothing changed: the view waits
        gate.apply([Release(held.id, held.epoch)])
        view = await asyncio.wait_for(pushed, 5.0)
        await waiter

        assert view.version > first.version
        assert [w.request_id for w in first.groups[GROUP].waiting] == ["next"]
        assert view.groups[GROUP].waiting == []
        assert view.stats.groups[GROUP].active == 1

        unchanged = await gate.view(view.version, first=10, wait=0.05)  # times out
        assert unchanged.version == view.version
    finally:
        gate.close()
