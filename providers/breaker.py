"""A circuit breaker per concurrency group.

Closed, calls pass and their outcomes are counted. The circuit opens after
``consecutive`` failures in a row, or when at least half (``failure_rate``) of
the last ``window`` calls failed (once ``min_calls`` were seen). Open, calls
fail at once with :class:`CircuitOpen` for ``cooldown`` seconds, instead of
queueing for a slot of a backend that is down. Then one probe is let
through (half-open): its success closes the circuit, its failure opens it
again. Only failures of the backend count (timeouts, 5xx); a 400, a 401 or a
429 means the backend is up (a 429 pauses and slows the group instead, see
:mod:`actors.adaptive`). An open circuit names the failure that opened it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum

from actors.settings import PROVIDER_DEFAULTS
from providers.errors import CircuitOpen, ProviderError


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(
        self,
        provider: str,
        group: str,
        *,
        consecutive: int = 5,
        failure_rate: float = 0.5,
        window: int = 20,
        min_calls: int = 10,
        cooldown: float = PROVIDER_DEFAULTS.breaker_cooldown_seconds,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.group = group
        self.consecutive = consecutive
        self.failure_rate = failure_rate
        self.min_calls = min_calls
        self.cooldown = cooldown
        self._clock = clock
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._in_a_row = 0
        self._opened_at = 0.0
        self._probing = False
        self._last_failure = ""
        self.state = State.CLOSED

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Around one call: refuse it while open, and count how it ended."""
        self.before_call()
        try:
            yield
        except ProviderError as error:
            if error.breaker_counts:
                self.record(error if error.retryable else None)
            else:
                self._probing = False
            raise
        except BaseException:
            # Ended by something that says nothing of the backend (a queue
            # timeout, a cancellation): free the probe slot, count nothing.
            self._probing = False
            raise
        self.record(None)

    def before_call(self) -> None:
        """Raise CircuitOpen unless a call may go ahead now."""
        if self.state is State.OPEN:
            remaining = self._opened_at + self.cooldown - self._clock()
            if remaining > 0:
                raise CircuitOpen(self.provider, self.group, remaining, self._last_failure)
            self.state = State.HALF_OPEN
        if self.state is State.HALF_OPEN:
            if self._probing:
                raise CircuitOpen(self.provider, self.group, 0.0, self._last_failure)
            self._probing = True

    def record(self, failure: ProviderError | None) -> None:
        """Count one call: ``failure`` is the backend's error, None for a success."""
        ok = failure is None
        if failure is not None:
            self._last_failure = str(failure)
        if self.state is State.HALF_OPEN:
            self._probing = False
            if ok:
                self._close()
            else:
                self._open()
            return
        self._outcomes.append(ok)
        self._in_a_row = 0 if ok else self._in_a_row + 1
        failures = self._outcomes.count(False)
        if self._in_a_row >= self.consecutive or (
            len(self._outcomes) >= self.min_calls
            and failures / len(self._outcomes) >= self.failure_rate
        ):
            self._open()

    def _open(self) -> None:
        self.state = State.OPEN
        self._opened_at = self._clock()

    def _close(self) -> None:
        self.state = State.CLOSED
        self._outcomes.clear()
        self._in_a_row = 0
