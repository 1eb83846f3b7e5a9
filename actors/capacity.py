"""A global cap over several shards: the first shard keeps it, and lends its slots to the others.

With ``queue.shards`` above 1 and a global cap (``queue.concurrency``), shard 0
keeps the cap as one manager does: its own calls and the slots it lends count
against it. Each other shard holds *capacity*: leases of shard 0's group
``shard-capacity``, one for each call it may hold at once, and its engine
grants no more than that (``Holdings.allowance``). So the calls held in the
whole cluster never pass the cap, whichever shard holds them.

Each other shard, after every change of its queue (:class:`ShardCapacity`):

- reads what its calls want (``Demand``): the calls held, the waiters that the
  cap alone keeps waiting, the best priority of those;
- asks shard 0 for one more slot for each such waiter, at that priority: an
  acquire like any caller's, queued there among shard 0's own waiters and the
  other shards' by priority and fair share, its grant by mail;
- keeps for its next calls only capacity that shard 0 *lent* (granted while
  nobody waited there) and has not recalled since, and that only for a moment
  when idle (``LINGER_SECONDS``); every other slot goes back as its call ends.
  A waiter that queues at shard 0 recalls what it lent (see actors.lending), so
  a shard's next call never passes over a better waiter elsewhere: that shard
  then recalls the slots it lent to its own processes too, and asks again, at
  its own waiters' priority, for any it still needs.

Crash safety. The capacity is asked under the caller id ``shard:<name>``,
which no lifeline follows: shard 0 keeps it while the shard renews it (every
third of the ttl), whatever becomes of the shard's process. A restarted shard
takes over what its last life held (``HeldBy``) and cancels what it still
waited for, before it lets anything new run (it starts allowed nothing, and
the leases it restored are calls held); a shard lost for good leaves its
capacity to expire within a ttl. A restarted shard 0 restores the capacity
leases as any others (they are journaled: the group is under the cap), the
shards renew them, and ask again for what they waited for (see
actors.deliveries). The cap is never passed; what a crash can cost is
capacity idle for at most one ttl.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import cast

from ray.actor import ActorHandle

from actors.calls import Background, unwrap
from actors.courier import Courier
from actors.deliveries import Deliveries
from actors.errors import RaygateError
from actors.gate import SlotGate
from actors.groups import GroupSpec, Provider, ResourceKind
from actors.holdings import Want
from actors.leases import Lease
from actors.lending import Recall, called_back
from actors.lent import LINGER_SECONDS
from actors.ops import Acquire, Allow, Cancel, Demand, HeldBy, Op, RecallLent, Release, Renew
from actors.options import CallOptions

log = logging.getLogger(__name__)

# Shard 0's group whose leases are the cap's slots lent to the other shards.
CAPACITY = GroupSpec(
    id="shard-capacity",
    kind=ResourceKind.REMOTE_API,
    provider=Provider.OPENAI_COMPATIBLE,
    base_url="raygate://shards",
    host=None,
    default_limit=None,
)


class ShardCapacity:
    """A shard's part of the global cap, asked of shard 0 (``root``) and given back (see
    the module). Lives on the shard actor's event loop; ``gate`` is the shard's."""

    def __init__(self, root: ActorHandle, gate: SlotGate, name: str, ttl: float) -> None:
        self.caller = f"shard:{name}"
        self._root = root
        self._gate = gate
        self._ttl = ttl
        self._loop = asyncio.get_running_loop()
        self._courier = Courier(self._call)
        self._deliveries = Deliveries(root, self._apply, self._recalled, caller=self.caller)
        # Capacity held: lent and not recalled (may back new calls), and the rest (goes
        # back as its calls end), by lease id.
        self._kept: dict[str, Lease] = {}
        self._returned: dict[str, Lease] = {}
        self._asking: dict[str, asyncio.Future[None]] = {}
        # Since when capacity that could back new calls has none to back (None: not idle),
        # and the timer of the rebalance due when it will have been idle long enough.
        self._idle_since: float | None = None
        self._linger: asyncio.TimerHandle | None = None
        # The slots given up by calls that ended (see Holdings.free), given back so far.
        self._given_up = 0
        self._poked = False
        self._background = Background()
        # Nothing runs under the cap here until the capacity of a last life is known.
        self._gate.apply([Allow(0)])
        self._started = self._background.start(self._start())

    def poke(self) -> None:
        """The queue changed (from any thread, under the gate's lock): rebalance soon, once
        for all the changes until then."""
        if not self._poked:
            self._poked = True
            self._loop.call_soon_threadsafe(self._rebalance)

    async def _start(self) -> None:
        [answer] = await self._apply([HeldBy(self.caller)])
        if isinstance(answer, Exception):
            log.error("shard 0 did not say what this shard held; it runs nothing capped")
            return
        held, waiting = cast("tuple[list[Lease], list[str]]", answer)
        # What the last life held backs the calls it restored, and goes back after them.
        self._returned = {lease.id: lease for lease in held}
        if waiting:
            await self._apply([Cancel(lease_id) for lease_id in waiting])
        self._gate.on_change = self.poke
        self._background.start(self._renew())
        self._rebalance()

    def _rebalance(self) -> None:
        """Give back what the calls here no longer need, and ask for what they want."""
        self._poked = False
        if not self._started.done():
            return
        want = cast(Want, self._gate.apply([Demand()])[0])
        # Calls that ended gave up their slots (see Holdings.free): those go back.
        giving = self._take(want.given_up - self._given_up)
        self._given_up = want.given_up
        # Capacity that may not be kept goes back once neither a call holds it nor a
        # waiter it was asked for may take it (the engine gives it back as calls end).
        giving += self._take_returned(len(self._returned) - want.held - want.blocked)
        idle = len(self._kept) + len(self._returned) - want.held - want.blocked
        giving += self._take(idle if self._lingered(idle) else 0)
        # The allowance first, then the releases: the calls held never pass the capacity.
        slots = len(self._kept) + len(self._returned)
        self._gate.apply([Allow(slots, returning=len(self._returned), seen=want.given_up)])
        if giving:
            self._background.send(self._apply([Release(lease.id, lease.epoch) for lease in giving]))
        self._ask(want.held + want.blocked - slots, want.best)

    def _lingered(self, idle: int) -> bool:
        """Whether ``idle`` slots (none: nothing is idle) have been idle for LINGER_SECONDS;
        if not yet, a rebalance is due when they will have. A loop's timer may fire a
        little early, so the time left is measured again each time, never assumed."""
        if idle <= 0:
            self._idle_since = None
            return False
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        left = self._idle_since + LINGER_SECONDS - now
        if left <= 0:
            self._idle_since = None
            return True
        if self._linger is None:
            self._linger = self._loop.call_later(left, self._linger_ended)
        return False

    def _linger_ended(self) -> None:
        self._linger = None
        self.poke()

    def _take(self, count: int) -> list[Lease]:
        """Up to ``count`` of the capacity held, what must go back first."""
        taken = self._take_returned(count)
        while len(taken) < count and self._kept:
            taken.append(self._kept.popitem()[1])
        return taken

    def _take_returned(self, count: int) -> list[Lease]:
        return [self._returned.popitem()[1] for _ in range(min(count, len(self._returned)))]

    def _ask(self, more: int, priority: int | None) -> None:
        """Ask for ``more`` slots than are asked for already, at ``priority``; fewer than
        asked: cancel the last asks."""
        more -= len(self._asking)
        while more < 0 and self._asking:
            _, asking = self._asking.popitem()
            asking.cancel()
            more += 1
        for _ in range(more if priority is not None else 0):
            lease_id = uuid.uuid4().hex
            self._asking[lease_id] = self._background.start(self._asked(lease_id, priority or 1))

    async def _asked(self, lease_id: str, priority: int) -> None:
        options = CallOptions(priority=priority, flow=self.caller)
        op = Acquire(CAPACITY.id, lease_id, options, self.caller)
        grant: asyncio.Future[Lease] = self._loop.create_future()
        self._deliveries.expect(op, grant)
        [answer] = self._courier.send([op])
        answer.add_done_callback(lambda a: self._deliveries.answered(lease_id, a.result()))
        try:
            lease = await grant
        except asyncio.CancelledError:
            self._background.send(self._apply([Cancel(lease_id)]))
            raise
        except RaygateError:
            log.warning("shard 0 refused this shard a slot of the global cap", exc_info=True)
            return
        except Exception:
            # The grant's way here failed: whatever shard 0 still holds of this ask goes.
            log.warning("asking shard 0 for a slot of the global cap failed", exc_info=True)
            self._background.send(self._apply([Cancel(lease_id)]))
            return
        finally:
            self._deliveries.gone(lease_id)
            self._asking.pop(lease_id, None)
        (self._kept if lease.lent is not None else self._returned)[lease.id] = lease
        self._rebalance()

    def _recalled(self, recall: Recall) -> None:
        """Someone waits at shard 0: no capacity lent before is kept, and the slots this
        shard lent its processes come back too."""
        for lease_id, lease in list(self._kept.items()):
            if called_back(lease, (recall.epoch, recall.count)):
                self._returned[lease_id] = self._kept.pop(lease_id)
        self._gate.apply([RecallLent()])
        self._rebalance()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            held = [*self._kept.values(), *self._returned.values()]
            answers = await self._apply([Renew(lease.id, lease.epoch) for lease in held])
            for lease, renewed in zip(held, answers, strict=True):
                if isinstance(renewed, Exception):
                    log.warning("renewing capacity %s failed", lease.id, exc_info=renewed)
                elif renewed is False:
                    log.warning("capacity %s of the global cap is no longer held", lease.id)
                    self._kept.pop(lease.id, None)
                    self._returned.pop(lease.id, None)
            self._rebalance()

    async def _apply(self, ops: list[Op[object]]) -> list[object]:
        return [await answer for answer in self._courier.send(ops)]

    async def _call(self, ops: list[Op[object]]) -> list[object]:
        answers: list[object] = await unwrap(self._root.apply.remote(ops))
        return answers
