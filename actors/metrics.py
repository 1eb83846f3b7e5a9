"""raygate's numbers, recorded once, exported two ways; the manager's queue metrics.

Each is a Ray metric (``ray.util.metrics``): each node's Prometheus endpoint
(``ray start --metrics-export-port``) serves it as ``ray_<name>`` and the Ray
dashboard's Grafana panels can chart it. Each is also an OpenTelemetry
instrument of the same name and labels (meter ``raygate``), exported where
``telemetry.metrics`` says (see actors.telemetry). Names and labels follow
the seed "LLM Queue Migration Plan". A name or label with dots (OpenTelemetry's
``gen_ai.client.token.usage``) is the Ray metric's in its Prometheus form
(:func:`prometheus_name`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping, Sequence

from opentelemetry.util.types import AttributeValue
from ray.util import metrics as ray_metrics

from actors.telemetry import meter

GROUP = ("group", "kind")
# A tenant's name, "" for calls that are no tenant's (a driver's job): a bounded label.
TENANT = (*GROUP, "tenant")
WAIT_BUCKETS = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0]
# How often the queue's metrics noted since are recorded (see QueueMetrics).
EXPORT_SECONDS = 1.0
Labels = dict[str, str]
# What a record is told: its labels' values among others (see _Twin).
Attributes = Mapping[str, AttributeValue]
# A metric's label values, in the order of its label names.
Key = tuple[str, ...]
# The Prometheus suffix of a unit (UCUM, as OpenTelemetry's); one in braces, an
# annotation like {token}, has none.
UNIT_SUFFIXES = {"s": "seconds"}


def prometheus_name(name: str, unit: str = "") -> str:
    """``name`` as OpenTelemetry's Prometheus exporter writes it: what Prometheus does not
    allow (dots) as ``_``, and the unit's suffix unless the name ends with it already.

    Ray's metric takes this name, since Ray refuses dots: a series is then named alike on
    Ray's endpoint (after ``ray_``) and on OpenTelemetry's. The names without dots of
    raygate's own metrics are their own Prometheus form.
    """
    base = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
    suffix = UNIT_SUFFIXES.get(unit)
    return base if suffix is None or base.endswith(f"_{suffix}") else f"{base}_{suffix}"


class _Twin:
    """A Ray metric and an OpenTelemetry instrument of one name and labels: the
    OpenTelemetry one takes the name and label names as given, the Ray one their
    Prometheus forms (see :func:`prometheus_name`).

    A record keeps its metric's labels and drops any other attribute it is given. A
    label it leaves out is absent: OpenTelemetry gets no such attribute, Ray the value ""
    (Ray wants every label, and Prometheus reads "" as absent). Ray wants strings, so
    a number (``server.port``) is a number to OpenTelemetry only.
    """

    def __init__(self, name: str, labels: Sequence[str], unit: str = "") -> None:
        self.labels = tuple(labels)
        self.ray_name = prometheus_name(name, unit)
        self.tag_keys = tuple(prometheus_name(label) for label in self.labels)

    def _picked(self, attributes: Attributes) -> dict[str, AttributeValue]:
        return {label: attributes[label] for label in self.labels if label in attributes}

    def _tags(self, attributes: Attributes) -> dict[str, str]:
        return {
            key: str(attributes.get(label, ""))
            for label, key in zip(self.labels, self.tag_keys, strict=True)
        }


class Counter(_Twin):
    def __init__(self, name: str, description: str, labels: Sequence[str]) -> None:
        super().__init__(name, labels)
        self._ray = ray_metrics.Counter(self.ray_name, description, tag_keys=self.tag_keys)
        self._otel = meter().create_counter(name, description=description)

    def inc(self, labels: Attributes, amount: float = 1.0) -> None:
        self._ray.inc(amount, tags=self._tags(labels))
        self._otel.add(amount, attributes=self._picked(labels))


class Gauge(_Twin):
    def __init__(self, name: str, description: str, labels: Sequence[str]) -> None:
        super().__init__(name, labels)
        self._ray = ray_metrics.Gauge(self.ray_name, description, tag_keys=self.tag_keys)
        self._otel = meter().create_gauge(name, description=description)

    def set(self, value: float, labels: Attributes) -> None:
        self._ray.set(value, tags=self._tags(labels))
        self._otel.set(value, attributes=self._picked(labels))


class Histogram(_Twin):
    """Values in the given buckets, in ``unit``: seconds unless it says otherwise."""

    def __init__(
        self,
        name: str,
        description: str,
        labels: Sequence[str],
        buckets: Sequence[float],
        *,
        unit: str = "s",
    ) -> None:
        super().__init__(name, labels, unit)
        self._ray = ray_metrics.Histogram(
            self.ray_name, description, boundaries=list(buckets), tag_keys=self.tag_keys
        )
        self._otel = meter().create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
        )

    def observe(self, value: float, labels: Attributes) -> None:
        self._ray.observe(value, tags=self._tags(labels))
        self._otel.record(value, attributes=self._picked(labels))


class QueueMetrics:
    """An engine observer (see actors.reports.Observer) recording the queue's metrics.

    The engine tells it of every change on the path of a grant, under the
    gate's lock, about nine times an acquire and release, and recording a Ray
    metric costs about 10 us. So a change is only noted here (a counter's sum,
    a gauge's last value, a histogram's observations) and a thread records
    what was noted every ``export_seconds`` (None: only :meth:`flush` does);
    Ray exports its metrics every few seconds anyway.
    """

    def __init__(self, export_seconds: float | None = EXPORT_SECONDS) -> None:
        self._lock = threading.Lock()
        self._sums: dict[tuple[Counter, Key], float] = {}
        self._last: dict[tuple[Gauge, Key], float] = {}
        self._observed: list[tuple[Histogram, Key, float]] = []
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
        self._out_of_rotation = Gauge(
            "llm_queue_out_of_rotation",
            "1 while a group's server is out of rotation (found down, or its probe not yet "
            "back), else 0.",
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
            "Seconds the calls of each tenant held a group's slots.",
            TENANT,
        )
        self._tenant_service = Counter(
            "llm_queue_tenant_service",
            "What each tenant's fair share counted: weighted tokens (prompt + 2 x "
            "completion), or call-seconds in a group whose calls report no usage.",
            TENANT,
        )
        if export_seconds is not None:
            threading.Thread(
                target=self._export, args=(export_seconds,), name="raygate-metrics", daemon=True
            ).start()

    def submitted(self, group: str, kind: str) -> None:
        self._add(self._submitted, (group, kind))

    def granted(self, group: str, kind: str, waited: float, tenant: str) -> None:
        with self._lock:
            self._observed.append((self._wait, (group, kind), waited))
            self._observed.append((self._tenant_wait, (group, kind, tenant), waited))

    def served(self, group: str, kind: str, tenant: str, seconds: float, cost: float) -> None:
        # A counter only grows.
        if seconds > 0:
            self._add(self._tenant_served, (group, kind, tenant), seconds)
        if cost > 0:
            self._add(self._tenant_service, (group, kind, tenant), cost)

    def finished(self, group: str, kind: str, outcome: str) -> None:
        self._add(self._completed, (group, kind, outcome))

    def levels(self, group: str, kind: str, active: int, pending: int) -> None:
        with self._lock:
            self._last[self._inflight, (group, kind)] = active
            self._last[self._pending, (group, kind)] = pending

    def budget_left(self, group: str, kind: str, requests: int | None, tokens: int | None) -> None:
        with self._lock:
            if requests is not None:
                self._last[self._requests_left, (group, kind)] = requests
            if tokens is not None:
                self._last[self._tokens_left, (group, kind)] = tokens

    def throttled(self, group: str, kind: str, pause_seconds: float) -> None:
        self._add(self._throttled, (group, kind))
        with self._lock:
            self._last[self._paused_until, (group, kind)] = time.time() + pause_seconds

    def learned_rpm(self, group: str, kind: str, rpm: float) -> None:
        with self._lock:
            self._last[self._learned_rpm, (group, kind)] = rpm

    def rotation(self, group: str, kind: str, out: bool) -> None:
        with self._lock:
            self._last[self._out_of_rotation, (group, kind)] = int(out)

    def flush(self) -> None:
        """Record what was noted since the last flush."""
        with self._lock:
            sums, self._sums = self._sums, {}
            last, self._last = self._last, {}
            observed, self._observed = self._observed, []
        for (counter, key), amount in sums.items():
            counter.inc(dict(zip(counter.labels, key, strict=True)), amount)
        for (gauge, key), value in last.items():
            gauge.set(value, dict(zip(gauge.labels, key, strict=True)))
        for histogram, key, seconds in observed:
            histogram.observe(seconds, dict(zip(histogram.labels, key, strict=True)))

    def _add(self, counter: Counter, key: Key, amount: float = 1.0) -> None:
        with self._lock:
            self._sums[counter, key] = self._sums.get((counter, key), 0.0) + amount

    def _export(self, every: float) -> None:
        while True:
            time.sleep(every)
            self.flush()
