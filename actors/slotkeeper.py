"""A process's side of its slots: waiting for one, keeping it, passing it on, giving it
back (for :class:`actors.client.ManagerClient`, which hands it the operations to send).

``slot`` sends the manager two operations, acquire and release, each in its
client's next batch (see :mod:`actors.courier`); a grant that is not in the
acquire's answer comes by mail (see :mod:`actors.deliveries`). While the
caller holds the slot, a background task renews the lease every third of its
ttl; the release runs in ``finally`` whatever happens; a caller cancelled, or
out of patience (its queue timeout, its max wait), while waiting tells the
manager, which drops the waiter or, if the grant was already on its way back,
passes the slot on.

A freed slot whose next waiter is one of this process's own is handed over here,
without the manager's round trip (the hand-over: docs/architecture.md tells how
it works and why it keeps the manager's order).

A group with no limit under no global cap can never make anyone wait, so the
caller does not wait for its acquire: the call starts at once, the manager
still counts it, and the renewals and the release follow the grant when its
answer is back (so a release can never overtake its own acquire, and uses
the epoch of the manager that granted it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import Protocol, TypeVar, cast

from ray.actor import ActorHandle

from actors.calls import Background
from actors.courier import Courier, Send
from actors.deliveries import Deliveries
from actors.errors import RaygateError
from actors.groups import Pool, pool_of
from actors.leases import Lease, TokensUsed
from actors.lent import Fate, Lent
from actors.ops import Acquire, Cancel, GroupInfoOf, HandOver, Op, Release, Renew
from actors.options import DEFAULT_OPTIONS, CallOptions
from actors.stats import GroupInfo
from actors.successors import Successors
from actors.watch import caller_of

log = logging.getLogger(__name__)

A = TypeVar("A")


class Asks(Protocol):
    """Sends one operation to the manager (see ManagerClient.ask)."""

    async def __call__(self, op: Op[A]) -> A: ...


class SlotKeeper:
    def __init__(
        self,
        handle: ActorHandle,
        groups: dict[str, GroupInfo],
        ask: Asks,
        apply: Send,
        courier: Courier,
    ) -> None:
        self.handle = handle
        # The client's knowledge of each group, kept up to date by its ask and apply.
        self._groups = groups
        self._ask = ask
        self._apply = apply
        self._courier = courier
        # Calls no caller waits for (fast-path grants, releases, cancels): kept so
        # that their errors are logged and drain() can wait for them.
        self._background = Background()
        # Grants by mail, recalls among them; and the slots lent to this process, kept
        # between its calls, whose recalls that mail must be listened for.
        self._deliveries = Deliveries(handle, apply, lambda recall: self._lent.recalled(recall))
        self._lent = Lent(handle, apply, self._background.send, self._deliveries.listen)
        # Tokens used by calls that hold a slot of a gated group, sent with their release.
        self._used: dict[str, TokensUsed] = {}
        self._successors = Successors(handle)
        # Leases a release here handed over, each with the hand-over call telling the
        # manager (their own release waits for it).
        self._handed_over: dict[str, asyncio.Future[None]] = {}

    def forget(self, group: str) -> None:
        """The group's next grant is the manager's to make (it waits for time too): no slot
        is passed on here, and none kept."""
        self._successors.forget(group)
        self._lent.forget(group)

    def slot(
        self, group: str | Pool, options: CallOptions = DEFAULT_OPTIONS
    ) -> AbstractAsyncContextManager[Lease]:
        """Hold one slot of ``group`` for the body of the ``async with``; of a pool (a tuple
        of group ids), one slot of whichever group has room for the call first: the
        lease's ``group`` says which.

        ``options`` say how the call waits (priority, unit, critical, request
        id, queue timeout; see :mod:`actors.options`).
        """
        if not isinstance(group, str):
            pool = pool_of(group)
            if len(pool) > 1:
                return self._held(pool, uuid.uuid4().hex, options.identified())
            group = pool[0]
        info = self._groups.get(group)
        if info is None:
            return self._first_slot(group, options)
        return self._slot(group, options, info)

    def _slot(
        self, group: str, options: CallOptions, info: GroupInfo
    ) -> AbstractAsyncContextManager[Lease]:
        if info.gated:
            return self._held(group, uuid.uuid4().hex, options.identified())
        return self._sent(group, uuid.uuid4().hex, options.identified(), info)

    @asynccontextmanager
    async def _first_slot(self, group: str, options: CallOptions) -> AsyncIterator[Lease]:
        """A slot of a group this client has not asked about yet: its info first."""
        info = self._groups.get(group)
        if info is None:
            info = await self._ask(GroupInfoOf(group))
        async with self._slot(group, options, info) as lease:
            yield lease

    @asynccontextmanager
    async def _held(
        self, group: str | Pool, lease_id: str, options: CallOptions
    ) -> AsyncIterator[Lease]:
        """A gated group, or a pool: a slot lent to this process and kept idle here, else
        wait for the grant (the manager's, or a slot passed on here); keep it alive, keep
        it for the next call if it is lent, else give it back."""
        flow = options.flow or ""
        idle = None
        if isinstance(group, str) and self._lent.keeps(group):
            # One turn of the loop first, as a manager call would take: a recall that came
            # meanwhile is heard, and a caller that loops on kept slots awaiting nothing
            # else lets the process's other work run.
            await asyncio.sleep(0)
            idle = self._lent.take(group, flow, options.unit)
        if idle is not None:
            asked = options.request_id or idle.id
            lease = replace(idle, request_id=asked, priority=options.priority)
        else:
            lease = await self._waited(group, lease_id, options)
        began = time.monotonic()
        grant: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        grant.set_result(lease)
        keeper = asyncio.create_task(self._keep_alive(grant))
        cancelled = False
        try:
            yield lease
        except asyncio.CancelledError:
            # Work being cancelled, maybe with the calls waiting behind it here: the
            # slot goes back through the manager, not to one of them.
            cancelled = True
            raise
        finally:
            keeper.cancel()
            used = self._used.pop(lease.id, None)
            after = self._handed_over.pop(lease.id, None)
            successor = self._successors.hand_over(lease, cancelled=cancelled)
            held = time.monotonic() - began
            handed_over = successor is not None
            fate = self._lent.ended(
                lease, flow, options.unit, held, used, cancelled=cancelled, handed_over=handed_over
            )
            if fate is not Fate.KEPT:
                # A task of its own, shielded: a caller cancelled right here still gives
                # its slot back, and a successor woken just now starts its call before
                # this one takes the loop to tell the manager.
                counted = fate is Fate.COUNTED
                ended = asyncio.ensure_future(
                    self._give_back(lease, None if counted else used, successor, after, counted)
                )
                if successor is not None:
                    self._handed_over[successor] = ended
                await asyncio.shield(ended)

    async def _waited(self, group: str | Pool, lease_id: str, options: CallOptions) -> Lease:
        """The grant of an acquire that may wait (the manager's, or a slot passed on here),
        within its patience (queue timeout, max wait)."""
        passed = self._successors.waiter(lease_id, options)
        op = Acquire(group, lease_id, options, caller_of(self.handle).id)
        patience = op.patience(time.time())
        self._deliveries.expect(op, passed)
        [answer] = self._courier.send([op])
        answer.add_done_callback(lambda a: self._deliveries.answered(lease_id, a.result()))
        try:
            async with asyncio.timeout(None if patience is None else patience[0]):
                return await passed
        except (asyncio.CancelledError, TimeoutError) as stopped:
            # The manager drops the waiter, or releases the slot granted meanwhile (a
            # cancel that overtakes the hand-over naming it is refused there).
            timed_out = isinstance(stopped, TimeoutError)
            self._handed_over.pop(lease_id, None)
            self._background.send(self._ask(Cancel(lease_id, timed_out=timed_out)))
            if patience is not None and timed_out:
                raise patience[1] from None
            raise
        except RaygateError:
            raise  # the manager's own answer: it keeps nothing of the waiter
        except Exception:
            # The grant's way here failed (the manager gone, or Ray): whatever the manager
            # still holds of the waiter goes, or it would hold a slot for nobody.
            self._background.send(self._ask(Cancel(lease_id)))
            raise
        finally:
            self._successors.gone(lease_id)
            self._deliveries.gone(lease_id)

    async def _give_back(
        self,
        lease: Lease,
        used: TokensUsed | None,
        successor: str | None,
        after: asyncio.Future[None] | None,
        idle: bool = False,
    ) -> None:
        """Release ``lease``, or hand it over to ``successor``, once the manager has heard of
        the hand-over ``after`` that gave it to this process, if one did: a release that
        overtook it would find the lease not yet held, and the hand-over then hold it.
        ``idle``: a lent slot whose calls were counted as they ended (see actors.lent)."""
        if after is not None:
            with contextlib.suppress(Exception):
                await after
        if successor is None:
            await self._ask(Release(lease.id, lease.epoch, used, idle))
            return
        caller = caller_of(self.handle).id
        await self._ask(HandOver(lease.group, lease.id, lease.epoch, successor, caller, used))

    def named_next(self, group: str) -> str | None:
        """See :meth:`actors.successors.Successors.named_next`."""
        return self._successors.named_next(group)

    @asynccontextmanager
    async def _sent(
        self, group: str, lease_id: str, options: CallOptions, info: GroupInfo
    ) -> AsyncIterator[Lease]:
        """A group where nobody waits: the call starts at once, the manager still counts it.

        Nobody waits for the acquire's answer but the renewals and the release,
        which then act on the lease the manager really granted. The caller gets
        the lease as asked for, its epoch the group's as last seen by this client.
        """
        caller = caller_of(self.handle).id
        acquire = Acquire(group, lease_id, options, caller, started=True)
        grant = self._background.start(self._counted(acquire, group))
        keeper = asyncio.create_task(self._keep_alive(grant))
        try:
            yield Lease(
                id=lease_id,
                group=group,
                request_id=options.request_id or lease_id,
                priority=options.priority,
                epoch=info.epoch,
                ttl=info.lease_ttl,
            )
        finally:
            keeper.cancel()
            self._used.pop(lease_id, None)
            self._background.send(self._release_when_granted(grant))

    def report_usage(self, lease: Lease, used: TokensUsed) -> None:
        """The tokens the call holding ``lease`` used, sent with its release (a group where
        nobody waits has no budget to correct: they are dropped)."""
        self._used[lease.id] = used

    async def _keep_alive(self, grant: asyncio.Future[Lease]) -> None:
        try:
            # Shielded: cancelling the keeper at the end of the slot must not
            # cancel the grant that the release is still waiting for.
            lease = await asyncio.shield(grant)
        except Exception:
            return  # nothing is held; _release_when_granted reports the failure
        try:
            while True:
                await asyncio.sleep(lease.ttl / 3)
                if not await self._ask(Renew(lease.id, lease.epoch)):
                    log.warning(
                        "lease %s of group %r is no longer held (reclaimed, or the manager "
                        "restarted); the call goes on without a slot",
                        lease.id,
                        lease.group,
                    )
                    return
        except Exception:
            log.warning(
                "renewing lease %s failed; it expires after its ttl", lease.id, exc_info=True
            )

    async def _release_when_granted(self, grant: asyncio.Future[Lease]) -> None:
        lease = await grant
        await self._ask(Release(lease.id, lease.epoch))

    async def _counted(self, op: Acquire, group: str) -> Lease:
        """The lease of a started acquire, sent with its group's info: a group where calls
        now wait (after a 429) makes its next calls from here ask and wait."""
        answer, _ = await self._apply([op, GroupInfoOf(group)])
        if isinstance(answer, Exception):
            raise answer
        return cast(Lease, answer)

    async def drain(self) -> None:
        """Give back the lent slots kept idle here, and wait until every call this client
        sent without waiting has been answered."""
        self._lent.give_back()
        await self._background.drain()
        await self._courier.drain()
