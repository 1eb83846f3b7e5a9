"""A provider's own per-minute limits, as the fake backends enforce them.

Like OpenAI's and Anthropic's: requests and tokens per minute that refill
continuously; a request past either is answered 429 with ``Retry-After`` in
whole seconds. Tokens are counted as the request's prompt (4 characters a
token) plus its ``max_tokens`` when it arrives, then set to the usage the
answer reports. Written apart from raygate's own buckets, so that a test
of those checks them against something else.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from providers.testing.fake_llm import RateLimit, Say, Script
from providers.testing.probe_server import Received

USAGE = (11, 7)  # what every answer reports: input, output tokens


class ProviderLimits:
    def __init__(
        self, rpm: int, tpm: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rpm, self.tpm = rpm, tpm
        self._clock = clock
        self._lock = threading.Lock()
        self._requests = float(rpm)
        self._tokens = float(tpm or 0)
        self._at = clock()
        self.served = 0
        self.limited = 0
        # Each request's arrival and whether it was refused, in order.
        self.arrivals: list[tuple[float, bool]] = []

    def __call__(self, request: Received) -> Script:
        body = request.body
        chars = sum(len(m["content"]) for m in body["messages"])
        cost = math.ceil(chars / 4) + int(body.get("max_tokens") or 0)
        with self._lock:
            now = self._clock()
            elapsed, self._at = now - self._at, now
            self._requests = min(self.rpm, self._requests + elapsed * self.rpm / 60)
            waits = [(1 - self._requests) * 60 / self.rpm]
            if self.tpm is not None:
                self._tokens = min(self.tpm, self._tokens + elapsed * self.tpm / 60)
                waits.append((min(cost, self.tpm) - self._tokens) * 60 / self.tpm)
            refused = max(waits) > 0
            self.arrivals.append((now, refused))
            if refused:
                self.limited += 1
                return RateLimit(str(max(1, math.ceil(max(waits)))))
            self._requests -= 1
            self._tokens -= sum(USAGE)  # the fake answers at once: charged its usage
            self.served += 1
        return Say("ok", *USAGE)
