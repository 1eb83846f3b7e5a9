"""Stage chains: run stages over a sequence of items as early as their inputs allow.

A stage is an async function of the item and its upstream results. Stage k
of item i needs stage k-1 of item i (``inputs``); a *chained* stage also
needs its own result for item i-1 (``previous``). Everything else may overlap:

    features(1) -> features(2) -> features(3)        chained
        |              |              |
    mappings(1)    mappings(2)    mappings(3)

so features(2) starts as soon as features(1) is done, while mappings(1) runs.
Each stage call is a task awaiting its inputs' tasks; the LLM calls inside
are actor calls, so the manager keeps every limit whatever overlaps here.
With ``sequential=True`` the same chain runs one stage call at a time, in
item order (parity mode).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
T = TypeVar("T")


async def together(*calls: Coroutine[Any, Any, Any], sequential: bool = False) -> list[Any]:
    """Run calls at once, or one after another (parity mode); same results either way."""
    if sequential:
        return [await call for call in calls]
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(call) for call in calls]
    return [task.result() for task in tasks]


def result_as(value: object, kind: type[T]) -> T:
    """A stage's result as the type its stage returns (stages of one chain differ)."""
    if not isinstance(value, kind):
        raise TypeError(f"a stage's result is a {type(value).__name__}, not a {kind.__name__}")
    return value


@dataclass(frozen=True)
class Upstream:
    # This stage's result for the previous item (chained stages; None for the first).
    previous: object
    # The previous stage's result for this item (None for the first stage).
    inputs: object

    def previous_as(self, kind: type[T]) -> T | None:
        return None if self.previous is None else result_as(self.previous, kind)

    def inputs_as(self, kind: type[T]) -> T:
        return result_as(self.inputs, kind)


StageFn = Callable[[Any, Upstream], Awaitable[object]]


@dataclass(frozen=True)
class Stage:
    name: str
    fn: StageFn
    chained: bool = False


@dataclass(frozen=True)
class Span:
    """When one stage call ran, on the chain's clock."""

    stage: str
    item: int
    started: float
    ended: float


class StageChain(Generic[Item]):
    def __init__(self, *stages: Stage, clock: Callable[[], float] = time.monotonic) -> None:
        if not stages:
            raise ValueError("a chain needs at least one stage")
        self.stages = stages
        self._clock = clock
        self.spans: list[Span] = []

    async def run(
        self, items: Sequence[Item], *, sequential: bool = False
    ) -> list[dict[str, object]]:
        """Every stage's result for every item: ``results[i][stage.name]``."""
        if sequential:
            return await self._run_in_order(items)
        tasks: dict[tuple[int, int], asyncio.Task[object]] = {}
        async with asyncio.TaskGroup() as group:
            for i, item in enumerate(items):
                for k, stage in enumerate(self.stages):
                    inputs = tasks.get((k - 1, i))
                    previous = tasks.get((k, i - 1)) if stage.chained else None
                    tasks[(k, i)] = group.create_task(
                        self._when_ready(stage, i, item, previous, inputs),
                        name=f"{stage.name}[{i}]",
                    )
        return [
            {stage.name: tasks[(k, i)].result() for k, stage in enumerate(self.stages)}
            for i in range(len(items))
        ]

    async def _when_ready(
        self,
        stage: Stage,
        index: int,
        item: Item,
        previous: asyncio.Task[object] | None,
        inputs: asyncio.Task[object] | None,
    ) -> object:
        upstream = Upstream(
            previous=await previous if previous is not None else None,
            inputs=await inputs if inputs is not None else None,
        )
        return await self._call(stage, index, item, upstream)

    async def _run_in_order(self, items: Sequence[Item]) -> list[dict[str, object]]:
        results: list[dict[str, object]] = []
        for i, item in enumerate(items):
            row: dict[str, object] = {}
            for k, stage in enumerate(self.stages):
                upstream = Upstream(
                    previous=results[i - 1][stage.name] if stage.chained and i > 0 else None,
                    inputs=row[self.stages[k - 1].name] if k > 0 else None,
                )
                row[stage.name] = await self._call(stage, i, item, upstream)
            results.append(row)
        return results

    async def _call(self, stage: Stage, index: int, item: Item, upstream: Upstream) -> object:
        started = self._clock()
        result = await stage.fn(item, upstream)
        self.spans.append(Span(stage.name, index, started, self._clock()))
        return result
