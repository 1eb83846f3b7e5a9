"""raygate's command line.

python -m pipelines run INPUT.jsonl --out OUT.jsonl   the plateau job
python -m pipelines stats [--watch [SECONDS]]          the queue of a running cluster
python -m pipelines demo                              the seed's scenario through a manager
python -m pipelines transcript OUT.jsonl [--service ID]  a run's calls, one JSON line each

Exit status of ``run``: 0 when every service has an ok record, 1 when a
service failed or an input line was bad (the rest still ran), 2 for unusable
arguments, settings or output file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from actors.waitqueue import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY
from pipelines.runtime import ray_running


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
        "--tenant",
        metavar="NAME",
        help="whose run this is: its calls share the queue fairly with other tenants' at "
        "one priority, with the weight of serve.tenants.NAME if that is set "
        "(default: this driver's Ray job)",
    )
    run.add_argument(
        "--retry-failed", action="store_true", help="run services with a failed record again"
    )
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
    demo = commands.add_parser(
        "demo", help="run the seed's mixed-resource scenario through the manager"
    )
    demo.add_argument(
        "--address", help="Ray cluster to join (default: start an embedded local Ray)"
    )
    demo.add_argument("--config", help="raygate settings YAML (default: $RAYGATE_CONFIG)")
    transcript = commands.add_parser(
        "transcript", help="print the transcript of a run (with pipeline.transcripts: true)"
    )
    transcript.add_argument("out", type=Path, help="the run's results file (its --out)")
    transcript.add_argument("--service", metavar="ID", help="only the calls of this service")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.command == "stats":
        return show_stats(args.address, args.watch)
    if args.command == "demo":
        return run_demo(args.address, args.config)
    if args.command == "transcript":
        return show_transcript(args.out, args.service)
    return run_job(args)


def run_job(args: argparse.Namespace) -> int:
    # Everything that imports ray comes after Ray starts (see pipelines.runtime).
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

    with ray_running(args.address):
        from actors.client import ManagerClient
        from pipelines.job import run_options, run_pipeline, summary

        try:
            manager = ManagerClient.connect(settings) if settings.queue.enabled else None
            asking = run_options(args.priority, args.tenant, settings)
            outcome = asyncio.run(
                run_pipeline(pending, results, settings, manager=manager, asking=asking)
            )
        except RaygateError as error:
            print(f"raygate: {error}", file=sys.stderr)
            return 2
    results.rewrite_in_order([s.id for s in services])
    print(summary(outcome, skipped=skipped, bad_lines=len(problems)))
    return 1 if outcome.failed or problems else 0


def show_stats(address: str, every: float | None) -> int:
    with ray_running(address):
        from actors.client import ManagerClient
        from actors.names import MANAGER_NAME, NAMESPACE
        from pipelines.view import render

        manager = ManagerClient.running()
        if manager is None:
            print(
                f"no {MANAGER_NAME!r} actor in namespace {NAMESPACE!r} at {address}: "
                "nothing has run through raygate on this cluster yet",
                file=sys.stderr,
            )
            return 2
        live = sys.stdout.isatty()
        try:
            while True:
                table = render(asyncio.run(manager.stats()))
                print(("\x1b[H\x1b[2J" if live and every else "") + table, flush=True)
                if every is None:
                    return 0
                time.sleep(every)
        except KeyboardInterrupt:
            return 0


def show_transcript(out: Path, service: str | None) -> int:
    from pipelines.transcripts import TranscriptFile, transcript_path

    transcript = TranscriptFile(transcript_path(out))
    if not transcript.path.exists():
        print(
            f"raygate: no transcript at {transcript.path}: runs write one with "
            "pipeline.transcripts: true (RAYGATE_PIPELINE__TRANSCRIPTS=true)",
            file=sys.stderr,
        )
        return 2
    for line in transcript.read():
        if service is None or line.service_id == service:
            print(line.model_dump_json())
    return 0


def run_demo(address: str | None, config: str | None) -> int:
    with ray_running(address):
        from actors.client import ManagerClient
        from actors.settings import load_settings
        from pipelines.demo import report, run_scenario

        client = ManagerClient.connect(load_settings(config))
        print(report(asyncio.run(run_scenario(client))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
