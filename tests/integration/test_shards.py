"""Groups split between two manager shards, through real actors: each group decided by its
own shard, one merged view, and a shard killed alone losing nothing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest
import ray
from pydantic import SecretStr

from actors.client import ManagerClient
from actors.groups import ModelEntry, classify
from actors.names import NAMESPACE
from actors.ops import Stats
from actors.options import CallOptions
from actors.settings import QueueSettings, ServeSettings, Settings
from actors.shards import Routes, shard_name
from providers.testing.fake_llm import FakeLLMServer, OpenAIDialect
from tests.integration.conftest import active_is, manager_name, manager_of, pending_is, settled
from tests.support.polling import eventually
from tests.support.serve_app import ask, respond, serve_app

LIMIT = 2
SERVERS = [classify("ollama", f"http://localhost:{12000 + n}") for n in range(16)]
# One group on each of the two shards.
A, B = (next(s for s in SERVERS if Routes(2).of_group(s.id) == shard) for shard in (0, 1))


class Caller:
    """A process that runs calls of one group at a time each, counting how many ran at once."""

    def __init__(self, client: ManagerClient) -> None:
        self.client = client
        self.running: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()
        # Calls of every group at once: the most, and the groups that ran beside another.
        self.most_in_all = 0
        self.side_by_side: set[str] = set()
        # When each group's first call here started (wall clock, for other processes).
        self.started: dict[str, float] = {}
        self.released = asyncio.Event()

    async def run(self, group: str, calls: int, hold: float, priority: int = 5) -> int:
        async def one() -> None:
            async with self.client.slot(group, CallOptions(priority=priority)):
                self.started.setdefault(group, time.time())
                self.running[group] += 1
                self.most[group] = max(self.most[group], self.running[group])
                in_all = sum(self.running.values())
                self.most_in_all = max(self.most_in_all, in_all)
                if in_all > self.running[group]:
                    self.side_by_side.add(group)
                await asyncio.sleep(hold)
                self.running[group] -= 1
            self.finished[group] += 1

        await asyncio.gather(*(one() for _ in range(calls)))
        await self.client.drain()
        return self.finished[group]

    def done(self, group: str) -> int:
        return self.finished[group]

    def at_once(self) -> dict[str, int]:
        return dict(self.most)

    def in_all(self) -> tuple[int, set[str]]:
        return self.most_in_all, self.side_by_side

    def first_start(self, group: str) -> float:
        return self.started[group]

    async def hold(self, group: str) -> int:
        """One slot of ``group``, held until :meth:`let_go`."""
        async with self.client.slot(group):
            await self.released.wait()
        return 1

    def let_go(self) -> None:
        self.released.set()


CallerProcess = ray.remote(num_cpus=0)(Caller)
# Two shards under a global cap (its size, each group's limit), A and B registered.
Capped = Callable[[int, int], Awaitable[ManagerClient]]


@pytest.fixture
def sharded(ray_session: None) -> Iterator[ManagerClient]:
    """Two shards, each group capped at LIMIT."""
    queue = QueueSettings(shards=2, group_limits={A.id: LIMIT, B.id: LIMIT})
    with manager_of(Settings(queue=queue)) as client:
        yield client


async def test_each_group_is_decided_by_its_own_shard_and_the_stats_merge(
    sharded: ManagerClient,
) -> None:
    await sharded.register(A)
    await sharded.register(B)
    caller = CallerProcess.remote(sharded)  # the client travels, its routes with it

    done = await asyncio.gather(
        caller.run.remote(A.id, 20, 0.01), caller.run.remote(B.id, 20, 0.01)
    )

    assert done == [20, 20]
    assert await caller.at_once.remote() == {A.id: LIMIT, B.id: LIMIT}
    first, second = [await ManagerClient(h).stats() for h in sharded.handles]
    assert (set(first.groups), set(second.groups)) == ({A.id}, {B.id})
    merged = await settled(sharded)
    assert set(merged.groups) >= {A.id, B.id}
    assert merged.groups[A.id].granted + merged.groups[B.id].granted > 0


async def test_a_shard_killed_alone_loses_nothing_and_the_other_is_untouched(
    sharded: ManagerClient,
) -> None:
    await sharded.register(A)
    await sharded.register(B)
    before = [(await ManagerClient(h).stats()).epoch for h in sharded.handles]
    caller = CallerProcess.remote(sharded)
    runs = [caller.run.remote(A.id, 30, 0.05), caller.run.remote(B.id, 30, 0.05)]

    async def midway() -> bool:
        return await caller.done.remote(B.id) >= 5

    await eventually(midway, "the second shard's group a few calls in")
    ray.kill(sharded.handles[1], no_restart=False)

    assert await asyncio.gather(*runs) == [30, 30]
    assert await caller.at_once.remote() == {A.id: LIMIT, B.id: LIMIT}
    after = [(await ManagerClient(h).stats()).epoch for h in sharded.handles]
    assert after[0] == before[0]
    assert after[1] != before[1]
    first = await ManagerClient(sharded.handles[0]).stats()
    assert (first.stale_epoch_releases, first.groups[A.id].expired) == (0, 0)
    # The restarted shard held its leases again, and their holders gave them back.
    stats = await settled(sharded)
    assert (stats.groups[B.id].expired, stats.groups[B.id].abandoned) == (0, 0)


async def test_a_merged_view_waiting_for_a_change_wakes_at_any_shards(
    sharded: ManagerClient,
) -> None:
    await sharded.register(A)
    await sharded.register(B)
    view = await sharded.view()
    waiting = asyncio.ensure_future(sharded.view(after=view.version, wait=60.0))

    async with sharded.slot(B.id):
        changed = await asyncio.wait_for(waiting, 30.0)

    assert changed.version != view.version
    assert changed.stats.active_by_group[B.id] == 1
    assert set(changed.groups) >= {A.id, B.id}


def test_the_endpoint_over_two_shards_serves_both_and_shows_one_queue(ray_session: None) -> None:
    key = "sk-test-shards"
    with contextlib.ExitStack() as servers:
        first = servers.enter_context(FakeLLMServer(OpenAIDialect(), responder=respond))
        group = classify("openai-compatible", first.url + "/v1").id
        # Loopback servers until one's group falls on the other shard.
        while True:
            second = servers.enter_context(FakeLLMServer(OpenAIDialect(), responder=respond))
            other = classify("openai-compatible", second.url + "/v1").id
            if Routes(2).of_group(other) != Routes(2).of_group(group):
                break
        models = {
            name: ModelEntry(provider="openai-compatible", base_url=server.url + "/v1")
            for name, server in (("first", first), ("second", second))
        }
        settings = Settings(
            models=models,
            queue=QueueSettings(shards=2),
            serve=ServeSettings(api_keys=(SecretStr(key),)),
        )
        with serve_app(settings, key, model="first") as url:
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
                body = {"model": "second", "messages": ask("on the other shard")}
                answer = http.post("/v1/chat/completions", json=body).raise_for_status()
                queue = http.get("/v1/queue").raise_for_status().json()

            assert answer.json()["choices"][0]["message"]["content"] == "echo: on the other shard"
            assert {group, other} <= set(queue["groups"])
            for shard, own in enumerate(sorted((group, other), key=Routes(2).of_group)):
                handle = ray.get_actor(shard_name(shard), namespace=NAMESPACE)
                stats = ray.get(handle.apply.remote([Stats()]))[0]
                assert own in stats.groups
                assert ({group, other} - {own}).isdisjoint(stats.groups)


CAP = 3
# Each group's own limit under the cap: only calls of both shards at once reach it.
UNDER_CAP = 2


@pytest.fixture
def capped(ray_session: None) -> Iterator[Capped]:
    """Two shards under a global cap, A and B registered, each group's limit given; a ttl
    no test outlasts, so that a slot of the cap that leaked never comes back. Killed
    after."""
    made: list[ManagerClient] = []

    async def make(cap: int, limit: int) -> ManagerClient:
        limits = {A.id: limit, B.id: limit}
        queue = QueueSettings(shards=2, concurrency=cap, group_limits=limits, lease_ttl_seconds=600)
        client = ManagerClient.create(Settings(queue=queue), name=manager_name())
        made.append(client)
        await client.register(A)
        await client.register(B)
        return client

    yield make
    for client in made:
        client.kill()


async def capacity_back(client: ManagerClient) -> None:
    """Every slot of the cap lent to the second shard given back, none held anywhere."""

    async def back() -> bool:
        root = await ManagerClient(client.handles[0]).stats()
        return root.total_active == 0 and (await client.stats()).total_active == 0

    await client.drain()
    try:
        await eventually(back, "every slot of the global cap back at the first shard")
    except AssertionError as gave_up:
        # Which slots stayed, for the run that finds one.
        first, second = [await ManagerClient(h).stats() for h in client.handles]
        held = (first.active_by_group, second.active_by_group)
        raise AssertionError(f"{gave_up}; held by group at each shard: {held}") from None


async def test_a_global_cap_over_two_shards_holds_across_both(capped: Capped) -> None:
    client = await capped(CAP, UNDER_CAP)
    caller = CallerProcess.remote(client)

    done = await asyncio.gather(
        caller.run.remote(A.id, 30, 0.02), caller.run.remote(B.id, 30, 0.02)
    )

    assert done == [30, 30]
    # The cap was reached, which needs calls of both shards at once, and never passed (a
    # cap of each shard's own would have let both groups' limits run: 4).
    most, side_by_side = await caller.in_all.remote()
    assert most == CAP
    assert side_by_side
    await capacity_back(client)


async def test_a_waiter_at_one_shard_is_not_passed_over_by_the_others_next_call(
    capped: Capped,
) -> None:
    """The second shard holds the cap of 1; a priority-3 call waits there, then a
    priority-9 call at the first shard. The slot freed goes to the priority-9 call."""
    client = await capped(1, 10)
    holder, low, high = (CallerProcess.remote(client) for _ in range(3))
    await asyncio.gather(holder.done.remote(B.id), low.done.remote(B.id), high.done.remote(A.id))
    held = holder.hold.remote(B.id)
    await eventually(active_is(client, B.id, 1), "the second shard holding the cap")
    low_done = low.run.remote(B.id, 1, 0.2, 3)
    await eventually(pending_is(client, B.id, 1), "the priority-3 call waiting")
    high_done = high.run.remote(A.id, 1, 0.2, 9)
    await eventually(pending_is(client, A.id, 1), "the priority-9 call waiting")

    await holder.let_go.remote()

    assert await asyncio.gather(held, high_done, low_done) == [1, 1, 1]
    assert await high.first_start.remote(A.id) < await low.first_start.remote(B.id)
    await capacity_back(client)


@pytest.mark.parametrize("killed", [0, 1], ids=["the-first-lending", "the-second-holding"])
async def test_a_shard_killed_under_a_global_cap_loses_no_slot_of_it_and_keeps_it(
    capped: Capped, killed: int
) -> None:
    """The first shard killed restores the slots it lent; the second takes over those its
    last life held: either way every slot of the cap comes back without waiting for its
    ttl, and the cap holds throughout."""
    client = await capped(CAP, UNDER_CAP)
    caller = CallerProcess.remote(client)
    runs = [caller.run.remote(A.id, 30, 0.05), caller.run.remote(B.id, 30, 0.05)]

    async def midway() -> bool:
        return await caller.done.remote(B.id) >= 5

    await eventually(midway, "the second shard's group a few calls in")
    epoch = (await ManagerClient(client.handles[killed]).stats()).epoch
    ray.kill(client.handles[killed], no_restart=False)

    assert await asyncio.gather(*runs) == [30, 30]
    most, _ = await caller.in_all.remote()
    assert most <= CAP
    assert (await ManagerClient(client.handles[killed]).stats()).epoch != epoch
    await capacity_back(client)


async def test_the_running_manager_is_found_with_all_its_shards(ray_session: None) -> None:
    name = manager_name()
    made = ManagerClient.create(Settings(queue=QueueSettings(shards=2)), name=name)
    try:
        await made.register(B)  # a group of the second shard
        found = ManagerClient.running(name=name)

        assert found is not None
        assert len(found.handles) == 2
        assert B.id in (await found.stats()).groups
    finally:
        made.kill()
