"""The manager's and the providers' numbers as Ray metrics.

Exported through ``ray.util.metrics``: each node's Prometheus endpoint
(``ray start --metrics-export-port``) serves them as ``ray_<name>``, and the
Ray dashboard's Grafana panels can chart them. Names and labels follow the
seed "LLM Queue Migration Plan".
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge, Histogram

GROUP = ("group", "kind")
WAIT_BUCKETS = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0]
CALL_BUCKETS = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]


class QueueMetrics:
    """An engine observer (see actors.engine.Observer) that records Ray metrics."""

    def __init__(self) -> None:
        self._submitted = Counter(
            "llm_queue_submitted", "Slot requests that reached the manager.", tag_keys=GROUP
        )
        self._completed = Counter(
            "llm_queue_completed",
            "Slot requests that ended, by outcome (released, expired, cancelled, "
            "timed_out, rejected).",
            tag_keys=(*GROUP, "outcome"),
        )
        self._inflight = Gauge("llm_queue_inflight", "Slots held now.", tag_keys=GROUP)
        self._pending = Gauge("llm_queue_pending", "Requests waiting for a slot.", tag_keys=GROUP)
        self._wait = Histogram(
            "llm_queue_wait_seconds",
            "Time from a request's arrival to its grant.",
            boundaries=WAIT_BUCKETS,
            tag_keys=GROUP,
        )

    def submitted(self, group: str, kind: str) -> None:
        self._submitted.inc(tags={"group": group, "kind": kind})

    def granted(self, group: str, kind: str, waited: float) -> None:
        self._wait.observe(waited, tags={"group": group, "kind": kind})

    def finished(self, group: str, kind: str, outcome: str) -> None:
        self._completed.inc(tags={"group": group, "kind": kind, "outcome": outcome})

    def levels(self, group: str, kind: str, active: int, pending: int) -> None:
        tags = {"group": group, "kind": kind}
        self._inflight.set(active, tags=tags)
        self._pending.set(pending, tags=tags)


class CallMetrics:
    """Latency of each backend call, in the provider actor."""

    def __init__(self) -> None:
        self._seconds = Histogram(
            "llm_call_seconds",
            "Duration of backend calls (slot held), by stage and outcome.",
            boundaries=CALL_BUCKETS,
            tag_keys=("group", "model_name", "stage", "service_id", "outcome"),
        )

    def observe(
        self, seconds: float, *, group: str, model_name: str, stage: str, service_id: str,
        outcome: str,
    ) -> None:  # fmt: skip
        self._seconds.observe(
            seconds,
            tags={
                "group": group,
                "model_name": model_name,
                "stage": stage,
                "service_id": service_id,
                "outcome": outcome,
            },
        )
