"""Command line of the concurrency layer.

python -m actors demo                      the seed's scenario through a manager
python -m actors stats [--watch [SECONDS]] the queue of a running cluster
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from actors.runtime import init_ray


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run the seed's mixed-resource scenario through the manager"
    )
    demo.add_argument(
        "--address", help="Ray cluster to join (default: start an embedded local Ray)"
    )
    demo.add_argument("--config", help="raygate settings YAML (default: $RAYGATE_CONFIG)")
    stats = commands.add_parser("stats", help="print the queue of a running cluster's manager")
    stats.add_argument("--address", default="auto", help="Ray cluster (default: auto)")
    stats.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C",
    )
    args = parser.parse_args(argv)
    if args.command == "stats":
        return show_stats(args.address, args.watch)

    init_ray(args.address)
    # Imported only now: Ray must see init_ray's loopback switch when first imported.
    import ray

    from actors.client import ManagerClient
    from actors.demo import report, run_scenario
    from actors.settings import load_settings

    try:
        client = ManagerClient.connect(load_settings(args.config))
        print(report(asyncio.run(run_scenario(client))))
    finally:
        ray.shutdown()
    return 0


def show_stats(address: str, every: float | None) -> int:
    init_ray(address)
    import ray

    from actors.names import MANAGER_NAME, NAMESPACE
    from actors.view import render

    try:
        try:
            manager = ray.get_actor(MANAGER_NAME, namespace=NAMESPACE)
        except ValueError:
            print(
                f"no {MANAGER_NAME!r} actor in namespace {NAMESPACE!r} at {address}: "
                "nothing has run through raygate on this cluster yet",
                file=sys.stderr,
            )
            return 2
        live = sys.stdout.isatty()
        while True:
            table = render(ray.get(manager.stats.remote()))
            print(("\x1b[H\x1b[2J" if live and every else "") + table, flush=True)
            if every is None:
                return 0
            time.sleep(every)
    except KeyboardInterrupt:
        return 0
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
