"""The providers' numbers: each backend call, counted and timed in the process that makes it.

Recorded through :mod:`actors.metrics`' instruments (a Ray metric and an
OpenTelemetry instrument of the same name and labels).
"""

from __future__ import annotations

from actors.metrics import Counter, Histogram, Labels

CALL = ("group", "model_name", "stage")
CALL_BUCKETS = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]


class CallMetrics:
    """Each backend call (in a provider actor or a Serve replica): a count per stage and
    outcome, and the latency of those that answered."""

    def __init__(self) -> None:
        self._calls = Counter(
            "llm_calls", "Backend calls, by stage and outcome (ok or the error's type).",
            (*CALL, "outcome"),
        )  # fmt: skip
        self._seconds = Histogram(
            "llm_call_seconds",
            "Duration of backend calls that answered (slot held), by stage and service.",
            (*CALL, "service_id"),
            CALL_BUCKETS,
        )

    def answered(self, seconds: float, call: Labels, service_id: str) -> None:
        """``call``: group, model_name and stage."""
        self._calls.inc({**call, "outcome": "ok"})
        self._seconds.observe(seconds, {**call, "service_id": service_id})

    def failed(self, error: BaseException, call: Labels) -> None:
        self._calls.inc({**call, "outcome": type(error).__name__})


class FallbackMetrics:
    """Calls a model's fallback took over, by the model asked, the one that took it and
    why (the error's type)."""

    def __init__(self) -> None:
        self._taken = Counter(
            "llm_fallbacks",
            "Calls handed to a model's fallback, by the model asked, the fallback, and why.",
            ("model", "fallback", "reason"),
        )

    def fell_back(self, model: str, fallback: str, reason: str) -> None:
        """``reason``: the type of the error that handed the call on."""
        self._taken.inc({"model": model, "fallback": fallback, "reason": reason})
