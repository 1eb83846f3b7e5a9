"""A group's requests- and tokens-per-minute budget: two token buckets on the engine's clock.

Providers limit how many requests and tokens a key may use per minute
(OpenAI's RPM and TPM, Anthropic's RPM and input/output TPM). A bucket holds
at most one minute's allowance and refills continuously at that rate, so a
full bucket allows a burst of one minute's worth and then the steady rate.

A call's tokens are not known before it runs: it is charged an estimate
(:func:`estimate_tokens`) when granted and corrected with the usage its
answer reports when it ends. A correction can leave the bucket below zero
(the calls used more than they were charged); later calls then wait longer.
A call larger than a whole minute's tokens waits for a full bucket rather
than forever.

A provider's bucket starts refilling only when a call reaches it, ours when
the call is granted, and the trip between varies. So a call on its way
holds its charge: a bucket refills no higher than its capacity less what
the calls in flight were charged, until each call ends (its answer proves it
reached the provider) or ``TRIP_SECONDS`` after its grant, whichever is
first. Without that, a provider idle and full while the first calls of a
burst were on their way lost their trip's refill that ours counted: measured
against a loopback provider that enforces the same limits exactly
(``tests/integration/test_budgets.py``), 1 run in 6 got a 429 of 650 calls
when the first trip took over half a second; none in 12 with the holds.

A bucket also holds ``MARGIN_SECONDS`` of refill less than a minute's worth:
a provider's accounting is its own (when it counts a request, how it rounds),
and the margin keeps ours on the safe side of it.

Plain Python, no clock of its own: the engine passes ``now``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

MARGIN_SECONDS = 0.5
# How long after its grant a call may still be on its way to the provider.
TRIP_SECONDS = 10.0
# Characters per token for the estimate: about 4 for English in the GPT and Claude
# tokenizers; the answer's usage corrects it.
CHARS_PER_TOKEN = 4


class BudgetLimits(BaseModel):
    """A group's allowance per minute; None leaves that side unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rpm: PositiveInt | None = Field(default=None, description="Requests a minute; none: unlimited.")
    tpm: PositiveInt | None = Field(
        default=None,
        description="Tokens (prompt and completion) a minute, charged at the grant from the "
        "prompt's length and `max_tokens` and corrected by the answer's usage; none: "
        "unlimited.",
    )


def estimate_tokens(prompt_chars: int, max_tokens: int) -> int:
    """What a call may use at most, as far as it can be known before it runs."""
    return math.ceil(prompt_chars / CHARS_PER_TOKEN) + max_tokens


@dataclass(slots=True)
class Bucket:
    per_minute: float
    level: float
    at: float
    # What the calls on their way were charged: the level stays below capacity by it.
    held: int = 0

    @classmethod
    def full(cls, per_minute: float, now: float) -> Bucket:
        bucket = cls(per_minute, 0.0, now)
        bucket.level = bucket.capacity
        return bucket

    @property
    def capacity(self) -> float:
        return self.per_minute * (1 - MARGIN_SECONDS / 60)

    def ready_at(self, amount: int, now: float, *, capped: bool = True) -> float:
        """When ``amount`` (at most a full bucket, unless not ``capped``: then when that
        much will have come in, holds aside) can be taken: ``now`` or later; infinity
        when not before a hold ends."""
        self._refill(now)
        wanted = min(amount, self.capacity) if capped else amount
        missing = wanted - self.level
        if missing <= 0:
            return now
        if capped and wanted > self.capacity - self.held:
            return math.inf
        return now + missing * 60 / self.per_minute

    def take(self, amount: int, now: float) -> None:
        """Charge a call on its way ``amount``, and hold it until :meth:`unhold`."""
        self._refill(now)
        self.level -= amount
        self.held += amount

    def unhold(self, amount: int, now: float) -> None:
        """A call charged ``amount`` reached its provider (or never will)."""
        self._refill(now)
        self.held -= amount

    def give(self, amount: float, now: float) -> None:
        """Give back ``amount`` (take when negative), up to what the holds allow."""
        self._refill(now)
        self.level = min(self.level + amount, max(self.level, self.capacity - self.held))

    def left(self, now: float) -> int:
        self._refill(now)
        return math.floor(self.level)

    def retune(self, per_minute: float, now: float) -> None:
        """Refill at ``per_minute`` from now on (its capacity a minute's worth of it)."""
        self._refill(now)
        self.per_minute = per_minute
        self.level = min(self.level, self.capacity)

    def _refill(self, now: float) -> None:
        if now > self.at:
            room = self.capacity - self.held
            if self.level < room:
                self.level = min(room, self.level + (now - self.at) * self.per_minute / 60)
            self.at = now


@dataclass(slots=True)
class _Charge:
    tokens: int
    # Until when the call is held as on its way; None once it no longer is.
    held_until: float | None


@dataclass(slots=True)
class Budget:
    requests: Bucket | None
    tokens: Bucket | None
    # No grant before then: the provider said when to come back (see actors.adaptive).
    paused_until: float = -math.inf
    # What each call in flight was charged, by its lease id, and the holds in grant order.
    _charges: dict[str, _Charge] = field(default_factory=dict)
    _holds: deque[str] = field(default_factory=deque)

    @classmethod
    def of(cls, limits: BudgetLimits, now: float) -> Budget:
        rpm, tpm = limits.rpm, limits.tpm
        return cls(
            Bucket.full(rpm, now) if rpm is not None else None,
            Bucket.full(tpm, now) if tpm is not None else None,
        )

    def ready_at(self, tokens: int, now: float) -> float:
        """When a call estimated at ``tokens`` fits both buckets, and no pause holds it."""
        self._expire(now)
        times = [now, self.paused_until]
        if self.requests is not None:
            times.append(self.requests.ready_at(1, now))
        if self.tokens is not None:
            times.append(self.tokens.ready_at(tokens, now))
        ready = max(times)
        return ready if ready < math.inf else self._next_unhold()

    def wait_for(self, calls: int, tokens: int, now: float) -> float:
        """Seconds until ``calls`` calls of ``tokens`` each will have fitted, one by one."""
        self._expire(now)
        waits = [0.0, self.paused_until - now]
        for bucket, amount in ((self.requests, calls), (self.tokens, calls * tokens)):
            if bucket is not None:
                waits.append(bucket.ready_at(amount, now, capped=False) - now)
        return max(waits)

    def spend(self, call: str, tokens: int, now: float) -> None:
        """Charge the call ``call`` (a lease id), granted now and estimated at ``tokens``."""
        self._expire(now)
        for bucket, amount in self._sides(tokens):
            bucket.take(amount, now)
        self._charges[call] = _Charge(tokens, now + TRIP_SECONDS)
        self._holds.append(call)

    def returned(self, call: str, used: int | None, now: float) -> None:
        """The call ``call`` ended: its hold ends, and the tokens its answer reported
        (``used``; None when it reported none, and its estimate stands) correct its charge."""
        self._expire(now)
        charge = self._charges.pop(call, None)
        if charge is None:
            return
        if charge.held_until is not None:
            self._unhold(charge.tokens, now)
        if used is not None and self.tokens is not None:
            self.tokens.give(charge.tokens - used, now)

    def left(self, now: float) -> tuple[int | None, int | None]:
        """Requests and tokens that could start now (None where unlimited)."""
        self._expire(now)
        requests = self.requests.left(now) if self.requests is not None else None
        tokens = self.tokens.left(now) if self.tokens is not None else None
        return requests, tokens

    def _sides(self, tokens: int) -> list[tuple[Bucket, int]]:
        sides = ((self.requests, 1), (self.tokens, tokens))
        return [(bucket, amount) for bucket, amount in sides if bucket is not None]

    def _unhold(self, tokens: int, now: float) -> None:
        for bucket, amount in self._sides(tokens):
            bucket.unhold(amount, now)

    def _next_unhold(self) -> float:
        """When the oldest hold ends by itself (a call that ends first ends it sooner)."""
        for call in self._holds:
            charge = self._charges.get(call)
            if charge is not None and charge.held_until is not None:
                return charge.held_until
        return math.inf

    def _expire(self, now: float) -> None:
        """End the holds of calls granted ``TRIP_SECONDS`` before ``now``, each at its
        own time, so that the buckets refill between them as they then could."""
        while self._holds:
            charge = self._charges.get(self._holds[0])
            if charge is not None and charge.held_until is not None:
                if charge.held_until > now:
                    return
                self._unhold(charge.tokens, charge.held_until)
                charge.held_until = None
            self._holds.popleft()
