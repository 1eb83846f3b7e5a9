"""A group's request rate learned from its provider's 429s: AIMD, and a pause on Retry-After.

A 429 says the provider's own requests (or tokens) per minute ran out. Each
caller of the group used to find that out alone, retrying after its own
``Retry-After`` while the others kept knocking. Now the call that got it tells
the manager (:meth:`actors.engine.SlotEngine.throttled`, which keeps a
:class:`Throttle` per group), which

- pauses the whole group's grants until the ``Retry-After`` (or
  ``DEFAULT_PAUSE_SECONDS`` after a 429 without one): the waiting calls, and
  the retries of the refused ones, wait in the queue instead;
- lowers the group's rate multiplicatively (``BACKOFF``), once a round: a 429
  of a call granted before the last lowering tells nothing the lowering did
  not already answer;
- raises it additively with each call that ends without a 429: back to the
  rate the last 429 came at in ``RECOVERY_CALLS`` calls, and on at that pace,
  never above the configured ``rpm`` if there is one.

The rate is requests per minute, not a number of slots, because that is what
a provider limits: with answers that come in 50 ms, a single slot makes 1,200
requests a minute, and no slot count keeps such a group under a 600 a minute
limit; a rate does, however long the answers take. It is the group's
requests bucket (:mod:`actors.budget`), so its waiters are granted in priority
order like any budget's. The first rate is what the group was granted in
the minute before its first 429: a provider's bucket holds a minute's
requests, so a burst from a full one passes about its rate before the first
429 (a steadier flow passes more, and the next 429s lower it). That only if
it was at least ``MIN_SAMPLE`` calls: a 429 after fewer says little of a rate
(the key may be shared, the tokens spent), and a rate of a few calls a
minute would hold the group down for long; the pause alone answers it.

Learned state lives in the manager's memory only: a restarted manager learns
again from the next 429.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from actors.budget import Bucket, Budget

BACKOFF = 0.8
RECOVERY_CALLS = 200
# How long a 429 without Retry-After pauses its group.
DEFAULT_PAUSE_SECONDS = 1.0
MIN_RPM = 1.0
MIN_SAMPLE = 10
MINUTE = 60.0


@dataclass(slots=True)
class Adaptation:
    """A group's learned requests per minute."""

    rpm: float
    # The rate the last 429 came at: the additive step is a share of it.
    throttled_at: float
    # When the rate was last lowered: 429s of calls granted before then are not counted.
    lowered_at: float
    # The configured rpm, never exceeded (None: none).
    ceiling: int | None

    @classmethod
    def first(cls, last_minute: int, ceiling: int | None, now: float) -> Adaptation | None:
        """After a group's first 429, having granted ``last_minute`` calls in the last
        minute; None if that is too few to learn from."""
        if last_minute < MIN_SAMPLE:
            return None
        rpm = float(last_minute if ceiling is None else min(last_minute, ceiling))
        return cls(rpm, rpm, now, ceiling)

    def lower(self, now: float) -> None:
        self.throttled_at = self.rpm
        self.rpm = self._capped(max(MIN_RPM, BACKOFF * self.rpm))
        self.lowered_at = now

    def recover(self) -> None:
        """A call ended without a 429."""
        self.rpm = self._capped(self.rpm + self.throttled_at * (1 - BACKOFF) / RECOVERY_CALLS)

    def _capped(self, rpm: float) -> float:
        return rpm if self.ceiling is None else min(rpm, self.ceiling)


@dataclass(slots=True)
class RecentGrants:
    """When a group's grants of the last minute were made."""

    _times: deque[float] = field(default_factory=deque)

    def add(self, now: float) -> None:
        self._times.append(now)
        self._forget(now)

    def count(self, now: float) -> int:
        self._forget(now)
        return len(self._times)

    def _forget(self, now: float) -> None:
        while self._times and self._times[0] <= now - MINUTE:
            self._times.popleft()


class Throttle:
    """One group's 429s and the rate learned from them, applied to the group's budget."""

    def __init__(self, configured_rpm: int | None) -> None:
        self.configured_rpm = configured_rpm
        self.recent = RecentGrants()
        # The requests per minute learned from the provider's 429s, once there was one.
        self.adaptation: Adaptation | None = None
        # How many 429s the group's calls got.
        self.count = 0
        # Held leases whose call got a 429: their release is no success to learn from.
        self._hit: set[str] = set()

    def granted(self, now: float) -> None:
        self.recent.add(now)

    def hit(
        self,
        lease_id: str,
        granted_at: float | None,
        budget: Budget | None,
        pause: float,
        now: float,
    ) -> Budget:
        """The call holding ``lease_id`` (granted at ``granted_at``; None: not held) got a
        429: lower the rate (once a round), pause the grants for ``pause`` seconds.
        Returns the group's budget, made if it had none."""
        if granted_at is not None:
            self._hit.add(lease_id)
        if self.adaptation is None:
            self.adaptation = Adaptation.first(self.recent.count(now), self.configured_rpm, now)
        elif (-math.inf if granted_at is None else granted_at) > self.adaptation.lowered_at:
            self.adaptation.lower(now)
        budget = budget or Budget(None, None)
        budget.paused_until = max(budget.paused_until, now + pause)
        if self.adaptation is not None:
            self.retune(budget, now, empty=True)
        return budget

    def freed(self, lease_id: str, budget: Budget | None, now: float, *, released: bool) -> bool:
        """A held lease ended (``released`` by its holder, else reclaimed or dropped): a
        release without a 429 raises the learned rate. Returns whether it changed."""
        hit = lease_id in self._hit
        self._hit.discard(lease_id)
        if not released or hit or self.adaptation is None or budget is None:
            return False
        self.adaptation.recover()
        self.retune(budget, now)
        return True

    def retune(self, budget: Budget, now: float, *, empty: bool = False) -> None:
        """Set the budget's requests bucket to the learned rate; ``empty``: after a 429,
        since the provider's own is."""
        assert self.adaptation is not None
        rpm = self.adaptation.rpm
        requests = budget.requests
        if requests is None:
            requests = budget.requests = Bucket(rpm, 0.0, now)
        requests.retune(rpm, now)
        if empty:
            requests.level = min(requests.level, 0.0)
