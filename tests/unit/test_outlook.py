"""The manager by model id: what a new call would meet now (its outlook), and slots held as
tickets, given back once."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from actors.errors import TicketNotHeld
from actors.groups import classify
from actors.leases import Lease
from actors.ops import OutlookOf
from actors.options import CallOptions
from actors.tickets import Tickets
from tests.unit.conftest import EPOCH, LOCAL_OLLAMA, REMOTE_OLLAMA, Harness

SECOND_GPU = classify("ollama", "http://localhost:11434", host="gpu-b")


def test_a_call_of_a_group_with_room_runs_now() -> None:
    h = Harness(group_limits={REMOTE_OLLAMA.id: 3})
    h.ask(REMOTE_OLLAMA, "running")

    outlook = h.engine.apply(OutlookOf(REMOTE_OLLAMA.id))

    assert (outlook.runs_now, outlook.free, outlook.estimated_wait_seconds) == (True, 2, 0.0)
    assert outlook.waiting_by_priority == {}


def test_a_full_groups_outlook_counts_its_waiters_and_estimates_from_its_holds() -> None:
    h = Harness()
    h.ask(LOCAL_OLLAMA, "first")
    h.ask(LOCAL_OLLAMA, "low", priority=3)
    h.ask(LOCAL_OLLAMA, "high", priority=8)

    before = h.engine.outlook(LOCAL_OLLAMA.id, CallOptions(priority=5))
    # No call has ended: nothing to estimate by.
    assert (before.runs_now, before.free, before.estimated_wait_seconds) == (False, 0, None)
    assert before.waiting_by_priority == {3: 1, 8: 1}

    h.clock.advance(10.0)
    h.done("first")  # held 10 s; "high" takes the slot, "low" waits
    # Above "low", a new call is next: it waits for the slot "high" holds, one hold.
    assert h.engine.outlook(LOCAL_OLLAMA.id, CallOptions(priority=5)).estimated_wait_seconds == 10.0
    # Below "low", it waits for two holds.
    assert h.engine.outlook(LOCAL_OLLAMA.id, CallOptions(priority=1)).estimated_wait_seconds == 20.0


def test_a_pools_outlook_sums_its_servers_and_counts_each_waiter_once() -> None:
    h = Harness()
    h.engine.register(SECOND_GPU)
    pool = (LOCAL_OLLAMA.id, SECOND_GPU.id)
    h.ask(LOCAL_OLLAMA, "held")

    free = h.engine.outlook(pool)
    assert (free.runs_now, free.free) == (True, 1)

    h.ask(SECOND_GPU, "also-held")
    h.ask((LOCAL_OLLAMA, SECOND_GPU), "waits-for-either", priority=6)
    full = h.engine.outlook(pool)
    assert (full.runs_now, full.free, full.waiting_by_priority) == (False, 0, {6: 1})


def test_the_global_cap_bounds_the_slots_free() -> None:
    h = Harness(global_limit=2, group_limits={REMOTE_OLLAMA.id: 5})
    h.ask(LOCAL_OLLAMA, "elsewhere")

    assert h.engine.outlook(REMOTE_OLLAMA.id).free == 1
    h.ask(REMOTE_OLLAMA, "here")
    capped = h.engine.outlook(REMOTE_OLLAMA.id)
    assert (capped.runs_now, capped.free) == (False, 0)


class Slot:
    """A slot's context, counting how often it was entered and left."""

    def __init__(self) -> None:
        self.entered = self.left = 0

    @contextlib.asynccontextmanager
    async def held(self, lease_id: str) -> AsyncIterator[Lease]:
        self.entered += 1
        try:
            yield Lease(lease_id, LOCAL_OLLAMA.id, f"request-{lease_id}", 5, EPOCH, 30.0)
        finally:
            self.left += 1


async def test_a_ticket_is_given_back_once_and_only_by_its_holder() -> None:
    slot = Slot()
    mine, another = Tickets(), Tickets()
    ticket = await mine.take("gpt-oss:20b", slot.held("a"))
    assert (ticket.request_id, ticket.model) == ("request-a", "gpt-oss:20b")
    assert ticket.group == LOCAL_OLLAMA.id

    with pytest.raises(TicketNotHeld, match="not held by this client"):
        await another.give_back(ticket)
    assert slot.left == 0
    await mine.give_back(ticket)
    with pytest.raises(TicketNotHeld, match="released already"):
        await mine.give_back(ticket)
    assert (slot.entered, slot.left) == (1, 1)
