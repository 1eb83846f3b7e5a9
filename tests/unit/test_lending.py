"""Slots lent to a busy process: granted lent while nobody waits, called back the moment
someone does, kept idle in the process until then."""

from __future__ import annotations

from actors.budget import BudgetLimits
from actors.engine import SlotEngine
from actors.leases import Lease, TokensUsed
from actors.lending import LentUse, Recall, called_back
from actors.lent import LentSlots
from actors.options import CallOptions
from tests.unit.conftest import EPOCH, LOCAL_OLLAMA, REMOTE_OLLAMA

GROUP = LOCAL_OLLAMA.id


def engine(**kwargs: object) -> SlotEngine:
    made = SlotEngine(epoch=EPOCH, group_limits={GROUP: 4}, **kwargs)  # type: ignore[arg-type]
    made.register(LOCAL_OLLAMA)
    made.register(REMOTE_OLLAMA)
    return made


def ask(made: SlotEngine, lease_id: str, caller: str, priority: int = 5) -> Lease | None:
    return made.acquire(GROUP, lease_id, CallOptions(priority=priority), caller)


def test_a_slot_granted_while_nobody_waits_is_lent_to_its_process() -> None:
    made = engine()

    lease = ask(made, "a", "p1")

    assert lease is not None
    assert lease.lent == 0


def test_no_slot_is_lent_without_a_caller_or_when_lending_is_off() -> None:
    assert engine().acquire(GROUP, "a", CallOptions()).lent is None  # type: ignore[union-attr]
    lease = ask(engine(lend=False), "a", "p1")
    assert lease is not None
    assert lease.lent is None


def test_a_waiter_calls_back_the_slots_lent_since_the_last_recall() -> None:
    made = engine()
    for n in range(3):
        ask(made, f"a{n}", "p1")
    ask(made, "b0", "p2")

    assert ask(made, "late", "p3") is None  # the group is full: it waits

    recall = Recall(GROUP, EPOCH, 1)
    assert made.lending.take_mail() == {"p1": [recall], "p2": [recall]}
    assert made.lending.recalls[GROUP] == 1
    # A second waiter calls nothing back again: nothing was lent since.
    assert ask(made, "later", "p3") is None
    assert made.lending.take_mail() == {}


def test_a_slot_granted_to_a_waiter_with_others_behind_it_is_not_lent() -> None:
    made = engine()
    held = [ask(made, f"a{n}", "p1") for n in range(4)]
    ask(made, "w1", "p2")
    ask(made, "w2", "p2")

    [granted] = made.release("a0", EPOCH)

    assert held[0] is not None
    assert (granted.id, granted.lent) == ("w1", None)
    # The last waiter's grant leaves nobody waiting: lent again, after the recall.
    [last] = made.release("a1", EPOCH)
    assert (last.id, last.lent) == ("w2", 1)


def test_a_budgeted_groups_slots_are_never_lent() -> None:
    made = SlotEngine(epoch=EPOCH, group_budgets={GROUP: BudgetLimits(rpm=600)})
    made.register(LOCAL_OLLAMA)

    lease = ask(made, "a", "p1")

    assert lease is not None
    assert lease.lent is None


def test_a_server_taken_out_calls_its_lent_slots_back() -> None:
    made = engine()
    ask(made, "a", "p1")

    made.take_out(GROUP, "connection refused", 30.0)

    assert made.lending.take_mail() == {"p1": [Recall(GROUP, EPOCH, 1)]}


def test_under_a_global_cap_a_waiter_anywhere_calls_back_every_group() -> None:
    made = SlotEngine(epoch=EPOCH, global_limit=2)
    made.register(LOCAL_OLLAMA)
    made.register(REMOTE_OLLAMA)
    made.acquire(REMOTE_OLLAMA.id, "r", CallOptions(), "p1")
    ask(made, "a", "p2")  # the group's one slot

    assert ask(made, "late", "p3") is None

    assert made.lending.take_mail() == {
        "p1": [Recall(REMOTE_OLLAMA.id, EPOCH, 1)],
        "p2": [Recall(GROUP, EPOCH, 1)],
    }


def lease(lease_id: str, lent: int | None, epoch: int = EPOCH) -> Lease:
    return Lease(lease_id, GROUP, lease_id, 5, epoch, 30.0, lent)


def test_a_process_keeps_a_lent_slot_and_its_next_call_takes_it() -> None:
    slots = LentSlots()

    assert slots.keep(lease("a", 0), "f", now=0.0)
    assert not slots.keep(lease("b", None), "f", now=0.0)  # not lent: given back

    assert slots.take(GROUP, "f") == lease("a", 0)
    assert slots.take(GROUP, "f") is None
    assert slots.held() == [lease("a", 0)]  # in a call now, still renewed here


def test_the_calls_in_lent_slots_are_counted_by_flow_for_the_manager() -> None:
    slots = LentSlots()
    slots.ended(lease("a", 0), "f", 0.25, TokensUsed(input=10, output=5))
    slots.keep(lease("a", 0), "f", now=0.0)
    slots.take(GROUP, "f")
    slots.ended(lease("a", 0), "f", 0.5, None)  # its answer said nothing of tokens

    assert slots.take_uses() == [
        LentUse(GROUP, "f", started=1, ended=2, seconds=0.75, cost=20.0, costed=0.25)
    ]
    assert slots.take_uses() == []


def test_a_recall_gives_back_the_idle_slots_and_keeps_no_slot_lent_before_it() -> None:
    slots = LentSlots()
    slots.keep(lease("idle", 0), "f", now=0.0)

    assert slots.recall(Recall(GROUP, EPOCH, 1)) == [lease("idle", 0)]

    assert not slots.keep(lease("busy-at-the-recall", 0), "f", now=0.0)
    assert slots.keep(lease("lent-after", 1), "f", now=0.0)
    # A restarted manager's recall also covers slots lent before the restart.
    assert slots.recall(Recall(GROUP, EPOCH + 1, 1)) == [lease("lent-after", 1)]
    assert not slots.keep(lease("lent-after", 1), "f", now=0.0)
    assert slots.held() == []


def test_a_recall_calls_back_what_was_lent_before_it_or_before_a_restart() -> None:
    recall = (EPOCH + 1, 2)

    assert called_back(lease("lent-before", 1), (EPOCH, 2))
    assert not called_back(lease("lent-after", 2), (EPOCH, 2))
    # A restarted manager counts its recalls anew: a slot of its last life is called back
    # however many recalls that life had counted.
    assert called_back(lease("lent-last-life", 7), recall)
    assert not called_back(lease("lent-this-life", 2, epoch=EPOCH + 1), recall)
    assert not called_back(lease("not-lent", None), recall)


def test_a_slot_idle_past_its_linger_goes_back() -> None:
    slots = LentSlots(linger=0.5)
    slots.keep(lease("old", 0), "f", now=0.0)
    slots.keep(lease("new", 0), "f", now=0.4)

    assert slots.lingered(now=0.6) == [lease("old", 0)]

    assert slots.take(GROUP, "f") == lease("new", 0)
    assert slots.held() == [lease("new", 0)]


def test_a_slot_found_no_longer_held_is_never_kept_again() -> None:
    slots = LentSlots()
    slots.keep(lease("a", 0), "f", now=0.0)
    taken = slots.take(GROUP, "f")
    assert taken is not None

    slots.lost(taken)  # its renewal said so, while a call ran in it

    assert not slots.keep(taken, "f", now=1.0)
    assert slots.held() == []


def test_a_kept_slot_serves_only_calls_of_the_flow_that_kept_it() -> None:
    """Another tenant's call asks the manager: each flow's calls and share stay its own."""
    slots = LentSlots()
    slots.keep(lease("a", 0), "tenant:a", now=0.0)

    assert slots.take(GROUP, "tenant:b") is None
    assert slots.take(GROUP, "tenant:a") == lease("a", 0)


def test_a_kept_slot_serves_only_calls_of_the_unit_that_kept_it() -> None:
    """Another unit's call asks the manager, which serves the units started first first."""
    slots = LentSlots()
    slots.keep(lease("a", 0), "f", now=0.0, unit="run:svc-0")

    assert slots.take(GROUP, "f", "run:svc-3") is None
    assert slots.take(GROUP, "f") is None  # a call of no unit is a unit of its own
    assert slots.take(GROUP, "f", "run:svc-0") == lease("a", 0)
