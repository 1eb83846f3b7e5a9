"""Slots lent to a busy process: kept there for its next calls until the manager calls
them back.

Every gated call costs its process two manager operations, however cheap a
batch makes them. Where nobody waits for a group, that is work for nothing: the
slot a call gives back would be granted at once to the next call asking,
often of the same process. So a slot granted while nobody waits for its group
(and, under a global cap, for any group) is *lent*: its process may keep it
when the call ends, idle, and start its next call of the group for the same
flow and unit of work in it without asking (see :mod:`actors.lent`). The manager
counts a lent slot as held, idle or not, so no limit is ever passed; the holder
renews it as any lease.

The moment a waiter queues in a group with slots lent since the last recall
(under a global cap: in any group), the manager calls them back: it counts a
recall for the group and mails it to each process holding one (see
:mod:`actors.mailbox`). A process gives its idle slots of the group back at
once and every busy one when its call ends; a lent slot granted before the
recall is never kept again. A waiter may so wait for a slot kept idle
elsewhere for one round trip (the recall's way there and the release's way
back): a priority inversion across processes, bounded and counted (``recalls``
in the group's stats). Only a single group's slot, of no budget, in rotation,
is lent; a pool's call, a budgeted or throttled group's, or a probe's goes
back as before.

Lent slots are leases: a dead process's come back with its lifeline, and a
restarted manager restores them as it restores any lease, lent (journaled so),
to be called back by the first waiter.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

from actors.groupstate import Group
from actors.leases import Lease


@dataclass(frozen=True, slots=True)
class Recall:
    """The manager calls back the slots of ``group`` lent to a process: every lent lease
    whose ``lent`` is below ``count`` (its epoch ``epoch``, or an older epoch)."""

    group: str
    epoch: int
    count: int


def called_back(lease: Lease, recall: tuple[int, int]) -> bool:
    """Whether ``lease`` is a lent slot that the recall ``(epoch, count)`` calls back:
    lent before it at its epoch, or at any older epoch (a restarted manager counts its
    recalls anew)."""
    return lease.lent is not None and (lease.epoch, lease.lent) < recall


@dataclass(frozen=True, slots=True)
class LentUse:
    """What calls of one flow did in slots of ``group_id`` lent to their process, since
    its last report: ``started`` without asking; ``ended``, having held their slots
    ``seconds`` in all, of which ``costed`` seconds were of calls whose answers said
    what they used, ``cost`` in all (see actors.fairshare)."""

    group_id: str
    flow: str
    started: int = 0
    ended: int = 0
    seconds: float = 0.0
    cost: float = 0.0
    costed: float = 0.0


class Lending:
    def __init__(self, epoch: int, enabled: bool = True) -> None:
        self.epoch = epoch
        self.enabled = enabled
        # By group: recalls so far; lent leases held (lease id -> caller); callers lent a
        # slot since the last recall.
        self.recalls: dict[str, int] = defaultdict(int)
        self._lent: dict[str, dict[str, str]] = defaultdict(dict)
        self._since_recall: dict[str, set[str]] = defaultdict(set)
        # Recalls for the gate to mail: caller -> its recalls.
        self._mail: dict[str, list[Recall]] = {}

    def lend(self, group: Group, lease: Lease, caller: str | None, anyone_waits: bool) -> Lease:
        """``lease``, just granted, lent to its caller's process if nobody waits for the
        group (``anyone_waits``: under a global cap, for any group) and the group may
        lend (see the module)."""
        if (
            not self.enabled
            or caller is None
            or anyone_waits
            or len(group.queue) > 0
            or group.budget is not None
            or group.out is not None
        ):
            return lease
        self.held(group.spec.id, lease.id, caller)
        return replace(lease, lent=self.recalls[group.spec.id])

    def held(self, group_id: str, lease_id: str, caller: str) -> None:
        """``lease_id`` of ``group_id`` is lent to ``caller`` (granted, or restored)."""
        self._lent[group_id][lease_id] = caller
        self._since_recall[group_id].add(caller)

    def freed(self, group_id: str, lease_id: str) -> None:
        lent = self._lent.get(group_id)
        if lent is not None:
            lent.pop(lease_id, None)

    def recall(self, group_ids: list[str]) -> None:
        """Call back what these groups lent since their last recall: a waiter queued there,
        or the group's server is down or throttled."""
        for group_id in group_ids:
            callers = self._since_recall.get(group_id)
            if not callers:
                continue
            held = set(self._lent[group_id].values())
            self.recalls[group_id] += 1
            recall = Recall(group_id, self.epoch, self.recalls[group_id])
            for caller in callers & held:
                self._mail.setdefault(caller, []).append(recall)
            callers.clear()

    def recall_all(self) -> None:
        """Call back every slot lent since its group's last recall: under a global cap kept
        by another shard, a waiter there needs them (see actors.capacity)."""
        self.recall(self.lending_groups())

    def lending_groups(self) -> list[str]:
        """The groups with slots lent since their last recall."""
        return [group_id for group_id, callers in self._since_recall.items() if callers]

    def take_mail(self) -> dict[str, list[Recall]]:
        """The recalls to mail since the last call, by caller."""
        mail, self._mail = self._mail, {}
        return mail
