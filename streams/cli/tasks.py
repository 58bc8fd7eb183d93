"""Entry points of the tasks side: ``cronorch spawn-sink``, ``cronorch relay`` and
``cronorch bootstrap``. Thin: parse arguments, call down, print JSON.

This is the edge: the wall clock is read here (the bootstrap's default ``--as-of``) and in the
relay's ``published_at``, nowhere below.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from streams.cli import console
from streams.settings import Settings
from streams.timecore.instants import format_instant

TASK_COMMANDS = ("spawn-sink", "relay", "bootstrap")



def _positive(cast: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = cast(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not positive")
        return value
    return parse


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``spawn-sink``, ``relay`` and ``bootstrap`` to the ``cronorch`` parser."""
    sub.add_parser("spawn-sink", help="store task.spawn commands as task rows (+ outbox rows)")

    relay = sub.add_parser("relay", help="publish PostgreSQL outbox rows to todo.task-events")
    relay.add_argument("--poll-interval-s", type=_positive(float), default=1.0,
                       help="poll this often when no notification arrives (default 1)")
    relay.add_argument("--batch-size", type=_positive(int), default=500,
                       help="rows per user per transaction (default 500)")
    relay.add_argument("--no-listen", action="store_true",
                       help="poll only: no LISTEN/NOTIFY wake-ups (diagnostics)")

    boot = sub.add_parser("bootstrap", help="publish all user settings and open tasks")
    boot.add_argument("--as-of", type=console.instant, default=None,
                      help="the events' occurred_at (default: now)")
    boot.add_argument("--chunk-size", type=_positive(int), default=1000)
    boot.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def dispatch(args: argparse.Namespace, settings: Settings) -> int | None:
    """Run a tasks command; None if ``args`` is not one of ours."""
    if args.command not in TASK_COMMANDS:
        return None
    if args.command == "spawn-sink":
        from streams.processes import spawnsink

        asyncio.run(spawnsink.run(settings))
        return 0
    if args.command == "relay":
        from streams.processes import relay

        asyncio.run(relay.run(settings, poll_interval_s=args.poll_interval_s,
                              batch_size=args.batch_size, listen=not args.no_listen))
        return 0
    from streams.processes import bootstrap
    from streams.telemetry import logs

    logs.configure(settings.log_level)
    as_of = args.as_of or datetime.now(UTC).replace(microsecond=0)
    result = asyncio.run(bootstrap.run(
        settings, as_of=as_of, chunk_size=args.chunk_size,
        progress=None if args.no_progress else sys.stderr))
    console.print_json({"as_of": format_instant(as_of), **result})
    return 0
