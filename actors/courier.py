"""A process's operations to the manager, many in one call, one call in flight at a time.

Every operation a client sends the manager (acquires, releases, hand-overs,
renewals, cancels, queries) goes by its courier. While one call to the manager
is in flight, the operations that come meanwhile gather, and go together in
the next call when it returns; a lone operation goes at once (no timer on an
idle path). The manager applies a batch in order under one lock and answers
each operation (see :meth:`actors.gate.SlotGate.apply`), so every decision
stays the manager's and the order stays exact; what falls is the number of
manager calls, to one per round trip however many calls a process runs at
once. An async actor takes a few thousand calls a second, one item each, and
a hundred thousand items a second in batches.

One call at a time also keeps a client's operations in the order it sent them
(Ray keeps no order between concurrent calls of one caller): a release never
overtakes its acquire, nor a cancel its acquire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from actors.ops import Op

# Sends operations to the manager in one call; answers each, in order, with its answer
# or its error.
Send = Callable[[list[Op[object]]], Awaitable[list[object]]]


class Courier:
    """Sends operations with :data:`Send`, one call in flight at a time (see the module)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._line: _Line | None = None

    def send(self, ops: Sequence[Op[object]]) -> list[asyncio.Future[object]]:
        """Each operation's answer, to come: its handler's answer, or the error it raised
        (as a value, not raised), or the error of the call that carried it."""
        loop = asyncio.get_running_loop()
        line = self._line
        if line is None or line.loop is not loop:
            # A client used from a new event loop (a driver's next asyncio.run): what
            # waited on the old one waits for nobody now.
            line = self._line = _Line(loop)
        answers = [loop.create_future() for _ in ops]
        line.ops.extend(ops)
        line.answers.extend(answers)
        if line.sending is None:
            # Runs at the loop's next turn: what else is sent in this one goes with it.
            line.sending = loop.create_task(self._send_all(line))
        return answers

    async def drain(self) -> None:
        """Wait until everything sent so far from this event loop has been answered."""
        line = self._line
        while line is not None and line.loop is asyncio.get_running_loop() and line.sending:
            await asyncio.shield(line.sending)

    async def _send_all(self, line: _Line) -> None:
        try:
            while line.ops:
                ops, answers = line.ops, line.answers
                line.ops, line.answers = [], []
                try:
                    results = await self._send(ops)
                except Exception as error:
                    results = [error] * len(ops)
                for answer, result in zip(answers, results, strict=True):
                    if not answer.done():
                        answer.set_result(result)
        finally:
            line.sending = None


@dataclass(slots=True)
class _Line:
    """The operations of one event loop waiting for the next call, each with the future
    of its answer, and the task sending them."""

    loop: asyncio.AbstractEventLoop
    ops: list[Op[object]] = field(default_factory=list)
    answers: list[asyncio.Future[object]] = field(default_factory=list)
    sending: asyncio.Task[None] | None = None
