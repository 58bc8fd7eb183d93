"""Process entry points: ``cronorch <command>``.

Thin: parse arguments, build settings, call the module below that does the work.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime

from schemas.limits import EARLIEST, LATEST
from streams.cli import console, preview
from streams.cli import jobs as jobcli
from streams.cli import tasks as taskcli
from streams.errors import SchedulerError
from streams.timecore.instants import format_instant


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cronorch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="the local Kafka + PostgreSQL stack")
    dev_sub = dev.add_subparsers(dest="action", required=True)
    dev_sub.add_parser("up", help="start Kafka and PostgreSQL (idempotent)")
    down = dev_sub.add_parser("down", help="stop them (idempotent)")
    down.add_argument("--wipe", action="store_true", help="also delete their data")
    dev_sub.add_parser("status", help="show whether they run")

    topics = sub.add_parser("topics", help="Kafka topics")
    topics_sub = topics.add_subparsers(dest="action", required=True)
    topics_sub.add_parser("ensure", help="create missing topics")

    tick = sub.add_parser("tick", help="publish ticks (live, or a range with --from/--to)")
    tick.add_argument("--from", dest="start", type=console.instant,
                      help="first tick (range mode)")
    tick.add_argument("--to", dest="end", type=console.instant,
                      help="last tick, inclusive (range mode)")
    tick.add_argument("--step", type=console.tick_step, default=None,
                      help="seconds between ticks, e.g. 0.25 (default TICK_INTERVAL_S)")

    worker = sub.add_parser("worker",
                            help="run the scheduling worker (re-keyer + timeline agent)")
    worker.add_argument(
        "--runtime", choices=("native", "faust"), default="native",
        help="native: this project's exactly-once engine on aiokafka (default, faster); "
             "faust: the same handlers as faust-streaming agents on this project's "
             "transactional layer (see README, 'Choosing a runtime')")
    backfill = sub.add_parser(
        "backfill", help="emit, exactly once, what should have fired in a window and is missing")
    backfill.add_argument("--from", dest="start", type=console.instant, required=True,
                          help="first fire instant of the window")
    backfill.add_argument("--to", dest="end", type=console.instant, required=True,
                          help="last fire instant of the window (inclusive)")
    backfill.add_argument("--dry-run", action="store_true",
                          help="print the difference, emit nothing")
    backfill.add_argument("--no-progress", action="store_true",
                          help="no progress bar on stderr")
    demo = sub.add_parser("demo", help="publish demo users and tasks, then print notifications")
    demo.add_argument("--users", type=int, default=6)
    demo.add_argument("--follow-s", type=float, default=90.0,
                      help="seconds to print notifications for (0 = do not follow)")
    jobcli.add_parsers(sub)
    taskcli.add_parsers(sub)
    preview.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except SchedulerError as exc:
        print(f"cronorch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from streams.settings import Settings

    if args.command == "dev":
        from streams.cli import devstack

        stack = devstack.Stack.from_env()
        if args.action == "up":
            timings = devstack.up(stack)
            from streams.kafka import client as kafka

            settings = Settings.from_env()
            timings["kafka_ready_s"] = asyncio.run(kafka.wait_ready(settings))
            created = asyncio.run(kafka.ensure_topics(settings))
            console.print_json({**devstack.status(stack),
                                **{k: round(v, 2) for k, v in timings.items()},
                                "topics_created": created})
        elif args.action == "down":
            devstack.down(stack, wipe=args.wipe)
            console.print_json(devstack.status(stack))
        else:
            console.print_json(devstack.status(stack))
        return 0

    settings = Settings.from_env()
    if args.command == "preview":
        return preview.run(args, datetime.now(UTC))
    result = jobcli.dispatch(args, settings)
    result = taskcli.dispatch(args, settings) if result is None else result
    if result is not None:
        return result
    if args.command == "topics":
        from streams.kafka import client as kafka

        console.print_json({"created": asyncio.run(kafka.ensure_topics(settings))})
        return 0
    if args.command == "tick":
        from streams.processes import tickproducer

        step = args.step or settings.tick_interval_s
        if args.start is not None or args.end is not None:
            if args.start is None or args.end is None:
                raise SystemExit("cronorch tick: --from and --to go together")
            for flag, at in (("--from", args.start), ("--to", args.end)):
                if not EARLIEST <= at < LATEST:
                    raise SystemExit(f"cronorch tick: {flag} should be between "
                                     f"{EARLIEST.isoformat()} and {LATEST.isoformat()}")
            count = asyncio.run(tickproducer.publish_range(settings, args.start, args.end, step))
            console.print_json({"ticks": count, "from": format_instant(args.start),
                                "to": format_instant(args.end)})
            return 0
        asyncio.run(tickproducer.run_live(settings, step))
        return 0
    if args.command == "worker":
        from streams.kafka import engine
        from streams.processes import worker

        try:
            asyncio.run(worker.run(settings, runtime=args.runtime))
        except BaseException:
            if not engine.threads_running():
                raise
            traceback.print_exc()
            _leave_now(1)
        if engine.threads_running():
            _leave_now(0)
        return 0
    if args.command == "backfill":
        from streams.processes import backfill
        from streams.telemetry import logs

        logs.configure(settings.log_level)
        console.print_json(asyncio.run(backfill.run(
            settings, args.start, args.end, dry_run=args.dry_run,
            progress=None if args.no_progress else sys.stderr)))
        return 0
    if args.command == "demo":
        from streams.processes import demo

        asyncio.run(demo.run(settings, users=args.users, follow_s=args.follow_s))
        return 0
    raise AssertionError(args.command)


def _leave_now(code: int) -> None:
    """End the process without the interpreter's finalization, which a restore thread still
    running would turn into an abort (``streams.kafka.engine.threads_running``): its work is
    uncommitted state that the partition's next owner restores again anyway."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
