"""The gated pair (acquire + release, nothing inside) against another checkout's, in one run.

    python -m benchmarks.pair [--against PATH | --fifo | --shards] [--seconds 1] [--rounds 10]
                              [--limit 100000] [--cap N]
                              [--scenarios 1x1,64x1,1024x1,64x4,1024x4]

Callers loop ``async with client.slot(group)`` on a capped group (by default
its limit is above the callers: nobody waits; ``--limit`` sets it, below them
the callers wait for each other; ``--cap`` adds a global cap); gated pairs per
second, in all. A scenario
``CxP`` runs C callers in each of P processes (Ray actors, each with a
client of its own, started at the same moment). With ``--against PATH`` (a
checkout of another commit, e.g. ``git worktree add /tmp/base 239e2d1``) both
checkouts' code runs at once, each in a process of its own on an embedded
Ray of its own, set up and warmed once; then they take turns: one measures
for ``--seconds`` while the other idles, then the other, the one going first
alternating, ``--rounds`` times for each scenario. Each round's two windows
are a second apart, so a round's ratio compares the two on nearly the same
machine (these machines drift by 2x from one day to the next, and by 1.5x
from one minute to the next); the result is the median of the rounds'
ratios, beside the ratio of the medians.

With ``--fifo`` instead, this checkout against itself, one process with
``queue.fairness: fair`` and one with ``fifo``, each caller a flow of its
own in both: the cost of fair share on the grant path.

With ``--shards`` instead, this checkout against itself, one process with one
manager and one with ``queue.shards: 2``; in both, every other caller calls a
second group, one the hash puts on the second shard (see actors.shards).

Beside each median, the cores (CPU seconds a second) that the manager's
processes and the callers' used while it measured: on this 2-core machine
their sum near 2 says the machine, not one manager, is the limit.

Each checkout's process runs the script below with that checkout on
``PYTHONPATH``: it uses only what both have (``ManagerClient.slot``,
``get_or_create_manager``, ``Settings``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]
SCENARIOS = "1x1,64x1,1024x1,64x4,1024x4"

# Reads "<callers> <processes> <seconds>" lines; measures; answers each with the pairs per
# second in all, and the cores the manager's processes and the callers' used meanwhile.
MEASURE = """
import asyncio, json, os, sys, time, uuid
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
from pathlib import Path
import ray
from actors.client import ManagerClient
from actors.groups import classify
from actors.manager import get_or_create_manager
from actors.settings import QueueSettings, Settings

group = classify("openai-compatible", "http://gpu-box:8000")
fairness = os.environ.get("PAIR_FAIRNESS")
limit = int(os.environ["PAIR_LIMIT"])
cap = os.environ.get("PAIR_CAP")
shards = os.environ.get("PAIR_SHARDS")
# With shards, every other caller calls a group the hash puts on another shard.
specs = [group]
if shards is not None:
    from actors.shards import Routes
    others = (classify("openai-compatible", f"http://gpu-box:{8001 + n}") for n in range(64))
    first = Routes(2).of_group(group.id)
    specs.append(next(g for g in others if Routes(2).of_group(g.id) != first))
groups = [spec.id for spec in specs]


# With a fairness set, each caller is a flow of its own.
def options(caller: int) -> tuple[object, ...]:
    if fairness is None:
        return ()
    from actors.options import CallOptions
    return (CallOptions(flow=f"caller-{caller}"),)


@ray.remote(num_cpus=0)
class Callers:
    def __init__(self, client) -> None:
        self.client = client

    async def run(self, callers: int, start: float, end: float) -> int:
        done = 0

        async def loop(caller: int) -> None:
            nonlocal done
            asked = options(caller)
            called = groups[caller % len(groups)]
            while time.time() < end:
                async with self.client.slot(called, *asked):
                    pass
                if time.time() >= start:
                    done += 1

        await asyncio.gather(*(loop(caller) for caller in range(callers)))
        return done


# The CPU seconds used so far by each role's processes on the machine (the other
# checkout's idle meanwhile), from Linux's /proc.
def cpu() -> dict[str, float]:
    used = {"manager": 0.0, "callers": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    for process in Path("/proc").glob("[0-9]*"):
        try:
            line = (process / "cmdline").read_bytes().replace(b"\\0", b" ").decode()
            fields = (process / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        for role, name in (("manager", "ray::ConcurrencyManager"), ("callers", "ray::Callers")):
            if line.startswith(name):
                # utime and stime: the 14th and 15th fields, counted from the pid.
                used[role] += (int(fields[11]) + int(fields[12])) / tick
    return used


async def rate(processes: list, callers: int, seconds: float) -> list[float]:
    # A quarter second to start every process's callers, then the window.
    start = time.time() + 0.25
    end = start + seconds
    before, began = cpu(), time.time()
    done = await asyncio.gather(*(p.run.remote(callers, start, end) for p in processes))
    after, took = cpu(), time.time() - began
    return [sum(done) / seconds, *((after[r] - before[r]) / took for r in ("manager", "callers"))]


async def main() -> None:
    queue = {} if fairness is None else {"fairness": fairness}
    if shards is not None:
        queue["shards"] = int(shards)
    if cap is not None:
        queue["concurrency"] = int(cap)
    limits = {called: limit for called in groups}
    settings = Settings(queue=QueueSettings(group_limits=limits, **queue))
    name = f"pair-{uuid.uuid4().hex[:6]}"
    if shards is None:
        client = ManagerClient(get_or_create_manager(settings, name=name))
    else:
        client = ManagerClient.create(settings, name=name)
    for spec in specs:
        await client.register(spec)
    pool = [Callers.remote(client) for _ in range(4)]
    # Warm up: workers, connections, each caller's watch.
    await rate(pool, 64, 1.0)
    print("ready", flush=True)
    while line := await asyncio.to_thread(sys.stdin.readline):
        callers, processes, seconds = line.split()
        measured = await rate(pool[: int(processes)], int(callers), float(seconds))
        print(json.dumps(measured), flush=True)


ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
try:
    asyncio.run(main())
finally:
    ray.shutdown()
"""


class Measurer:
    """A process measuring the pair with one checkout's code, on its own embedded Ray."""

    def __init__(self, checkout: Path, env: dict[str, str]) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", MEASURE],
            cwd=checkout,
            env={**os.environ, **env, "PYTHONPATH": str(checkout)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._answer()  # "ready"

    def rate(self, callers: int, processes: int, seconds: float) -> tuple[float, float, float]:
        """Pairs a second, and the cores the manager's and the callers' processes used."""
        assert self._process.stdin is not None
        self._process.stdin.write(f"{callers} {processes} {seconds}\n")
        self._process.stdin.flush()
        pairs, manager, callers_cpu = json.loads(self._answer())
        return pairs, manager, callers_cpu

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        if self._process.wait(timeout=60) != 0:
            raise RuntimeError(f"the measuring process exited {self._process.returncode}")

    def _answer(self) -> str:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the measuring process exited {self._process.wait()}")
        return line


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pair")
    runs = parser.add_mutually_exclusive_group()
    runs.add_argument("--against", type=Path, help="a checkout of another commit")
    runs.add_argument(
        "--fifo", action="store_true", help="this checkout with fair share against fifo"
    )
    runs.add_argument(
        "--shards", action="store_true", help="this checkout with 2 manager shards against 1"
    )
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--limit", type=int, default=100_000, help="the group's limit")
    parser.add_argument("--cap", type=int, help="a global cap (queue.concurrency)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--scenarios", default=SCENARIOS, help="callers x processes, comma-separated"
    )
    args = parser.parse_args()
    scenarios = [tuple(int(n) for n in s.split("x")) for s in args.scenarios.split(",")]
    # Each run: its checkout and its environment; the first is "this", the second the base.
    checkouts: dict[str, tuple[Path, dict[str, str]]] = {"this checkout": (REPO, {})}
    if args.against is not None:
        checkouts["--against"] = (args.against.resolve(), {})
    if args.fifo:
        checkouts = {
            "fair": (REPO, {"PAIR_FAIRNESS": "fair"}),
            "fifo": (REPO, {"PAIR_FAIRNESS": "fifo"}),
        }
    if args.shards:
        checkouts = {
            "2 shards": (REPO, {"PAIR_SHARDS": "2"}),
            "1 shard": (REPO, {"PAIR_SHARDS": "1"}),
        }
    limit = {"PAIR_LIMIT": str(args.limit)}
    if args.cap is not None:
        limit["PAIR_CAP"] = str(args.cap)
    measurers = {name: Measurer(path, {**env, **limit}) for name, (path, env) in checkouts.items()}
    try:
        rates: dict[str, dict[tuple[int, ...], list[float]]] = {
            name: {scenario: [] for scenario in scenarios} for name in checkouts
        }
        cores: dict[str, dict[tuple[int, ...], list[tuple[float, float]]]] = {
            name: {scenario: [] for scenario in scenarios} for name in checkouts
        }
        for n in range(args.rounds):
            for scenario in scenarios:
                # Each checkout goes first in every other round: neither always meets a
                # warmer machine.
                for name in sorted(checkouts, reverse=n % 2 == 1):
                    callers, processes = scenario
                    rate, manager, used = measurers[name].rate(callers, processes, args.seconds)
                    rates[name][scenario].append(rate)
                    cores[name][scenario].append((manager, used))
    finally:
        for measurer in measurers.values():
            measurer.close()
    capped = "" if args.cap is None else f", global cap {args.cap}"
    print(
        f"gated pairs per second in all, limit {args.limit}{capped}, "
        f"{args.rounds} rounds of {args.seconds:g} s, interleaved"
    )
    for scenario in scenarios:
        where = f"{scenario[0]:>4} x {scenario[1]}"
        medians = {name: statistics.median(rates[name][scenario]) for name in checkouts}
        for name in checkouts:
            listed = " ".join(f"{rate:.0f}" for rate in rates[name][scenario])
            manager, used = (statistics.median(c) for c in zip(*cores[name][scenario], strict=True))
            print(
                f"{where}  {name:<14} median {medians[name]:>6.0f}  ({listed})  "
                f"cores used: manager {manager:.2f}, callers {used:.2f}"
            )
        if len(checkouts) == 2:
            this, base = checkouts
            pairs = zip(rates[this][scenario], rates[base][scenario], strict=True)
            paired = sorted(against / measured for measured, against in pairs)
            quartiles = statistics.quantiles(paired, n=4)
            print(
                f"{where}  time per pair, {this} / {base}: "
                f"median of the rounds {statistics.median(paired):.2f}x "
                f"(quartiles {quartiles[0]:.2f}x-{quartiles[2]:.2f}x), "
                f"of the medians {medians[base] / medians[this]:.2f}x"
            )


if __name__ == "__main__":
    main()
