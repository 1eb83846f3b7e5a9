"""What the passing of time does to the slot engine: leases expire, budgets refill, and
servers out of rotation come due for their probe.

Nothing here runs by itself: the gate's reaper thread sleeps until
:meth:`Timekeeper.next_wake` and then calls :meth:`Timekeeper.tick` (see
:mod:`actors.gate`); tests move a fake clock and call them.
"""

from __future__ import annotations

import math

from actors.holdings import Holdings
from actors.leases import Lease
from actors.tally import Outcome


class Timekeeper:
    def __init__(self, holdings: Holdings) -> None:
        self._holdings = holdings

    def reclaim_expired(self) -> list[Lease]:
        """Take back every lease past its deadline, but those of a watched caller, whose
        deadline moves one ttl on; return the leases handed on."""
        holdings = self._holdings
        leases, callers = holdings.leases, holdings.callers
        expired = False
        while (lease_id := leases.pop_expired()) is not None:
            # A restored lease counts only once its holder asked for it again: one whose
            # release was lost in the restart is never renewed, and must expire.
            if callers.is_watched(lease_id) and not leases.restored(lease_id):
                leases.extend(lease_id)
                continue
            holdings.recorder.finished(holdings.free(lease_id), Outcome.EXPIRED)
            expired = True
        return holdings.dispatch() if expired else []

    def tick(self) -> list[Lease]:
        """Reclaim what expired and grant what budget now allows; return the leases granted."""
        return self.reclaim_expired() + self._holdings.dispatch()

    def next_wake(self) -> float | None:
        """When :meth:`tick` next has something to do: a lease's deadline, the time a
        budgeted group's best waiter fits its budget, or a group's return to rotation.
        None: nothing until a call."""
        holdings = self._holdings
        times = [holdings.leases.next_expiry()]
        if holdings.room():  # else a release comes first, and dispatches
            now = holdings.clock()
            for group in holdings.groups.values():
                waits = group.budget is not None or group.is_out(now)
                top = group.next_waiter() if waits else None
                if top is not None:
                    times.append(group.ready_at(holdings.waiters[top[1]], now))
        return min((t for t in times if t is not None and t < math.inf), default=None)
