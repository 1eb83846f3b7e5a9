"""A holder's process passing its slot straight to its own waiter next in line, on a real
Ray: the order the manager would have granted, one call at a time at the server, and
nothing left behind when that process is killed mid-chain."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import ray

from actors.client import ManagerClient
from actors.options import CallOptions
from providers.testing.probe_server import ProbeServer
from tests.integration.conftest import LOCAL_SERVER, ManagerFactory, pending_is, settled
from tests.support.polling import eventually

GROUP = LOCAL_SERVER.id


async def post_in_slot(client: ManagerClient, url: str, priority: int, tag: str) -> None:
    options = CallOptions(priority=priority, request_id=tag)
    async with client.slot(GROUP, options), httpx.AsyncClient() as http:
        (await http.post(url, json={"tag": tag})).raise_for_status()


@ray.remote(num_cpus=0)
class Poster:
    """Another caller process, with a client of its own."""

    def __init__(self, client: ManagerClient) -> None:
        self.client = client  # travelled here pickled, as its handle

    async def post(self, url: str, priority: int, tag: str) -> None:
        await post_in_slot(self.client, url, priority, tag)


def named_next_is(client: ManagerClient, tag: str | None) -> Any:
    async def check() -> bool:
        return client.named_next(GROUP) == tag

    return check


async def test_a_holders_process_passes_its_slot_on_in_the_order_the_manager_would_grant(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager(LOCAL_SERVER)
    priorities = [3, 9, 5, 9, 1, 7, 5, 2, 8, 5]
    tags = [f"w{i}" for i in range(len(priorities))]

    with ProbeServer(hold=0.05) as server:
        async with client.slot(GROUP, CallOptions(request_id="holder")):
            calls = []
            for tag, priority in zip(tags, priorities, strict=True):
                calls.append(asyncio.create_task(post_in_slot(client, server.url, priority, tag)))
                await eventually(pending_is(client, GROUP, len(calls)), f"{tag} queued")
            # The best waiter, w1 (priority 9, first of the two 9s), is this process's own.
            await eventually(named_next_is(client, "w1"), "w1 named next in line")
        await asyncio.gather(*calls)

    # By priority, then first come: the order a release to the manager gives.
    expected = [
        t for _, _, t in sorted(zip([-p for p in priorities], range(10), tags, strict=True))
    ]
    assert [body["tag"] for body in server.bodies] == expected
    assert server.max_in_flight == 1
    stats = await client.stats()
    group = stats.groups[GROUP]
    assert (group.active, group.pending, group.granted, group.released) == (0, 0, 11, 11)
    assert group.handed_over >= 1  # at least the holder's, whose successor was named above
    assert stats.overtaken == 0


async def test_a_slot_passed_back_and_forth_faster_than_the_manager_hears_of_it_stays_counted(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager(LOCAL_SERVER)
    rounds = 100

    async def ping_pong() -> None:
        # No work in the slot: each release is due before the hand-over that gave the
        # slot here can have reached the manager.
        for _ in range(rounds):
            async with client.slot(GROUP):
                pass

    await asyncio.wait_for(asyncio.gather(ping_pong(), ping_pong()), timeout=60)

    stats = await settled(client)
    group = stats.groups[GROUP]
    assert (group.active, group.pending, group.expired) == (0, 0, 0)
    assert group.granted == group.released == 2 * rounds
    assert stats.unknown_releases == 0


async def test_a_better_waiter_of_another_process_goes_before_the_holders_own(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager(LOCAL_SERVER)
    other = Poster.remote(client)

    with ProbeServer(hold=0.05) as server:
        async with client.slot(GROUP, CallOptions(request_id="holder")):
            mine = asyncio.create_task(post_in_slot(client, server.url, 5, "mine"))
            await eventually(named_next_is(client, "mine"), "mine named next in line")
            theirs = other.post.remote(server.url, 9, "theirs")
            # The manager takes the name back once the better waiter arrives.
            await eventually(named_next_is(client, None), "the name taken back")
        await asyncio.gather(mine, theirs)

    assert [body["tag"] for body in server.bodies] == ["theirs", "mine"]
    stats = await settled(client)
    assert (stats.total_active, stats.total_pending, stats.overtaken) == (0, 0, 0)
    ray.kill(other)


async def test_a_process_killed_mid_chain_leaves_no_slot_waiter_or_call_behind(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager(LOCAL_SERVER)
    poster = Poster.remote(client)

    # Each call holds 2 s, so the kill comes well inside the second call.
    with ProbeServer(hold=2.0) as server:
        calls = [poster.post.remote(server.url, 5, f"c{i}") for i in range(6)]

        async def passed_on() -> bool:
            return (await client.stats()).groups[GROUP].handed_over >= 1

        await eventually(passed_on, "a slot passed on inside the poster")
        ray.kill(poster)

        async def all_gone() -> bool:
            stats = await client.stats()
            return (stats.total_active, stats.total_pending) == (0, 0)

        await eventually(all_gone, "the killed poster's slot and waiters to end", timeout=30)
        # The first call may have answered before the kill; every other ended with it.
        ended = await asyncio.gather(*calls, return_exceptions=True)
        killed = [e for e in ended if isinstance(e, ray.exceptions.RayActorError)]
        assert len(killed) >= 5
        assert all(e is None or e in killed for e in ended)
        # The slot is free for others, and of the poster's calls none but the first and
        # the one it passed its slot to (whose request may or may not have left before
        # the kill) ever reached the server.
        async with client.slot(GROUP, CallOptions(queue_timeout=5)):
            pass
        assert 1 <= len(server.received) <= 2

    # Granted: the poster's first call, the one it passed on to, the test's own slot;
    # the rest of the poster's, one holding and four waiting, ended with it.
    group = (await settled(client)).groups[GROUP]
    assert (group.granted, group.handed_over, group.released) == (3, 1, 2)
    assert (group.abandoned, group.expired) == (5, 0)
