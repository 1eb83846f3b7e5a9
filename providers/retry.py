"""Retries for retryable provider errors: exponential backoff with full jitter.

Written here rather than taken from tenacity or stamina: raygate's dependency
set is fixed, and the loop has two needs of its own. The caller's attempt
holds a manager slot only while it calls, so the slot is free while this
loop sleeps; and a server's Retry-After beats the computed backoff. The
deadline bounds the whole: no wait starts that would end past it.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from actors.settings import PROVIDER_DEFAULTS
from providers.errors import ProviderError, RateLimited

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = PROVIDER_DEFAULTS.retry_attempts
    base_delay: float = 0.5
    max_delay: float = 30.0
    deadline: float = PROVIDER_DEFAULTS.retry_deadline_seconds

    def delay(self, attempt: int, error: ProviderError, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return error.retry_after  # the server said when
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> T:
    rng = rng or random.Random()
    started = clock()
    for number in itertools.count(1):
        try:
            return await attempt()
        except ProviderError as error:
            if not error.retryable or number >= policy.attempts:
                raise
            wait = policy.delay(number, error, rng)
            if clock() - started + wait > policy.deadline:
                raise
            await sleep(wait)
    raise AssertionError("unreachable")
