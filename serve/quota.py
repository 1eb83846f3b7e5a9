"""Each tenant's own quota: requests and tokens per minute, and requests at once.

A tenant over its quota (``serve.tenants.<name>.rpm``, ``tpm``,
``max_pending``) gets 429 with a ``Retry-After`` of its own; nobody else's
requests are touched, and a refused request never reaches the queue. The
requests of the last minute count when they are admitted, their tokens
(prompt and completion, as the backend reported them) when they are
answered; ``max_pending`` bounds the requests admitted and not yet answered,
waiting or running.

Counted in each replica, which admits an equal share of each bound (rounded
down; the settings refuse a bound below ``serve.replicas``): so a tenant's
requests across the cluster never exceed its quota, whichever replica each
lands on. A tenant whose requests crowd one replica may be refused there
before its whole quota is used; Serve's router spreads requests over the
replicas, so that is at most the unevenness of one minute's spread.
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
    """The quotas one of ``replicas`` replicas keeps."""

    def __init__(self, replicas: int = 1, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._replicas = replicas
        self._clock = clock
        self._use: dict[str, _Use] = {}

    def admit(self, tenant: str, quota: TenantSettings) -> OverQuota | None:
        """Count a request of ``tenant`` if its quota lets it in; else say which bound it
        met and for how long. An admitted request must be :meth:`answered`."""
        use = self._use.setdefault(tenant, _Use())
        now = self._clock()
        self._forget(use, now)
        max_pending, rpm, tpm = (
            None if bound is None else bound // self._replicas
            for bound in (quota.max_pending, quota.rpm, quota.tpm)
        )
        if max_pending is not None and use.pending >= max_pending:
            # A slot of its own frees when one of its requests is answered: soon, or not.
            return OverQuota(self._bound("max_pending", quota.max_pending), 1.0)
        if rpm is not None and len(use.requests) >= rpm:
            retry_after = use.requests[0] + WINDOW_SECONDS - now
            return OverQuota(self._bound("rpm", quota.rpm), retry_after)
        if tpm is not None and use.token_total >= tpm:
            retry_after = self._tokens_fall_below(use, tpm, now)
            return OverQuota(self._bound("tpm", quota.tpm), retry_after)
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

    def _bound(self, name: str, value: int | None) -> str:
        if self._replicas == 1:
            return f"{name} of {value}"
        return f"{name} of {value} (its share at each of {self._replicas} replicas)"

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
