"""The lease table: which slots are held, under which epoch, until when.

A caller asks for a slot on behalf of a request id and gets a *lease*; it is
held until released, or until its ttl runs out without a renewal, at which
point the engine reclaims it so a crashed caller never keeps a slot. Lease ids
are chosen by the caller so that a release or cancel can be sent before the
acquire's answer is back, and in any order: a freed or never-seen id is
*retired*, and an acquire of it that arrives later is refused.

Plain Python on an injected clock, like the rest of the slot engine.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, replace

from actors.bounded import Bounded

# How many lease ids released or cancelled before their acquire arrived are remembered.
RETIRED_MEMORY = 65_536


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted slot: renew it every ``ttl / 3`` under ``epoch``, release it by ``id``.

    ``lent``: the slot is lent to its holder's process, which may keep it for its
    next call of the group instead of giving it back, until the manager calls it
    back (see :mod:`actors.lending`): the group's count of recalls when it was
    granted. None: give it back after the call.
    """

    id: str
    group: str
    request_id: str
    priority: int
    epoch: int
    ttl: float
    lent: int | None = None


@dataclass(frozen=True, slots=True)
class TokensUsed:
    """What a call's answer said it used, sent with the release of its slot."""

    input: int
    output: int

    @property
    def total(self) -> int:
        """What the group's tokens-per-minute budget counts."""
        return self.input + self.output

    @property
    def cost(self) -> int:
        """What its flow's fair share counts: prompt + 2 x completion, as the Virtual Token
        Counter weighs them (generating a token costs a server about twice reading one)."""
        return self.input + 2 * self.output


class LeaseTable:
    """Held leases with their deadlines; retired ids; leases restored after a restart."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self._clock = clock
        self._held: dict[str, Lease] = {}
        self._granted_at: dict[str, float] = {}
        self._expires_at: dict[str, float] = {}
        # (deadline, lease id); renewals push a new entry and stale ones are skipped.
        self._deadlines: list[tuple[float, str]] = []
        self._retired: Bounded[str, None] = Bounded(RETIRED_MEMORY)
        # Leases held again after a restart whose holder has not asked for them yet.
        self._restored: set[str] = set()
        self.stale_epoch_releases = 0
        self.unknown_releases = 0
        self.late_acquires = 0
        self.renewed = 0

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._held

    def get(self, lease_id: str) -> Lease | None:
        return self._held.get(lease_id)

    def hold(self, lease: Lease, *, restored: bool = False) -> None:
        """Hold ``lease`` for one ttl; ``restored``: held again after a restart."""
        now = self._clock()
        self._held[lease.id] = lease
        self._granted_at[lease.id] = now
        self._push(lease.id, now + self.ttl)
        if restored:
            self._restored.add(lease.id)

    def known_as(self, lease_id: str, epoch: int) -> None:
        """Hold ``lease_id`` under ``epoch`` from now on: the epoch its holder knows it by."""
        self._held[lease_id] = replace(self._held[lease_id], epoch=epoch)

    def free(self, lease_id: str) -> tuple[Lease, float]:
        """Forget a held lease and retire its id; returns it and how long it was held.

        An acquire of the id that arrives now is late (a slot passed on in its
        caller's process before the acquire got here, or Ray retrying it after a
        restart) and must not be granted a second slot that nobody would release.
        """
        lease = self._held.pop(lease_id)
        self.retire(lease_id)
        del self._expires_at[lease_id]
        self._restored.discard(lease_id)
        return lease, self._clock() - self._granted_at.pop(lease_id)

    def granted_at(self, lease_id: str) -> float | None:
        return self._granted_at.get(lease_id)

    def retire(self, lease_id: str) -> None:
        self._retired.add(lease_id)

    def retired(self, lease_id: str) -> bool:
        return lease_id in self._retired

    def refuse_late(self, lease_id: str) -> bool:
        """Whether an acquire of ``lease_id`` comes after its release (counted if so)."""
        if lease_id not in self._retired:
            return False
        del self._retired[lease_id]
        self.late_acquires += 1
        return True

    def claim_restored(self, lease_id: str) -> Lease | None:
        """The lease a restart restored, when its holder asks for it again (Ray retried
        the acquire whose answer the restart lost); None if it is not one."""
        if lease_id not in self._restored:
            return None
        self._restored.discard(lease_id)
        return self._held[lease_id]

    def restored(self, lease_id: str) -> bool:
        return lease_id in self._restored

    def renew(self, lease_id: str, epoch: int) -> bool:
        """Push a held lease's deadline one ttl ahead; False if it is no longer held."""
        lease = self._held.get(lease_id)
        if lease is None or lease.epoch != epoch:
            return False
        self._restored.discard(lease_id)  # its holder still holds it
        self._push(lease_id, self._clock() + self.ttl)
        self.renewed += 1
        return True

    def extend(self, lease_id: str) -> None:
        """Move a lease's deadline one ttl on, without its holder's word."""
        self._push(lease_id, self._clock() + self.ttl)

    def releasable(self, lease_id: str, epoch: int, current_epoch: int) -> bool:
        """Whether a release of ``lease_id`` under ``epoch`` frees a slot; if not, the
        release is counted: from an older epoch, or of a lease not held (its id retired,
        so an acquire that arrives after its own release is refused)."""
        lease = self._held.get(lease_id)
        if lease is not None and lease.epoch == epoch:
            return True
        if epoch != current_epoch:
            self.stale_epoch_releases += 1
        else:
            self.unknown_releases += 1
            self.retire(lease_id)
        return False

    def next_expiry(self) -> float | None:
        """The earliest deadline of a held lease, or None."""
        while self._deadlines:
            deadline, lease_id = self._deadlines[0]
            if self._expires_at.get(lease_id) == deadline:
                return deadline
            heapq.heappop(self._deadlines)
        return None

    def pop_expired(self) -> str | None:
        """A lease past its deadline, taken off the deadlines (free or extend it next);
        None if there is none."""
        deadline = self.next_expiry()
        if deadline is None or deadline > self._clock():
            return None
        return heapq.heappop(self._deadlines)[1]

    def _push(self, lease_id: str, deadline: float) -> None:
        self._expires_at[lease_id] = deadline
        heapq.heappush(self._deadlines, (deadline, lease_id))
