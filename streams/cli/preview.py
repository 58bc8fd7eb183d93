"""``cronorch preview``: the next fires of a task's reminders, a user's digest or a series,
in the user's zone and in UTC, computed by the same planning code the worker runs.

An edge module: ``--after`` defaults to the wall clock. Jobs are previewed by
``cronorch jobs preview NAME`` (streams/cli/jobs.py).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson

from schemas import TASK_EVENT_ADAPTER, Task, UserSettings
from schemas.wire import WireError, loads
from streams.cli import console
from streams.errors import InvalidInput
from streams.timecore.instants import format_seconds
from streams.timecore.localtime import DstPolicy, zone
from streams.timeline.planning import (
    DigestFire,
    SpawnFire,
    dst_policy_of,
    next_digest,
    next_spawn,
    reminder_fires,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    preview = sub.add_parser("preview", help="the next fires of a task, a digest or a series")
    kinds = preview.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--after", type=console.instant, default=None,
                        help="show fires after this instant (default: now)")
    common.add_argument("-n", "--count", type=int, default=10)
    common.add_argument("--timezone", default="UTC", help="the user's IANA zone")
    common.add_argument("--dst-policy", default="shift_forward,first",
                        help="nonexistent,ambiguous (e.g. gap_edge,both)")
    task = kinds.add_parser("task", parents=[common],
                            help="reminders and (for a series) spawns of a task")
    task.add_argument("event", help="a task.upserted event or a task as JSON ('-': stdin)")
    digest = kinds.add_parser("digest", parents=[common], help="a user's daily digest")
    digest.add_argument("--digest-time", default="09:00")


def _settings(args: argparse.Namespace, after: datetime) -> UserSettings:
    nonexistent, _, ambiguous = args.dst_policy.partition(",")
    doc = {"type": "user.settings", "event_id": "preview", "occurred_at": format_seconds(after),
           "user_id": "preview", "version": 1, "timezone": args.timezone,
           "digest_time": getattr(args, "digest_time", None),
           "dst_policy": {"nonexistent": nonexistent, "ambiguous": ambiguous or "first"}}
    try:
        return loads(UserSettings, orjson.dumps(doc))
    except WireError as exc:
        raise InvalidInput(f"preview settings: {exc}") from None


def _row(kind: str, at: datetime, args: argparse.Namespace, **extra: object) -> dict[str, object]:
    local = at.astimezone(zone(args.timezone))
    return {"kind": kind, "utc": format_seconds(at), "local": local.isoformat(), **extra}


def run(args: argparse.Namespace, now: datetime) -> int:
    after = args.after or now
    settings = _settings(args, after)
    rows: list[dict[str, object]] = []
    if args.kind == "digest":
        last: DigestFire | None = None
        for _ in range(args.count):
            fire = next_digest(settings, last)
            if fire is None:
                break
            rows.append(_row("digest.daily", fire.fire_at, args,
                             local_date=fire.local_date.isoformat()))
            last = fire
    else:
        raw = sys.stdin.read() if args.event == "-" else args.event
        task = _task(raw)
        reminders = sorted(at for at in reminder_fires(task, after))
        rows += [_row("reminder.due", at, args) for at in reminders[:args.count]]
        tz, policy = zone(args.timezone), dst_policy_of(settings)
        for spawn in itertools.islice(_spawns(task, tz, policy, after), args.count):
            occurrence = (spawn.due_date.isoformat() if spawn.due_date
                          else format_seconds(spawn.due_instant))
            rows.append(_row("task.spawn", spawn.fire_at, args, occurrence=occurrence))
    for row in rows:
        sys.stdout.write(orjson.dumps(row).decode() + "\n")
    return 0


def _task(raw: str) -> Task:
    try:
        doc = orjson.loads(raw)
        if isinstance(doc, dict) and "task" in doc:
            event = loads(TASK_EVENT_ADAPTER, orjson.dumps(doc))
            return event.task  # type: ignore[union-attr]
        return loads(Task, orjson.dumps(doc))
    except (orjson.JSONDecodeError, WireError, AttributeError) as exc:
        raise InvalidInput(f"preview task: {exc}") from None


def _spawns(task: Task, tz: ZoneInfo, policy: DstPolicy,
            after: datetime) -> Iterator[SpawnFire]:
    bound = after
    while (fire := next_spawn(task, tz, policy, bound)) is not None:
        yield fire
        bound = fire.due_instant


__all__ = ["add_parsers", "run"]
