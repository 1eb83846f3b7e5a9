"""The gated pair (acquire + release, nothing inside) against another checkout's, in one run.

    python -m benchmarks.pair [--against PATH] [--seconds 5] [--rounds 3]

Callers (1 and 64) loop ``async with client.slot(group)`` on a capped group
(limit above the callers: nobody waits) for ``--seconds`` each, on an
embedded Ray of their own; pairs per second. With ``--against PATH`` (a
checkout of another commit, e.g. ``git worktree add /tmp/base 3512c50``)
the same measurement runs with that checkout's code, alternating with this
one's, ``--rounds`` times each, so that both see the same machine (these
drift by 2x from one day to the next, and by 1.5x from one minute to the
next); then the ratio of the medians, and the ratio within each round.

Each measurement is a subprocess with the checkout on ``PYTHONPATH``: the
script below uses only what both have (``ManagerClient.slot``,
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
CALLERS = (1, 64)

MEASURE = """
import asyncio, json, os, sys, time, uuid
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
import ray
from actors.client import ManagerClient
from actors.groups import classify
from actors.manager import get_or_create_manager
from actors.settings import QueueSettings, Settings

seconds, callers = float(sys.argv[1]), [int(c) for c in sys.argv[2].split(",")]
group = classify("openai-compatible", "http://gpu-box:8000")


async def main() -> dict[int, float]:
    settings = Settings(queue=QueueSettings(group_limits={group.id: 1_000}))
    client = ManagerClient(get_or_create_manager(settings, name=f"pair-{uuid.uuid4().hex[:6]}"))
    await client.register(group)
    for _ in range(200):  # warm up: workers, connections, the caller's watch
        async with client.slot(group.id):
            pass
    rates = {}
    for count in callers:
        done = 0
        end = time.monotonic() + seconds

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < end:
                async with client.slot(group.id):
                    pass
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(count)))
        rates[count] = done / (time.monotonic() - started)
    return rates


ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
try:
    print(json.dumps(asyncio.run(main())))
finally:
    ray.shutdown()
"""


def measure(checkout: Path, seconds: float) -> dict[int, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    args = [str(seconds), ",".join(map(str, CALLERS))]
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, *args],
        cwd=checkout, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rates: dict[str, float] = json.loads(run.stdout.strip().splitlines()[-1])
    return {int(callers): rate for callers, rate in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pair")
    parser.add_argument("--against", type=Path, help="a checkout of another commit")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    checkouts = {"this checkout": REPO}
    if args.against is not None:
        checkouts["--against"] = args.against.resolve()
    results: dict[str, list[dict[int, float]]] = {name: [] for name in checkouts}
    for n in range(args.rounds):
        # Each checkout goes first in every other round: neither always meets a warmer machine.
        for name in sorted(checkouts, reverse=n % 2 == 1):
            results[name].append(measure(checkouts[name], args.seconds))
    print(f"gated pairs per second, {args.rounds} rounds of {args.seconds:g} s, alternating")
    for count in CALLERS:
        medians = {}
        for name, rounds in results.items():
            rates = [r[count] for r in rounds]
            medians[name] = statistics.median(rates)
            listed = " ".join(f"{rate:.0f}" for rate in rates)
            print(f"{count:>3} callers  {name:<14} {listed:<32} median {medians[name]:.0f}")
        if "--against" in medians:
            ratio = medians["--against"] / medians["this checkout"]
            pairs = zip(results["this checkout"], results["--against"], strict=True)
            paired = [against[count] / this[count] for this, against in pairs]
            listed = " ".join(f"{r:.2f}" for r in paired)
            print(f"{count:>3} callers  time per pair, this / --against: {ratio:.2f}x")
            print(
                f"{count:>3} callers  the same round by round: {listed}, "
                f"median {statistics.median(paired):.2f}x"
            )


if __name__ == "__main__":
    main()
