"""Process entry points: ``cronorch <command>``.

Thin: parse arguments, build settings, call the module below that does the work.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson

from schemas.limits import EARLIEST, LATEST
from streams.cli import jobs as jobcli
from streams.cli import preview
from streams.cli import tasks as taskcli
from streams.errors import SchedulerError


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no offset; write it as 2026-03-08T07:00:00Z")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # year 1 with a positive offset: argparse reports only ValueError
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC instant") from None


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
    tick.add_argument("--from", dest="start", type=_instant, help="first tick (range mode)")
    tick.add_argument("--to", dest="end", type=_instant, help="last tick, inclusive (range mode)")
    tick.add_argument("--step", type=int, default=None, help="seconds between ticks")

    sub.add_parser("worker", help="run the scheduling worker (re-keyer + timeline agent)")
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
            _print({**devstack.status(stack), **{k: round(v, 2) for k, v in timings.items()},
                    "topics_created": created})
        elif args.action == "down":
            devstack.down(stack, wipe=args.wipe)
            _print(devstack.status(stack))
        else:
            _print(devstack.status(stack))
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

        _print({"created": asyncio.run(kafka.ensure_topics(settings))})
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
            _print({"ticks": count, "from": args.start.isoformat(), "to": args.end.isoformat()})
            return 0
        asyncio.run(tickproducer.run_live(settings, step))
        return 0
    if args.command == "worker":
        from streams.processes import worker

        asyncio.run(worker.run(settings))
        return 0
    if args.command == "demo":
        from streams.processes import demo

        asyncio.run(demo.run(settings, users=args.users, follow_s=args.follow_s))
        return 0
    raise AssertionError(args.command)


def _print(value: object) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    sys.exit(main())
