"""The manager by model id, as the queue raygate replaces had it: a slot taken as a ticket,
and given back by it.

    ticket = await client.acquire_slot("gpt-oss:20b", CallOptions(priority=8))
    try:
        ...                                   # the call, on ticket.group's server
    finally:
        await client.release_slot(ticket)

A ticket holds the same slot ``ManagerClient.slot`` holds for the body of an
``async with`` (the same wait, priority, lending and hand-over), kept open until
it is released: prefer ``slot`` where the call is one block. A ticket is the
client's that took it, in its process: released twice, or by another client (a
copy that travelled to another process, another client of the same manager), it
is refused with TicketNotHeld, and nothing is released. A process that dies
holding tickets gives their slots back through its lifeline, as any holder does.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from actors.errors import TicketNotHeld
from actors.leases import Lease


@dataclass(frozen=True, slots=True)
class Ticket:
    """A slot held for a call of ``model``: its request id, the group whose slot it is
    (for a pool, the server it went to), and its lease."""

    request_id: str
    model: str
    group: str
    lease: Lease


class Tickets:
    """The tickets one client holds, each with the slot's open context."""

    def __init__(self) -> None:
        self._held: dict[str, contextlib.AsyncExitStack] = {}

    async def take(self, model: str, slot: AbstractAsyncContextManager[Lease]) -> Ticket:
        """Wait for ``slot`` (as ``async with`` would) and hold it as a ticket."""
        held = contextlib.AsyncExitStack()
        lease = await held.enter_async_context(slot)
        self._held[lease.id] = held
        return Ticket(lease.request_id, model, lease.group, lease)

    async def give_back(self, ticket: Ticket) -> None:
        """Release the ticket's slot, once; TicketNotHeld if this client holds no such
        ticket (released already, or another's)."""
        held = self._held.pop(ticket.lease.id, None)
        if held is None:
            raise TicketNotHeld(ticket.request_id, ticket.model)
        await held.aclose()
