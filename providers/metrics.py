"""The providers' numbers: each backend call, counted and timed in the process that makes it.

Recorded through :mod:`actors.metrics`' instruments (a Ray metric and an
OpenTelemetry instrument of the same name and labels): raygate's own, by group,
stage and service, and OpenTelemetry's GenAI client metrics, by the GenAI
attributes of each backend call's span (see :mod:`providers.gated`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.util.types import AttributeValue

from actors.metrics import Counter, Histogram, Labels

CALL = ("group", "model_name", "stage")
CALL_BUCKETS = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]

# OpenTelemetry's GenAI client metrics as its semantic conventions v1.37.0 define them
# (docs/gen-ai/gen-ai-metrics.md, the same through v1.41.0): their names, and the bucket
# boundaries the conventions say each histogram SHOULD have.
OPERATION_DURATION = "gen_ai.client.operation.duration"
TOKEN_USAGE = "gen_ai.client.token.usage"
OPERATION_BUCKETS = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
]  # fmt: skip
TOKEN_BUCKETS = [
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
]  # fmt: skip
# The attributes both carry; a call's span carries them too. The response model, the
# server's address and port are left out when a call has none.
GENAI = (
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "server.address",
    "server.port",
)
# Each gen_ai.token.type, and the span attribute that counts its tokens.
TOKEN_TYPES = {"input": "gen_ai.usage.input_tokens", "output": "gen_ai.usage.output_tokens"}


@dataclass(frozen=True)
class Operation:
    """One backend call (one ``chat {model}`` span), once it answered or failed: its
    span's attributes, with the usage its answer reported or the ``error.type`` it failed
    with, and its seconds."""

    attributes: Mapping[str, AttributeValue]
    seconds: float


def error_type(error: BaseException) -> str:
    """A failed call's ``error.type``: its error's class, named in full
    (``providers.errors.RateLimited``), as the conventions ask of an exception.

    Each of raygate's errors stands for one kind of failure of any provider (a
    status, a timeout, a refused connection; see providers.errors), so the name
    says more than a provider's status code and stays as few values as the classes.
    """
    kind = type(error)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


class CallMetrics:
    """Each backend call (in a provider actor or a Serve replica): a count per stage and
    outcome, and the latency of those that answered; and OpenTelemetry's GenAI client
    metrics of each call to a backend (each try of a call retried)."""

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
        self._duration = Histogram(
            OPERATION_DURATION, "GenAI operation duration.", (*GENAI, "error.type"),
            OPERATION_BUCKETS,
        )  # fmt: skip
        self._tokens = Histogram(
            TOKEN_USAGE, "Number of input and output tokens used.", (*GENAI, "gen_ai.token.type"),
            TOKEN_BUCKETS, unit="{token}",
        )  # fmt: skip

    def answered(self, seconds: float, call: Labels, service_id: str) -> None:
        """``call``: group, model_name and stage."""
        self._calls.inc({**call, "outcome": "ok"})
        self._seconds.observe(seconds, {**call, "service_id": service_id})

    def failed(self, error: BaseException, call: Labels) -> None:
        self._calls.inc({**call, "outcome": type(error).__name__})

    def operation_ended(self, operation: Operation) -> None:
        """Its duration, with ``error.type`` if it failed; and, if its answer reported
        usage, its input and output tokens (the instruments keep their attributes of
        the span's)."""
        attributes = operation.attributes
        self._duration.observe(operation.seconds, attributes)
        for token_type, counted_by in TOKEN_TYPES.items():
            tokens = attributes.get(counted_by)
            if isinstance(tokens, int):
                self._tokens.observe(tokens, {**attributes, "gen_ai.token.type": token_type})


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
