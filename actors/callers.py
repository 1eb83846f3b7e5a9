"""Who asked: the process behind a call, so that its work can end when it dies."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    """A process that calls an actor, which watches it (see :mod:`actors.watch`).

    ``worker_id`` is Ray's id of the process (a restarted actor is a new
    process); ``actor_name`` only makes logs readable.
    """

    worker_id: str
    actor_name: str | None = None

    def __str__(self) -> str:
        who = f"actor {self.actor_name!r}" if self.actor_name else "process"
        return f"{who} (worker {self.worker_id[:12]})"
