"""Who asked: the process behind a call, so that its work can end when it dies."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    """A process that calls an actor.

    ``worker_id`` is Ray's id of the process (a restarted actor is a new
    process). ``actor_name`` is set when the process is a named actor, which
    is what lets a callee watch it (see :mod:`actors.watch`); a driver or an
    unnamed actor is known but not watched, and its leases end by their ttl.
    """

    worker_id: str
    actor_name: str | None = None
    namespace: str | None = None

    def __str__(self) -> str:
        who = f"actor {self.actor_name!r}" if self.actor_name else "process"
        return f"{who} (worker {self.worker_id[:12]})"
