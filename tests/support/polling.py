"""Waiting for a state a test cannot be told about (N acquires arrived, a process
printed something, a cluster came up): the one polling helper of the suite."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def eventually(
    condition: Callable[[], object | Awaitable[object]],
    what: str,
    timeout: float = 60.0,
    *,
    interval: float = 0.02,
    errors: tuple[type[Exception], ...] = (),
) -> None:
    """Return once ``condition()`` (a plain or async function) is true; fail naming
    ``what`` after ``timeout`` seconds. ``errors``: exceptions that mean "not yet" (a
    cluster still coming up); the last one is shown if it never comes true.

    From a test that is not async: ``asyncio.run(eventually(...))``.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
        except errors as error:
            last = error
        if time.monotonic() > deadline:
            also = f"; last error: {last!r}" if last is not None else ""
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what}{also}")
        await asyncio.sleep(interval)
