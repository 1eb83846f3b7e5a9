"""Who asked: the process behind a call, so that its work can end when it dies."""

from __future__ import annotations

from dataclasses import dataclass

from actors.bounded import Bounded
from actors.leases import RETIRED_MEMORY


@dataclass(frozen=True, slots=True)
class Caller:
    """A process that calls an actor, which watches it (see :mod:`actors.watch`).

    ``id`` is Ray's worker id of the process (a restarted actor is a new
    process, so a new caller); ``actor_name`` only makes logs readable.
    """

    id: str
    actor_name: str | None = None

    def __str__(self) -> str:
        who = f"actor {self.actor_name!r}" if self.actor_name else "process"
        return f"{who} (worker {self.id[:12]})"


class CallerIndex:
    """Which caller asked for each lease waiting or held, the leases of each caller, the
    callers that died (an acquire of theirs may still arrive), and the callers whose death
    Ray would report."""

    def __init__(self) -> None:
        self._of: dict[str, str] = {}
        self._leases: dict[str, set[str]] = {}
        self._gone: Bounded[str, None] = Bounded(RETIRED_MEMORY)
        # Callers whose lifelines are followed, by count (a restarted manager may follow
        # one twice): their leases outlive the ttl, which only backs up a death nobody
        # reports.
        self._watched: dict[str, int] = {}

    def note(self, lease_id: str, caller: str | None) -> None:
        if caller is not None:
            self._of[lease_id] = caller
            self._leases.setdefault(caller, set()).add(lease_id)

    def forget(self, lease_id: str) -> None:
        caller = self._of.pop(lease_id, None)
        if caller is not None:
            leases = self._leases[caller]
            leases.discard(lease_id)
            if not leases:
                del self._leases[caller]

    def of(self, lease_id: str) -> str | None:
        """The caller that asked for ``lease_id``, if it said."""
        return self._of.get(lease_id)

    def leases(self, caller: str) -> list[str]:
        """The leases ``caller`` waits for or holds, in id order."""
        return sorted(self._leases.get(caller, ()))

    def died(self, caller: str) -> None:
        self._gone.add(caller)

    def gone(self, caller: str) -> bool:
        return caller in self._gone

    def watched(self, caller: str) -> None:
        """Ray will report the death of ``caller`` (a lifeline of it is followed): until
        :meth:`unwatched`, its leases are not reclaimed at their ttl, however late its
        renewals (they queue behind a burst of acquires in the manager's mailbox)."""
        self._watched[caller] = self._watched.get(caller, 0) + 1

    def unwatched(self, caller: str) -> None:
        """A lifeline of ``caller`` ended: with its last, its leases expire at their ttl
        again (a death that nobody reports ends them there)."""
        count = self._watched.pop(caller, 0) - 1
        if count > 0:
            self._watched[caller] = count

    def is_watched(self, lease_id: str) -> bool:
        """Whether Ray would report the death of the caller holding ``lease_id``."""
        return self._of.get(lease_id) in self._watched
