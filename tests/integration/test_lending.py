"""Slots lent to a busy process, through real actors: kept there between its calls, called
back for a waiter elsewhere, and never lost when the process or the manager dies."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from actors.client import ManagerClient
from actors.options import CallOptions
from tests.integration.conftest import LOCAL_SERVER, ManagerFactory, active_is, settled
from tests.support.polling import eventually

LIMIT = 4


class Busy:
    """A process that runs calls of the local server's group, ``LIMIT`` at a time, until
    stopped: it keeps the group's slots lent between them."""

    def __init__(self, manager: Any) -> None:
        self.client = ManagerClient(manager)
        self.stopped = asyncio.Event()
        self.calls = 0

    async def run(self) -> int:
        async def loop() -> None:
            while not self.stopped.is_set():
                async with self.client.slot(LOCAL_SERVER.id, CallOptions(priority=3)):
                    await asyncio.sleep(0.01)
                self.calls += 1

        await asyncio.gather(*(loop() for _ in range(LIMIT)))
        await self.client.drain()
        return self.calls

    async def spin(self, seconds: float) -> int:
        """Calls that await nothing inside their slot, ``LIMIT`` at a time, for ``seconds``."""
        end = time.monotonic() + seconds

        async def loop() -> None:
            while time.monotonic() < end:
                async with self.client.slot(LOCAL_SERVER.id, CallOptions(priority=3)):
                    pass
                self.calls += 1

        await asyncio.gather(*(loop() for _ in range(LIMIT)))
        return self.calls

    def done(self) -> int:
        return self.calls

    def stop(self) -> None:
        self.stopped.set()


BusyProcess = ray.remote(num_cpus=0)(Busy)


async def lent_and_busy(make_manager: ManagerFactory) -> tuple[ManagerClient, Any, Any]:
    """A manager, a process running calls in all the group's slots, lent to it, and the
    call that runs them."""
    client = make_manager(LOCAL_SERVER, group_limits={LOCAL_SERVER.id: LIMIT})
    busy = BusyProcess.remote(client.handle)
    running = busy.run.remote()

    async def reusing() -> bool:
        # Most of its calls asked nobody: far fewer grants than calls.
        calls = await busy.done.remote()
        group = (await client.stats()).groups[LOCAL_SERVER.id]
        return calls >= 40 and group.active == LIMIT and group.recalls == 0

    await eventually(reusing, "the busy process running calls in its lent slots")
    return client, busy, running


async def test_a_process_keeps_lent_slots_and_a_waiter_elsewhere_calls_them_back(
    make_manager: ManagerFactory,
) -> None:
    client, busy, running = await lent_and_busy(make_manager)

    async with client.slot(LOCAL_SERVER.id, CallOptions(priority=9, queue_timeout=30)):
        group = (await client.stats()).groups[LOCAL_SERVER.id]
        assert group.active <= LIMIT
        assert group.recalls >= 1  # and again whenever a busy caller waits

    await busy.stop.remote()
    calls = await running
    group = (await settled(client)).groups[LOCAL_SERVER.id]
    # Every call counted, though most asked nobody: one for the waiter.
    assert group.granted == group.released == calls + 1


async def test_the_slots_lent_to_a_killed_process_come_back_at_once(
    make_manager: ManagerFactory,
) -> None:
    client, busy, _ = await lent_and_busy(make_manager)

    ray.kill(busy)

    group = (await settled(client)).groups[LOCAL_SERVER.id]
    assert (group.abandoned, group.expired) == (LIMIT, 0)


async def test_a_restarted_manager_calls_back_the_slots_it_restored_lent(
    make_manager: ManagerFactory,
) -> None:
    client, busy, running = await lent_and_busy(make_manager)
    epoch = (await client.stats()).epoch

    client.kill(restart=True)

    async def restarted() -> bool:
        stats = await client.stats()
        return stats.epoch != epoch and stats.active_by_group.get(LOCAL_SERVER.id) == LIMIT

    await eventually(restarted, "the restarted manager holding the lent slots again")
    # The restored slots are still lent: a waiter calls them back, well before their ttl.
    async with client.slot(LOCAL_SERVER.id, CallOptions(priority=9, queue_timeout=20)):
        group = (await client.stats()).groups[LOCAL_SERVER.id]
        assert group.active <= LIMIT
        assert group.recalls >= 1  # and again whenever a busy caller waits

    await busy.stop.remote()
    await running
    group = (await settled(client)).groups[LOCAL_SERVER.id]
    assert (group.expired, group.abandoned) == (0, 0)


async def test_a_process_looping_on_kept_slots_awaiting_nothing_still_gives_them_back(
    make_manager: ManagerFactory,
) -> None:
    """Each call in a kept slot takes a turn of its process's loop first: the recall is
    heard there, though no call in it ever waits for anything else."""
    client = make_manager(LOCAL_SERVER, group_limits={LOCAL_SERVER.id: LIMIT})
    busy = BusyProcess.remote(client.handle)
    spinning = busy.spin.remote(30.0)
    await eventually(active_is(client, LOCAL_SERVER.id, LIMIT), "the busy process's slots")

    # Well before the spinning ends.
    async with client.slot(LOCAL_SERVER.id, CallOptions(priority=9, queue_timeout=10)):
        assert (await client.stats()).groups[LOCAL_SERVER.id].recalls >= 1

    ray.cancel(spinning)


async def test_a_slot_kept_for_one_unit_is_not_taken_by_another_units_call(
    make_manager: ManagerFactory,
) -> None:
    """The other unit's call asks the manager, which calls the kept slot back for it."""
    client = make_manager(LOCAL_SERVER, group_limits={LOCAL_SERVER.id: 1})
    async with client.slot(LOCAL_SERVER.id, CallOptions(unit="run:svc-0")):
        pass  # granted while nobody waits: lent, and kept here for its unit
    assert (await client.stats()).groups[LOCAL_SERVER.id].active == 1

    async with client.slot(LOCAL_SERVER.id, CallOptions(unit="run:svc-3", queue_timeout=20)):
        group = (await client.stats()).groups[LOCAL_SERVER.id]

    assert (group.active, group.recalls) == (1, 1)
    group = (await settled(client)).groups[LOCAL_SERVER.id]
    assert (group.active, group.granted, group.released) == (0, 2, 2)
