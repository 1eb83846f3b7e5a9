"""Out of rotation, and the choice of a pool's server: one home for both, used by the slot
engine's groups (:mod:`actors.engine`) and by the path without a queue
(:class:`actors.slots.NoSlots`) alike.

A caller that finds a server down (its circuit open, its server gone, its node
lost) takes its group *out* of rotation for a cooldown: it is granted nothing
then. After the cooldown it is half-open: one call is let in, the *probe*, and
none beside it, whatever the group's limit; once the probe ends without
finding the server down, the group is back in rotation with its whole limit. A
probe that finds the server down takes it out again (its caller does so before
it gives its slot back); one whose caller died, gave up or let it expire lets
in the next. A call none of whose servers is in rotation fails at once with
:class:`actors.errors.OutOfRotation`, which names each one's reason.

Of a pool's servers with room, a new call takes the one with the fewest calls
per weight (weighted least connections); those alike take turns by weight
(smooth weighted round robin, as nginx's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from actors.errors import OutOfRotation


@dataclass(slots=True)
class Out:
    """Why a group's server is out of rotation, and until when; and its probe."""

    reason: str
    until: float
    # The lease of the probe in flight; None: none yet (or the last one never ended).
    probe: str | None = None

    def excludes(self, now: float) -> bool:
        """Whether the group takes no call at ``now`` (its cooldown runs)."""
        return now < self.until

    def probing(self, now: float) -> bool:
        """Whether the cooldown has passed at ``now``: the next grant is the probe, or the
        probe is in flight."""
        return now >= self.until

    def admits(self) -> bool:
        """Whether a call may start beside what runs: not while the probe is in flight."""
        return self.probe is None

    def granted(self, lease_id: str, now: float) -> None:
        """A call of the group was granted: past the cooldown, the first is the probe."""
        if self.probing(now) and self.probe is None:
            self.probe = lease_id

    def ended(self, lease_id: str, *, released: bool) -> bool:
        """A call of the group ended (``released`` by its holder, or not: expired, its
        caller dead or gone); True if it was the probe and so the group is back."""
        if self.probe != lease_id:
            return False
        self.probe = None
        return released


def none_in_rotation(outs: Mapping[str, Out | None], now: float) -> OutOfRotation | None:
    """The error of a call none of whose groups (``outs``: each one's time out, or None)
    is in rotation at ``now``; None if one is."""
    if any(out is None or not out.excludes(now) for out in outs.values()):
        return None
    return OutOfRotation({group: out.reason for group, out in outs.items() if out is not None})


class Server(Protocol):
    """What the choice of a pool's server reads of each: its calls running, its weight,
    and its turn (which the choice moves)."""

    @property
    def active(self) -> int: ...
    @property
    def weight(self) -> float: ...

    turn: float


S = TypeVar("S", bound=Server)


def least_busy(free: Sequence[S]) -> S:
    """Which of a pool's servers with room a new call takes: the one with the fewest calls
    per weight; those alike take turns by weight (each adds its weight to its turn, the
    highest is taken and gives back the weights of all)."""
    least = min(s.active / s.weight for s in free)
    alike = [s for s in free if s.active / s.weight == least]
    if len(alike) == 1:
        return alike[0]
    for s in alike:
        s.turn += s.weight
    taken = max(alike, key=lambda s: s.turn)
    taken.turn -= sum(s.weight for s in alike)
    return taken
