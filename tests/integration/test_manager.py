"""The ConcurrencyManager actor on a real local Ray, with real HTTP on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import httpx
import pytest
import ray
from ray import ObjectRef

from actors.client import ManagerClient
from actors.errors import (
    AcquireTimeout,
    InvalidPriority,
    QueueFull,
    TicketNotHeld,
    UnknownGroup,
    UnknownModel,
)
from actors.groups import ModelEntry
from actors.leases import TokensUsed
from actors.lending import Recall
from actors.mailbox import Queued
from actors.manager import get_or_create_manager
from actors.names import NAMESPACE
from actors.ops import Acquire, Cancel, Release, Stats
from actors.options import CallOptions
from actors.settings import QueueSettings, Settings
from actors.watch import caller_of
from benchmarks.recovery import HOLDING_DRIVER
from providers.testing.probe_server import ProbeServer
from tests.integration.conftest import (
    LOCAL_SERVER,
    REMOTE_API,
    ManagerFactory,
    active_is,
    manager_name,
    manager_of,
    pending_is,
    settled,
)
from tests.support.polling import eventually


class Calls:
    """A caller on its own worker process, as a provider actor will be."""

    def __init__(self, manager: Any) -> None:
        self.client = ManagerClient(manager)

    async def post_in_slot(
        self,
        group: str,
        priority: int,
        url: str,
        tag: int = 0,
        flow: str | None = None,
        used: TokensUsed | None = None,
    ) -> int:
        """Post ``tag`` to ``url`` holding a slot; ``used``: the tokens the call reports."""
        async with (
            self.client.slot(group, CallOptions(priority=priority, flow=flow)) as lease,
            httpx.AsyncClient() as http,
        ):
            response = await http.post(url, json={"priority": priority, "tag": tag})
            response.raise_for_status()
            if used is not None:
                self.client.report_usage(lease, used)
        return priority

    async def hold_forever(self, group: str) -> None:
        async with self.client.slot(group):
            await asyncio.Event().wait()


Caller = ray.remote(num_cpus=0)(Calls)


# A process that sends its acquires by hand; nobody watches it.
WAITER = "a-waiting-process"


def waiting_acquire(lease_id: str, caller: str = WAITER) -> Acquire:
    """An acquire of the local server that waits, if it must, with its grant mailed to
    ``caller``."""
    return Acquire(LOCAL_SERVER.id, lease_id, CallOptions(request_id=lease_id), caller)


async def test_cap_one_server_sees_one_call_at_a_time_in_priority_order(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager(LOCAL_SERVER)
    callers = [Caller.remote(client.handle) for _ in range(4)]
    priorities = [1 + (i * 7) % 10 for i in range(200)]

    with ProbeServer(hold=0.002) as server:
        async with client.slot(LOCAL_SERVER.id):
            calls = [
                callers[i % 4].post_in_slot.remote(LOCAL_SERVER.id, p, server.url)
                for i, p in enumerate(priorities)
            ]
            # Every caller must be queued before the slot frees, or an early
            # low-priority arrival would rightly run before a later high one.
            await eventually(pending_is(client, LOCAL_SERVER.id, 200), "200 queued callers")
        assert sorted(await asyncio.gather(*calls)) == sorted(priorities)

    assert server.max_in_flight == 1
    assert [body["priority"] for body in server.bodies] == sorted(priorities, reverse=True)
    # The last call's slot, granted with nobody waiting, is lent: back after its linger.
    stats = await settled(client)
    assert stats.groups[LOCAL_SERVER.id].granted == 201


async def test_release_and_stats_answer_while_5000_acquires_wait(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager(LOCAL_SERVER)
    handle = client.handle
    [holder] = await handle.apply.remote([waiting_acquire("holder")])
    # 5,000 callers' acquires, in batches of 500 as a process would send them: one after
    # the other (Ray keeps no order between calls in flight at once).
    waiting = [f"w{i}" for i in range(5000)]
    queued = []
    for i in range(0, 5000, 500):
        batch = [waiting_acquire(lease_id) for lease_id in waiting[i : i + 500]]
        queued.extend(await handle.apply.remote(batch))
    assert {type(answer) for answer in queued} == {Queued}
    # The holder's slot, lent while nobody waited, is called back from its process.
    [(read, _, recall)] = (await handle.collect.remote(WAITER, holder.epoch, -1)).items
    assert recall == Recall(LOCAL_SERVER.id, holder.epoch, 1)
    # The one process's call waiting for its grants.
    delivery = handle.collect.remote(WAITER, holder.epoch, read)

    # These would hang if control calls shared the default group with the waiting call.
    stats = await asyncio.wait_for(client.stats(), timeout=30)
    assert stats.total_pending == 5000
    await asyncio.wait_for(handle.apply.remote([Release(holder.id, holder.epoch)]), timeout=30)

    [(_, granted, lease)] = (await asyncio.wait_for(delivery, timeout=30)).items
    assert granted == lease.id == "w0"  # the first to arrive
    stats = await asyncio.wait_for(client.stats(), timeout=30)
    assert (stats.total_active, stats.total_pending) == (1, 4999)
    await handle.apply.remote([Cancel(lease_id) for lease_id in waiting])


@pytest.mark.slow
async def test_a_live_holder_keeps_its_slot_while_5000_acquires_arrive_past_its_ttl(
    make_manager: ManagerFactory,
) -> None:
    """A burst can hold a holder's renewals in the manager's mailbox past its ttl (on a
    slow enough machine); here they never come at all, the limit of that case. Its lease
    must not expire all the same: Ray would report its death."""
    client = make_manager(LOCAL_SERVER, lease_ttl_seconds=6.0)
    handle = client.handle
    [holder] = await handle.apply.remote([waiting_acquire("holder", caller_of(handle).id)])
    granted_at = time.monotonic()
    waiting = [f"w{i}" for i in range(5000)]
    await asyncio.gather(
        *(handle.apply.remote([waiting_acquire(lease_id)]) for lease_id in waiting)
    )
    await eventually(pending_is(client, LOCAL_SERVER.id, 5000), "5,000 queued acquires")
    # Held for 15 s, two and a half ttls, as a long call holds its slot.
    await asyncio.sleep(15 - (time.monotonic() - granted_at))
    nothing = await handle.collect.remote(WAITER, holder.epoch, -1, wait=0)
    group = (await client.stats()).groups[LOCAL_SERVER.id]
    assert (nothing.items, group.granted, group.active, group.expired) == ((), 1, 1, 0)

    await handle.apply.remote([Release(holder.id, holder.epoch)])
    delivery = await handle.collect.remote(WAITER, holder.epoch, -1, wait=60)
    assert len(delivery.items) == 1
    group = (await client.stats()).groups[LOCAL_SERVER.id]
    assert (group.granted, group.expired, group.active) == (2, 0, 1)
    await handle.apply.remote([Cancel(lease_id) for lease_id in waiting])


async def test_slot_of_a_holder_nobody_watches_comes_back_after_the_ttl(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager(LOCAL_SERVER, lease_ttl_seconds=1.0)
    # Asked by a process the manager does not watch, whose death Ray cannot report; never
    # renewed.
    await client.handle.apply.remote([waiting_acquire("orphan")])

    async with client.slot(LOCAL_SERVER.id, CallOptions(queue_timeout=30)) as lease:
        assert lease.group == LOCAL_SERVER.id

    stats = await settled(client)
    assert stats.groups[LOCAL_SERVER.id].expired == 1


async def test_a_live_holder_keeps_its_slot_past_its_ttl_and_frees_it_when_killed(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager(LOCAL_SERVER, lease_ttl_seconds=1.0)
    holder = Caller.remote(client.handle)
    holder.hold_forever.remote(LOCAL_SERVER.id)

    async def renewed_past_ttl() -> bool:
        # Three renewals at ttl/3 each: the lease has outlived its first deadline.
        return (await client.stats()).renewed >= 3

    await eventually(renewed_past_ttl, "the holder to renew its lease past one ttl")
    stats = await client.stats()
    assert (stats.active_by_group[LOCAL_SERVER.id], stats.groups[LOCAL_SERVER.id].expired) == (1, 0)

    ray.kill(holder)
    async with client.slot(LOCAL_SERVER.id, CallOptions(queue_timeout=30)) as lease:
        assert lease.group == LOCAL_SERVER.id

    group = (await settled(client)).groups[LOCAL_SERVER.id]
    assert (group.abandoned, group.expired, group.active) == (1, 0, 0)


async def queued_through_a_restart(
    client: ManagerClient, asks: list[Callable[[], ObjectRef[int]]]
) -> list[ObjectRef[int]]:
    """Make each call of ``asks`` in turn, once the one before waits in ``client``'s
    manager (all in ``LOCAL_SERVER``'s group, whose slot is held), then kill the manager
    and return once the restarted one has them all waiting again."""
    epoch = (await client.stats()).epoch
    calls = []
    for n, ask in enumerate(asks):
        calls.append(ask())
        await eventually(pending_is(client, LOCAL_SERVER.id, n + 1), f"call {n} queued")
    client.kill(restart=True)

    async def back() -> bool:
        stats = await client.stats()
        return stats.epoch != epoch and stats.total_pending == len(asks)

    await eventually(back, f"the restarted manager to queue all {len(asks)} again")
    return calls


async def test_a_killed_manager_restarts_without_losing_a_call_or_breaking_the_limit(
    make_manager: ManagerFactory,
) -> None:
    # The group is registered at run time, not in the manager's settings.
    client = make_manager(LOCAL_SERVER)
    callers = [Caller.remote(client.handle) for _ in range(4)]
    epoch = (await client.stats()).epoch

    priorities = [3 if i % 2 else 7 for i in range(20)]
    with ProbeServer(hold=0.05) as server:
        async with client.slot(LOCAL_SERVER.id):
            calls = await queued_through_a_restart(
                client,
                [  # asked in this order
                    partial(callers[i % 4].post_in_slot.remote, LOCAL_SERVER.id, p, server.url, i)
                    for i, p in enumerate(priorities)
                ],
            )
            # This slot, granted by the old manager, still holds the new one's only slot.
            assert (await client.stats()).active_by_group[LOCAL_SERVER.id] == 1
            assert server.received == []
        done = await asyncio.gather(*calls)

    assert done == priorities
    assert len(server.received) == 20
    assert server.max_in_flight == 1
    # Queued again after the restart, in Ray's order of retries, every waiter kept
    # its priority and, within it, the order in which it asked.
    served = [(body["priority"], body["tag"]) for body in server.bodies]
    assert served == sorted(zip(priorities, range(20), strict=True), key=lambda p: (-p[0], p[1]))
    stats = await settled(client)
    assert stats.epoch != epoch


async def test_a_restarted_manager_keeps_each_flows_waiters_in_order_and_shares_between_flows(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager(LOCAL_SERVER)
    callers = [Caller.remote(client.handle) for _ in range(2)]
    # Flow a's six calls all ask before flow b's six, at one priority. Each reports the
    # same tokens, so each costs its flow the same share whatever its time in the slot
    # (which a busy machine stretches unevenly).
    flows = ["tenant:a"] * 6 + ["tenant:b"] * 6
    used = TokensUsed(input=100, output=50)
    with ProbeServer(hold=0.05) as server:
        async with client.slot(LOCAL_SERVER.id):
            calls = await queued_through_a_restart(
                client,
                [
                    partial(
                        callers[t % 2].post_in_slot.remote,
                        LOCAL_SERVER.id,
                        5,
                        server.url,
                        t,
                        flow,
                        used,
                    )
                    for t, flow in enumerate(flows)
                ],
            )
        await asyncio.gather(*calls)

    served = [body["tag"] for body in server.bodies]
    assert sorted(served) == list(range(12))
    # Within each flow, the order in which its calls asked.
    assert [t for t in served if t < 6] == list(range(6))
    assert [t for t in served if t >= 6] == list(range(6, 12))
    # Between the flows, turns: b's calls do not wait behind all of a's (first come first
    # served would serve six of a's before any of b's).
    imbalance = max(
        abs(sum(t < 6 for t in served[:n]) - sum(t >= 6 for t in served[:n])) for n in range(13)
    )
    assert imbalance <= 2, served
    assert server.max_in_flight == 1


async def test_a_killed_callers_slot_and_waits_end_at_once_not_after_the_ttl(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager(LOCAL_SERVER)  # lease ttl 60 s
    holder, waiter = Caller.remote(client.handle), Caller.remote(client.handle)
    holder.hold_forever.remote(LOCAL_SERVER.id)
    await eventually(active_is(client, LOCAL_SERVER.id, 1), "the holder's grant")
    for _ in range(3):
        waiter.hold_forever.remote(LOCAL_SERVER.id)
    await eventually(pending_is(client, LOCAL_SERVER.id, 3), "the waiter's three acquires")

    async with asyncio.timeout(20):  # a third of the ttl: only the caller's death can free it
        mine = asyncio.create_task(wait_for_grant(client))
        await eventually(pending_is(client, LOCAL_SERVER.id, 4), "this test's acquire")
        ray.kill(waiter)
        await eventually(pending_is(client, LOCAL_SERVER.id, 1), "the dead waiter's acquires")
        ray.kill(holder)
        await mine

    stats = (await settled(client)).groups[LOCAL_SERVER.id]
    assert (stats.abandoned, stats.expired, stats.active, stats.pending) == (4, 0, 0, 0)


async def test_a_holder_that_dies_with_the_manager_frees_its_restored_slot_within_seconds(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager(LOCAL_SERVER)  # lease ttl 60 s
    holder = Caller.remote(client.handle)
    holder.hold_forever.remote(LOCAL_SERVER.id)
    await eventually(active_is(client, LOCAL_SERVER.id, 1), "the holder's grant")
    epoch = (await client.stats()).epoch

    # The holder dies while the manager is down (a manager that heard of the death
    # first would have written the slot free); Ray retries no call of the dead
    # holder's, so nothing tells the new manager but itself. The manager's process is
    # gone when os.kill returns (ray.kill would race the holder's death): a crash, which
    # Ray restarts it from.
    manager_pid = await client.handle.__ray_call__.remote(lambda _: os.getpid())
    os.kill(manager_pid, signal.SIGKILL)
    ray.kill(holder)

    async with asyncio.timeout(20):  # a third of the ttl
        await wait_for_grant(client)
    stats = await settled(client)
    assert stats.epoch != epoch
    group = stats.groups[LOCAL_SERVER.id]
    assert (group.abandoned, group.expired, group.active) == (1, 0, 0)


async def test_a_killed_drivers_slot_and_waits_end_within_seconds(ray_session: None) -> None:
    name = manager_name()
    handle = get_or_create_manager(Settings(), name=name)  # lease ttl 60 s
    client = ManagerClient(handle)
    await client.register(LOCAL_SERVER)
    address = ray.get_runtime_context().gcs_address
    driver = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDING_DRIVER, address, name, LOCAL_SERVER.id,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await eventually(active_is(client, LOCAL_SERVER.id, 1), "the driver's grant")
        await eventually(pending_is(client, LOCAL_SERVER.id, 2), "the driver's two waits")
        driver.kill()
        await driver.wait()
        # A third of the ttl: only the driver's death can free them.
        await eventually(pending_is(client, LOCAL_SERVER.id, 0), "the dead driver's waits", 20)
        await eventually(active_is(client, LOCAL_SERVER.id, 0), "the dead driver's slot", 20)
        stats = (await client.stats()).groups[LOCAL_SERVER.id]
        assert (stats.abandoned, stats.expired) == (3, 0)
    finally:
        if driver.returncode is None:
            driver.kill()
            await driver.wait()
        ray.kill(handle)


async def wait_for_grant(client: ManagerClient) -> None:
    async with client.slot(LOCAL_SERVER.id):
        pass


async def test_cancelled_waiter_leaves_the_managers_queue(make_manager: ManagerFactory) -> None:
    client = make_manager(LOCAL_SERVER)

    async def wait_for_slot() -> None:
        async with client.slot(LOCAL_SERVER.id):
            pass

    async with client.slot(LOCAL_SERVER.id):
        waiter = asyncio.create_task(wait_for_slot())
        await eventually(pending_is(client, LOCAL_SERVER.id, 1), "the waiter to queue")
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await client.drain()
        stats = await client.stats()
        assert (stats.total_pending, stats.groups[LOCAL_SERVER.id].cancelled) == (0, 1)

    await settled(client)


async def test_waiters_cancelled_while_their_batch_is_in_flight_leave_nothing_behind(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager(LOCAL_SERVER)

    async with client.slot(LOCAL_SERVER.id) as holder:
        waiters = [asyncio.create_task(wait_for_grant(client)) for _ in range(20)]
        await asyncio.sleep(0)  # the waiters' acquires leave in one batch
        await asyncio.sleep(0)
        for waiter in waiters:
            waiter.cancel()
        ended = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(end, asyncio.CancelledError) for end in ended)
    stats = await settled(client)
    assert stats.groups[LOCAL_SERVER.id].cancelled == 20
    # The slot is free for the next caller at once: no cancelled waiter kept it.
    async with client.slot(LOCAL_SERVER.id, CallOptions(queue_timeout=5)) as lease:
        assert lease.id != holder.id


class MailLost:
    """A manager's handle whose mail never arrives: every other call goes to ``manager``,
    and each collect fails as a call the transport lost would."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager

    async def apply(self, ops: list[Any]) -> list[object]:
        answers: list[object] = await self.manager.apply.remote(ops)
        return answers

    async def collect(self, *args: Any) -> None:
        raise ConnectionError("the mail was lost on its way")

    async def next_in_line(self, *args: Any) -> dict[str, str]:
        known: dict[str, str] = await self.manager.next_in_line.remote(*args)
        return known

    async def lifeline(self, caller_id: str) -> None:
        await self.manager.lifeline.remote(caller_id)

    async def watch(self, caller: Any, lifeline: list[ObjectRef[None]]) -> None:
        await self.manager.watch.remote(caller, lifeline)


async def test_a_waiter_whose_grant_cannot_arrive_leaves_the_queue_not_a_slot_held(
    make_manager: ManagerFactory,
) -> None:
    """A waiter's grant comes by mail; when the mail fails, the waiter ends with that
    error and the manager drops it, or it would later grant the slot to nobody."""
    client = make_manager(LOCAL_SERVER)
    lossy = ManagerClient(ray.remote(num_cpus=0)(MailLost).remote(client.handles[0]))

    async with client.slot(LOCAL_SERVER.id):
        with pytest.raises(ConnectionError, match="mail was lost"):
            await wait_for_grant(lossy)
        await lossy.drain()

    stats = await settled(client)
    assert stats.groups[LOCAL_SERVER.id].cancelled == 1


async def test_unlimited_group_calls_are_counted_without_waiting(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager(REMOTE_API)

    async with client.slot(REMOTE_API.id), client.slot(REMOTE_API.id):
        await client.drain()
        assert (await client.stats()).active_by_group[REMOTE_API.id] == 2
    await client.drain()

    group = (await client.stats()).groups[REMOTE_API.id]
    assert (group.active, group.granted, group.released) == (0, 2, 2)


async def test_unlimited_slots_left_before_their_grant_arrives_are_still_released(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager(REMOTE_API)

    for _ in range(20):
        async with client.slot(REMOTE_API.id):
            # One turn of the loop: the renewal task starts waiting for the
            # grant, and the body ends before the manager has answered.
            await asyncio.sleep(0)
    await client.drain()

    stats = await client.stats()
    group = stats.groups[REMOTE_API.id]
    assert (group.active, group.granted, group.released) == (0, 20, 20)
    assert (stats.unknown_releases, stats.late_acquires) == (0, 0)


async def test_global_cap_makes_an_unlimited_group_wait(make_manager: ManagerFactory) -> None:
    client = make_manager(REMOTE_API, concurrency=1)

    async with client.slot(REMOTE_API.id):
        with pytest.raises(AcquireTimeout) as caught:
            async with client.slot(
                REMOTE_API.id, CallOptions(request_id="second", queue_timeout=0.2)
            ):
                pass

    assert caught.value.request_id == "second"
    assert (await client.stats()).groups[REMOTE_API.id].timed_out == 1


async def test_full_queue_refuses_through_the_actor(make_manager: ManagerFactory) -> None:
    client = make_manager(LOCAL_SERVER, max_pending_per_group=1)
    handle = client.handle

    async with client.slot(LOCAL_SERVER.id):
        [queued] = await handle.apply.remote([waiting_acquire("queued")])
        assert isinstance(queued, Queued)
        with pytest.raises(QueueFull) as caught:
            async with client.slot(LOCAL_SERVER.id):
                pass
        await handle.apply.remote([Cancel("queued")])

    assert (caught.value.pending, caught.value.max_pending) == (1, 1)


async def test_bad_requests_get_typed_errors_through_the_actor(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager(LOCAL_SERVER)

    with pytest.raises(UnknownGroup, match="unknown concurrency group 'no-such-group'"):
        async with client.slot("no-such-group"):
            pass
    with pytest.raises(InvalidPriority):
        async with client.slot(LOCAL_SERVER.id, CallOptions(priority=11)):
            pass
    with pytest.raises(UnknownModel, match="unknown model 'gpt-5'"):
        await client.can_run_immediately("gpt-5")


# A model of the local server's group.
MODELS = {"gpt-oss:20b": ModelEntry(provider="ollama")}


class TicketHolder:
    """A process that takes a slot of a model as a ticket, and keeps it."""

    def __init__(self, client: ManagerClient) -> None:
        self.client = client

    async def take(self, model: str) -> str:
        self.ticket = await self.client.acquire_slot(model)
        return self.ticket.request_id


@pytest.fixture
def by_model(ray_session: None) -> Iterator[ManagerClient]:
    with manager_of(Settings(models=MODELS)) as client:
        yield client


async def test_a_model_is_asked_for_by_id_and_its_slot_held_as_a_ticket_given_back_once(
    by_model: ManagerClient,
) -> None:
    assert await by_model.can_run_immediately("gpt-oss:20b")

    ticket = await by_model.acquire_slot("gpt-oss:20b", CallOptions(request_id="req-1"))

    assert (ticket.request_id, ticket.group) == ("req-1", LOCAL_SERVER.id)
    assert not await by_model.can_run_immediately("gpt-oss:20b")
    outlook = await by_model.outlook("gpt-oss:20b", CallOptions(priority=7))
    assert (outlook.runs_now, outlook.free, outlook.priority) == (False, 0, 7)
    # Another client of the same manager holds no such ticket: nothing is released.
    stranger = ManagerClient(*by_model.handles, routes=by_model.routes)
    with pytest.raises(TicketNotHeld, match="not held by this client"):
        await stranger.release_slot(ticket)
    assert (await by_model.stats()).active_by_group == {LOCAL_SERVER.id: 1}
    await by_model.release_slot(ticket)
    with pytest.raises(TicketNotHeld, match="released already"):
        await by_model.release_slot(ticket)
    assert (await settled(by_model)).groups[LOCAL_SERVER.id].granted == 1


async def test_a_process_killed_holding_a_ticket_gives_its_slot_back(
    by_model: ManagerClient,
) -> None:
    holder = ray.remote(num_cpus=0)(TicketHolder).remote(by_model)
    await holder.take.remote("gpt-oss:20b")
    assert not await by_model.can_run_immediately("gpt-oss:20b")

    ray.kill(holder)

    stats = await settled(by_model)
    assert stats.groups[LOCAL_SERVER.id].abandoned == 1


DRIVER = """
import sys, ray
from actors.manager import get_or_create_manager
from actors.ops import Stats
from actors.settings import Settings
ray.init(address=sys.argv[1], namespace=sys.argv[2])
handle = get_or_create_manager(Settings(), name=sys.argv[3])
print(ray.get(handle.apply.remote([Stats()]))[0].epoch)
"""


def test_get_if_exists_from_two_drivers_gives_the_same_manager(ray_session: None) -> None:
    name = manager_name()
    address = ray.get_runtime_context().gcs_address
    handle = get_or_create_manager(Settings(queue=QueueSettings()), name=name)
    try:
        epoch = ray.get(handle.apply.remote([Stats()]))[0].epoch
        for _ in range(2):
            out = subprocess.run(
                [sys.executable, "-c", DRIVER, address, NAMESPACE, name],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            assert int(out.stdout.split()[-1]) == epoch
    finally:
        ray.kill(handle)


async def test_stats_command_prints_the_running_clusters_queue(ray_session: None) -> None:
    handle = get_or_create_manager(Settings())  # the real singleton name
    client = ManagerClient(handle)
    await client.register(LOCAL_SERVER)

    async with client.slot(LOCAL_SERVER.id):
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "pipelines", "stats", "--address",
             ray.get_runtime_context().gcs_address],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip

    header, row, total, flows_of, flows_header, flow = out.stdout.strip().splitlines()
    assert header.split()[:3] == ["group", "kind", "limit"]
    assert row.split() == [
        LOCAL_SERVER.id,
        "local-server",
        "1",
        "1",
        "1",
        "0",
        "0.00s",
        "0.00s",
        "-",
    ]
    assert total == "total active 1, pending 0; global cap none"
    # The slot is this driver's: its Ray job's flow runs one call and has waited none.
    assert flows_of == f"flows of {LOCAL_SERVER.id}"
    assert flows_header.split() == ["flow", "waiting", "running", "held", "service", "share"]
    job = f"job:{ray.get_runtime_context().get_job_id()}"
    assert flow.split()[:3] == [job, "0", "1"]
