"""Each tenant's own quota: requests and tokens per minute, and requests at once.

A tenant over its quota (``serve.tenants.<name>.rpm``, ``tpm``,
``max_pending``) gets 429 with a ``Retry-After`` of its own; nobody else's
requests are touched, and a refused request never reaches the queue. The
requests of the last minute count when they are admitted, their tokens
(prompt and completion, as the backend reported them) when they are
answered; ``max_pending`` bounds the requests admitted and not yet answered,
waiting or running.

Counted per replica, like the key guesses of :mod:`serve.throttle`: with
``serve.replicas: N``, each replica lets a tenant have its whole quota.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from actors.settings import TenantSettings

WINDOW_SECONDS = 60.0


@dataclass
class _Use:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_total: int = 0
    pending: int = 0


@dataclass(frozen=True)
class OverQuota:
    """Which bound a request met, and when the tenant may ask again."""

    bound: str
    retry_after: float

    def message(self, tenant: str) -> str:
        return f"tenant {tenant!r} is over its {self.bound}: retry after {self.retry_after:.0f} s"


class TenantQuotas:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._use: dict[str, _Use] = {}

    def admit(self, tenant: str, quota: TenantSettings) -> OverQuota | None:
        """Count a request of ``tenant`` if its quota lets it in; else say which bound it
        met and for how long. An admitted request must be :meth:`answered`."""
        use = self._use.setdefault(tenant, _Use())
        now = self._clock()
        self._forget(use, now)
        if quota.max_pending is not None and use.pending >= quota.max_pending:
            # A slot of its own frees when one of its requests is answered: soon, or not.
            return OverQuota(f"max_pending of {quota.max_pending}", 1.0)
        if quota.rpm is not None and len(use.requests) >= quota.rpm:
            return OverQuota(f"rpm of {quota.rpm}", use.requests[0] + WINDOW_SECONDS - now)
        if quota.tpm is not None and use.token_total >= quota.tpm:
            return OverQuota(f"tpm of {quota.tpm}", self._tokens_fall_below(use, quota.tpm, now))
        use.requests.append(now)
        use.pending += 1
        return None

    def answered(self, tenant: str, tokens: int) -> None:
        """An admitted request of ``tenant`` ended, having used ``tokens``."""
        use = self._use[tenant]
        use.pending -= 1
        if tokens:
            use.tokens.append((self._clock(), tokens))
            use.token_total += tokens

    def _forget(self, use: _Use, now: float) -> None:
        horizon = now - WINDOW_SECONDS
        while use.requests and use.requests[0] <= horizon:
            use.requests.popleft()
        while use.tokens and use.tokens[0][0] <= horizon:
            use.token_total -= use.tokens.popleft()[1]

    @staticmethod
    def _tokens_fall_below(use: _Use, tpm: int, now: float) -> float:
        """Seconds until the tokens of the last minute fall below ``tpm``."""
        left = use.token_total
        for at, tokens in use.tokens:
            left -= tokens
            if left < tpm:
                return at + WINDOW_SECONDS - now
        return 0.0
