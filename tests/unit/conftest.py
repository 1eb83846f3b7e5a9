from __future__ import annotations

import itertools
from typing import Any

import pytest

from actors.engine import SlotEngine
from actors.groups import GroupSpec, classify
from actors.leases import Lease, TokensUsed
from actors.options import CallOptions

EPOCH = 7

LOCAL_OLLAMA = classify("ollama", "http://localhost:11434")
REMOTE_OLLAMA = classify("ollama", "http://server.com:11434")
ANTHROPIC = classify("anthropic")
OPENAI = classify("openai")


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ``queue.fairness`` of a Harness that names none: test_engine.py runs each test with
# both, as every ordering test holds under either (one flow makes them alike).
FAIRNESS = {"fair": True}


class Harness:
    """An engine on a fake clock, with unique lease ids and readable helpers."""

    def __init__(self, **engine_kwargs: object) -> None:
        self.clock = FakeClock()
        engine_kwargs.setdefault("fair", FAIRNESS["fair"])
        self.engine = SlotEngine(epoch=EPOCH, clock=self.clock, **engine_kwargs)  # type: ignore[arg-type]
        self._ids = itertools.count(1)
        self.leases: dict[str, Lease] = {}
        for spec in (LOCAL_OLLAMA, REMOTE_OLLAMA, ANTHROPIC, OPENAI):
            self.engine.register(spec)

    def lease_id(self) -> str:
        return f"lease-{next(self._ids)}"

    def ask(
        self,
        spec: GroupSpec | tuple[GroupSpec, ...],
        request: str,
        priority: int = 5,
        **options: Any,
    ) -> str:
        """Acquire for ``request`` a slot of ``spec``'s group, or of any group of a pool
        (``options``: critical, unit); return its lease id."""
        lease_id = self.lease_id()
        group = spec.id if isinstance(spec, GroupSpec) else tuple(s.id for s in spec)
        lease = self.engine.acquire(
            group, lease_id, CallOptions(priority=priority, request_id=request, **options)
        )
        if lease is not None:
            self.leases[request] = lease
        return lease_id

    def granted_now(self, request: str) -> bool:
        return request in self.leases

    def done(self, request: str, used: TokensUsed | None = None) -> list[str]:
        """Release ``request``'s lease, its call having ``used`` tokens if its answer said;
        return the requests granted as a result, in order."""
        lease = self.leases.pop(request)
        return self._record(self.engine.release(lease.id, lease.epoch, used))

    def grant_order(self, first: str) -> list[str]:
        """Release ``first``, then each request it hands the slot to, until none is left."""
        order: list[str] = []
        current = first
        while granted := self.done(current):
            order += granted
            current = granted[0]
        return order

    def _record(self, granted: list[Lease]) -> list[str]:
        for lease in granted:
            self.leases[lease.request_id] = lease
        return [lease.request_id for lease in granted]

    def cancel(self, lease_id: str, *, timed_out: bool = False) -> list[str]:
        return self._record(self.engine.cancel(lease_id, timed_out=timed_out))

    def reclaim(self) -> list[str]:
        return self._record(self.engine.timekeeper.reclaim_expired())


@pytest.fixture
def harness() -> Harness:
    return Harness()
