"""``python -m pipelines run INPUT.jsonl --out OUT.jsonl``: the plateau job.

Exit status: 0 when every service has an ok record, 1 when a service failed
or an input line was bad (the rest still ran), 2 for unusable arguments,
settings or output file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from actors.runtime import init_ray
from actors.waitqueue import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="generate each service's evolution over plateaus")
    run.add_argument("input", type=Path, help="JSONL, one service a line: {id, name, description}")
    run.add_argument("--out", type=Path, required=True, help="JSONL results, appended per service")
    run.add_argument("--config", help="raygate settings YAML (default: $RAYGATE_CONFIG)")
    run.add_argument("--address", help="Ray cluster to join (default: an embedded local Ray)")
    run.add_argument(
        "--priority",
        type=int,
        default=DEFAULT_PRIORITY,
        choices=range(MIN_PRIORITY, MAX_PRIORITY + 1),
        metavar=f"{MIN_PRIORITY}..{MAX_PRIORITY}",
        help=f"priority of every call of this run (default {DEFAULT_PRIORITY})",
    )
    run.add_argument(
        "--retry-failed", action="store_true", help="run services with a failed record again"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # Everything that imports ray comes after init_ray (see actors.runtime).
    from actors.errors import RaygateError
    from actors.settings import load_settings
    from pipelines.plateau import read_services
    from pipelines.results import ResultsFile, check_input

    try:
        check_input(args.input)
        results = ResultsFile(args.out)
        results.check_writable()
        settings = load_settings(args.config)
        lines = args.input.read_text(encoding="utf-8").splitlines()
        if args.retry_failed:
            results.drop_failed()
        done = results.load()
    except (RaygateError, OSError) as error:
        print(f"raygate: {error}", file=sys.stderr)
        return 2
    services, problems = read_services(lines)
    for problem in problems:
        print(f"raygate: skipping {args.input} {problem}", file=sys.stderr)
    pending = [s for s in services if s.id not in done]
    skipped = len(services) - len(pending)

    if not pending:
        results.rewrite_in_order([s.id for s in services])
        print(f"nothing to do: {skipped} services already done in {args.out}")
        return 1 if problems else 0

    init_ray(args.address)
    import ray

    from actors.client import ManagerClient
    from pipelines.job import run_pipeline, summary

    try:
        manager = ManagerClient.connect(settings).handle if settings.queue.enabled else None
        outcome = asyncio.run(
            run_pipeline(pending, results, settings, manager=manager, priority=args.priority)
        )
    except RaygateError as error:
        print(f"raygate: {error}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    results.rewrite_in_order([s.id for s in services])
    print(summary(outcome, skipped=skipped, bad_lines=len(problems)))
    return 1 if outcome.failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
