"""Slowing down a client that guesses keys: wrong bearer keys and failed logins.

Each replica counts, per client address, the wrong keys it was shown in the
last ``window`` seconds. Past ``limit`` of them, that client's requests that
present a key (a bearer header or the login form) are answered 429 with a
``Retry-After`` until the oldest failure leaves the window; a right key
clears its count. A request with no key at all is no guess, and gets its 401
as always. Behind a proxy every client has the proxy's address: the limit
then holds for all of them together.

Not the manager's pause after a backend's 429: that one holds back raygate's
own calls to a backend, this one answers a client.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from actors.bounded import Bounded

# How many clients' failures a replica remembers; the one it heard of least recently
# (a failure, or a key checked against its count) is forgotten first.
CLIENT_MEMORY = 10_000


class KeyGuesses:
    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: Bounded[str, deque[float]] = Bounded(CLIENT_MEMORY)

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may present a key again, or None if it may now."""
        failures = self._recent(client)
        if len(failures) < self.limit:
            return None
        return max(0.0, failures[0] + self.window - self._clock())

    def failed(self, client: str) -> None:
        failures = self._recent(client)
        failures.append(self._clock())
        self._failures[client] = failures

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def _recent(self, client: str) -> deque[float]:
        """The client's failures within the window, at most ``limit`` of them."""
        failures = self._failures.get(client, deque(maxlen=self.limit))
        horizon = self._clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        return failures
