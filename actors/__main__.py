"""Command line of the concurrency layer: ``python -m actors demo``."""

from __future__ import annotations

import argparse
import asyncio
import sys

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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
