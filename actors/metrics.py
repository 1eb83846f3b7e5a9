"""raygate's numbers, recorded once, exported two ways; the manager's queue metrics.

Each is a Ray metric (``ray.util.metrics``): each node's Prometheus endpoint
(``ray start --metrics-export-port``) serves it as ``ray_<name>`` and the Ray
dashboard's Grafana panels can chart it. Each is also an OpenTelemetry
instrument of the same name and labels (meter ``raygate``), exported where
``telemetry.metrics`` says (see actors.telemetry). Names and labels follow
the seed "LLM Queue Migration Plan".
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ray.util import metrics as ray_metrics

from actors.telemetry import meter

GROUP = ("group", "kind")
# A tenant's name, "" for calls that are no tenant's (a driver's job): a bounded label.
TENANT = (*GROUP, "tenant")
WAIT_BUCKETS = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0]
Labels = dict[str, str]


class Counter:
    def __init__(self, name: str, description: str, labels: Sequence[str]) -> None:
        self._ray = ray_metrics.Counter(name, description, tag_keys=tuple(labels))
        self._otel = meter().create_counter(name, description=description)

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        self._ray.inc(amount, tags=labels)
        self._otel.add(amount, attributes=labels)


class Gauge:
    def __init__(self, name: str, description: str, labels: Sequence[str]) -> None:
        self._ray = ray_metrics.Gauge(name, description, tag_keys=tuple(labels))
        self._otel = meter().create_gauge(name, description=description)

    def set(self, value: float, labels: Labels) -> None:
        self._ray.set(value, tags=labels)
        self._otel.set(value, attributes=labels)


class Histogram:
    """Seconds, in the given buckets."""

    def __init__(
        self, name: str, description: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self._ray = ray_metrics.Histogram(
            name, description, boundaries=list(buckets), tag_keys=tuple(labels)
        )
        self._otel = meter().create_histogram(
            name, unit="s", description=description, explicit_bucket_boundaries_advisory=buckets
        )

    def observe(self, seconds: float, labels: Labels) -> None:
        self._ray.observe(seconds, tags=labels)
        self._otel.record(seconds, attributes=labels)


class QueueMetrics:
    """An engine observer (see actors.reports.Observer) recording the queue's metrics."""

    def __init__(self) -> None:
        self._submitted = Counter(
            "llm_queue_submitted", "Slot requests that reached the manager.", GROUP
        )
        self._completed = Counter(
            "llm_queue_completed",
            "Slot requests that ended, by outcome (released, expired, cancelled, "
            "timed_out, rejected, abandoned).",
            (*GROUP, "outcome"),
        )
        self._inflight = Gauge("llm_queue_inflight", "Slots held now.", GROUP)
        self._pending = Gauge("llm_queue_pending", "Requests waiting for a slot.", GROUP)
        self._requests_left = Gauge(
            "llm_queue_budget_requests_left",
            "Requests a group's requests-per-minute budget allows now.",
            GROUP,
        )
        self._tokens_left = Gauge(
            "llm_queue_budget_tokens_left",
            "Tokens a group's tokens-per-minute budget allows now.",
            GROUP,
        )
        self._throttled = Counter(
            "llm_queue_throttled",
            "Calls whose provider answered 429 (each pauses its group's grants).",
            GROUP,
        )
        self._paused_until = Gauge(
            "llm_queue_paused_until_seconds",
            "Unix time until which a group's grants are paused after a 429.",
            GROUP,
        )
        self._learned_rpm = Gauge(
            "llm_queue_learned_rpm",
            "The requests per minute a group learned from its provider's 429s.",
            GROUP,
        )
        self._wait = Histogram(
            "llm_queue_wait_seconds",
            "Time from a request's arrival to its grant.",
            GROUP,
            WAIT_BUCKETS,
        )
        self._tenant_wait = Histogram(
            "llm_queue_tenant_wait_seconds",
            "Time from a request's arrival to its grant, by tenant.",
            TENANT,
            WAIT_BUCKETS,
        )
        self._tenant_served = Counter(
            "llm_queue_tenant_served_seconds",
            "Seconds the calls of each tenant held a group's slots (its fair share's service).",
            TENANT,
        )

    def submitted(self, group: str, kind: str) -> None:
        self._submitted.inc({"group": group, "kind": kind})

    def granted(self, group: str, kind: str, waited: float, tenant: str) -> None:
        self._wait.observe(waited, {"group": group, "kind": kind})
        self._tenant_wait.observe(waited, {"group": group, "kind": kind, "tenant": tenant})

    def served(self, group: str, kind: str, tenant: str, seconds: float) -> None:
        if seconds > 0:  # a counter only grows
            self._tenant_served.inc({"group": group, "kind": kind, "tenant": tenant}, seconds)

    def finished(self, group: str, kind: str, outcome: str) -> None:
        self._completed.inc({"group": group, "kind": kind, "outcome": outcome})

    def levels(self, group: str, kind: str, active: int, pending: int) -> None:
        labels = {"group": group, "kind": kind}
        self._inflight.set(active, labels)
        self._pending.set(pending, labels)

    def budget_left(self, group: str, kind: str, requests: int | None, tokens: int | None) -> None:
        labels = {"group": group, "kind": kind}
        if requests is not None:
            self._requests_left.set(requests, labels)
        if tokens is not None:
            self._tokens_left.set(tokens, labels)

    def throttled(self, group: str, kind: str, pause_seconds: float) -> None:
        labels = {"group": group, "kind": kind}
        self._throttled.inc(labels)
        self._paused_until.set(time.time() + pause_seconds, labels)

    def learned_rpm(self, group: str, kind: str, rpm: float) -> None:
        self._learned_rpm.set(rpm, {"group": group, "kind": kind})
