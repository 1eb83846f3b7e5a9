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

A bucket holds ``MARGIN_SECONDS`` of refill less than a minute's worth.
Calls granted a moment apart can reach the provider closer together than
that (the trip from the grant to the provider varies), and a provider's own
bucket, as empty as ours, would refuse the second. Measured against a
loopback provider that enforces the same limits exactly: 3 of 650 calls got
429 without the margin in one run, none with it in three
(``tests/integration/test_budgets.py``).

Plain Python, no clock of its own: the engine passes ``now``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, PositiveInt

MARGIN_SECONDS = 0.5
# Characters per token for the estimate: about 4 for English in the GPT and Claude
# tokenizers; the answer's usage corrects it.
CHARS_PER_TOKEN = 4


class BudgetLimits(BaseModel):
    """A group's allowance per minute; None leaves that side unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None


def estimate_tokens(prompt_chars: int, max_tokens: int) -> int:
    """What a call may use at most, as far as it can be known before it runs."""
    return math.ceil(prompt_chars / CHARS_PER_TOKEN) + max_tokens


@dataclass(slots=True)
class Bucket:
    per_minute: int
    level: float
    at: float

    @classmethod
    def full(cls, per_minute: int, now: float) -> Bucket:
        bucket = cls(per_minute, 0.0, now)
        bucket.level = bucket.capacity
        return bucket

    @property
    def capacity(self) -> float:
        return self.per_minute * (1 - MARGIN_SECONDS / 60)

    def ready_at(self, amount: int, now: float, *, capped: bool = True) -> float:
        """When ``amount`` (at most a full bucket, unless not ``capped``: then when that
        much will have come in) can be taken: ``now`` or later."""
        self._refill(now)
        missing = (min(amount, self.capacity) if capped else amount) - self.level
        return now if missing <= 0 else now + missing * 60 / self.per_minute

    def take(self, amount: float, now: float) -> None:
        """Take ``amount``; a negative amount gives back, up to a full bucket."""
        self._refill(now)
        self.level = min(self.capacity, self.level - amount)

    def left(self, now: float) -> int:
        self._refill(now)
        return math.floor(self.level)

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.level = min(self.capacity, self.level + (now - self.at) * self.per_minute / 60)
            self.at = now


@dataclass(slots=True)
class Budget:
    requests: Bucket | None
    tokens: Bucket | None

    @classmethod
    def of(cls, limits: BudgetLimits, now: float) -> Budget:
        rpm, tpm = limits.rpm, limits.tpm
        return cls(
            Bucket.full(rpm, now) if rpm is not None else None,
            Bucket.full(tpm, now) if tpm is not None else None,
        )

    def ready_at(self, tokens: int, now: float) -> float:
        """When a call estimated at ``tokens`` fits both buckets."""
        times = [now]
        if self.requests is not None:
            times.append(self.requests.ready_at(1, now))
        if self.tokens is not None:
            times.append(self.tokens.ready_at(tokens, now))
        return max(times)

    def wait_for(self, calls: int, tokens: int, now: float) -> float:
        """Seconds until ``calls`` calls of ``tokens`` each will have fitted, one by one."""
        waits = [0.0]
        for bucket, amount in ((self.requests, calls), (self.tokens, calls * tokens)):
            if bucket is not None:
                waits.append(bucket.ready_at(amount, now, capped=False) - now)
        return max(waits)

    def spend(self, tokens: int, now: float) -> None:
        if self.requests is not None:
            self.requests.take(1, now)
        if self.tokens is not None:
            self.tokens.take(tokens, now)

    def correct(self, estimated: int, used: int, now: float) -> None:
        """A call charged ``estimated`` tokens reported ``used``: charge the difference."""
        if self.tokens is not None:
            self.tokens.take(used - estimated, now)

    def left(self, now: float) -> tuple[int | None, int | None]:
        """Requests and tokens that could start now (None where unlimited)."""
        requests = self.requests.left(now) if self.requests is not None else None
        tokens = self.tokens.left(now) if self.tokens is not None else None
        return requests, tokens
