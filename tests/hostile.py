"""A catalogue of malformed and hostile task events (issue 8), shared by the unit tests, the
property test on the in-memory twin and the acceptance test against the real broker.

Each entry is one kind of bad record for a given user: its value bytes and a word its
dead letter's reason must contain (the field at fault, or what was wrong).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

Doc = dict[str, Any]


@dataclass(frozen=True)
class Hostile:
    kind: str
    value: bytes
    word: str


def upsert(user: str, task: str, *, due_at: str = "2026-01-02T13:00:00Z",
           reminders: list[Any] | None = None, version: int = 1) -> Doc:
    """A valid task.upserted of ``user`` (the shape the bad ones are derived from)."""
    return {"type": "task.upserted", "event_id": f"{task}-{version}",
            "occurred_at": "2026-01-01T00:00:00Z",
            "task": {"task_id": task, "user_id": user, "version": version, "title": "Secret",
                     "status": "open", "due_at": due_at,
                     "reminders": [{"at": "2026-01-02T12:00:00Z"}] if reminders is None
                     else reminders}}


def settings_event(user: str, **changes: Any) -> Doc:
    return {"type": "user.settings", "event_id": f"s-{user}", "occurred_at":
            "2026-01-01T00:00:00Z", "user_id": user, "version": 1,
            "timezone": "Europe/Berlin", "digest_time": "09:00", **changes}


def _task(user: str, **changes: Any) -> bytes:
    doc = upsert(user, "hostile")
    doc["task"].update(changes)
    return orjson.dumps(doc)


def _event(user: str, **changes: Any) -> bytes:
    doc = upsert(user, "hostile")
    doc.update(changes)
    return orjson.dumps(doc)


def _rule(user: str, rrule: str) -> bytes:
    return _task(user, recurrence={"rrule": rrule, "anchor": "due", "skip": "omit"})


def _nested(depth: int) -> Any:
    value: Any = {"at": "2026-01-02T12:00:00Z"}
    for _ in range(depth):
        value = [value]
    return value


def _without(user: str, edit: Callable[[Doc], None]) -> bytes:
    doc = copy.deepcopy(upsert(user, "hostile"))
    edit(doc)
    return orjson.dumps(doc)


def catalogue(user: str) -> list[Hostile]:
    """Every kind of bad record, as ``user``'s (so it lands in that user's partitions)."""
    h = Hostile
    return [
        # instants and dates: overflowing, out of range, malformed offsets
        h("occurred_at year 1 +01:00", _event(user, occurred_at="0001-01-01T00:00:00+01:00"),
          "occurred_at"),
        h("due_at year 9999 -01:00", _task(user, due_at="9999-12-31T23:59:59-01:00"),
          "task.due_at"),
        h("due_at far future", _task(user, due_at="3000-01-01T00:00:00Z"), "task.due_at"),
        h("due_at far past", _task(user, due_at="1900-01-01T00:00:00Z"), "task.due_at"),
        h("completed_at year 1 +14:00", _task(user, completed_at="0001-01-01T00:00:00+14:00"),
          "task.completed_at"),
        h("reminder at far future", _task(user, reminders=[{"at": "2500-01-01T00:00:00Z"}]),
          "task.reminders.0.at"),
        h("before_minutes huge", _task(user, reminders=[{"before_minutes": 10**12}]),
          "before_minutes"),
        h("before_minutes negative", _task(user, reminders=[{"before_minutes": -5}]),
          "before_minutes"),
        h("due_date year 1", _task(user, due_at=None, due_date="0001-01-01"), "task.due_date"),
        h("due_date year 9999", _task(user, due_at=None, due_date="9999-12-31"),
          "task.due_date"),
        h("offset +99:00", _event(user, occurred_at="2026-01-01T00:00:00+99:00"),
          "occurred_at"),
        # rules: unsupported, impossible, out of range, oversized
        h("rrule BYHOUR", _rule(user, "FREQ=DAILY;BYHOUR=3"), "rrule"),
        h("rrule SECONDLY", _rule(user, "FREQ=SECONDLY"), "rrule"),
        h("rrule empty parts", _rule(user, "FREQ=DAILY;;;"), "rrule"),
        h("rrule COUNT huge", _rule(user, "FREQ=DAILY;COUNT=1000000000"), "rrule"),
        h("rrule INTERVAL 0", _rule(user, "FREQ=DAILY;INTERVAL=0"), "rrule"),
        h("rrule UNTIL 9999", _rule(user, "FREQ=DAILY;UNTIL=99991231"), "rrule"),
        h("rrule BYMONTHDAY 32", _rule(user, "FREQ=MONTHLY;BYMONTHDAY=32"), "rrule"),
        h("rrule ordinal with DAILY", _rule(user, "FREQ=DAILY;BYDAY=1MO"), "rrule"),
        h("rrule 600 chars", _rule(user, "FREQ=DAILY;" + ";".join(["WKST=MO"] * 75)), "rrule"),
        # sizes
        h("title 800 KB", _task(user, title="x" * 800_000), "bytes"),
        h("title 2000 chars", _task(user, title="y" * 2_000), "task.title"),
        h("20000 reminders", _task(user, reminders=[{"before_minutes": m}
                                                    for m in range(20_000)]), "bytes"),
        h("60 reminders", _task(user, reminders=[{"before_minutes": m} for m in range(60)]),
          "task.reminders"),
        h("task_id 5000 chars", _task(user, task_id="t" * 5_000), "task.task_id"),
        h("deep nesting 2000", _task(user, reminders="@").replace(
            b'"@"', b"[" * 2_000 + b"]" * 2_000), "JSON"),
        h("nested reminders", _task(user, reminders=[_nested(50)]), "task.reminders"),
        # wrong types and values
        h("version float", _task(user, version=1.5), "task.version"),
        h("version beyond 64 bits", _task(user, version=0).replace(
            b'"version":0', b'"version":' + str(2**70).encode()), "task.version"),
        h("version beyond a bigint", _task(user, version=2**63), "task.version"),
        h("reminders a string", _task(user, reminders="soon"), "task.reminders"),
        h("task a list", _event(user, task=[1, 2]), "task"),
        h("status unknown", _task(user, status="archived"), "task.status"),
        h("reminder with both keys", _task(user, reminders=[
            {"at": "2026-01-02T12:00:00Z", "before_minutes": 5}]), "reminders"),
        h("missing user_id", _without(user, lambda d: d["task"].pop("user_id")),
          "task.user_id"),
        # zones and local times
        h("unknown zone", orjson.dumps(settings_event(user, timezone="Mars/Olympus")),
          "timezone"),
        h("zone a directory", orjson.dumps(settings_event(user, timezone="America")),
          "timezone"),
        h("zone 5000 chars", orjson.dumps(settings_event(user, timezone="Z" * 5_000)),
          "timezone"),
        h("zone path", orjson.dumps(settings_event(user, timezone="../../etc/passwd")),
          "timezone"),
        h("digest_time 25:00", orjson.dumps(settings_event(user, digest_time="25:00")),
          "digest_time"),
        # not JSON objects at all
        h("garbage bytes", bytes(range(256)) * 4, "JSON"),
        h("invalid UTF-8", b'{"type": "task.upserted", "event_id": "\xff\xfe"}', "JSON"),
        h("lone surrogate", b'{"type": "task.upserted", "event_id": "\\ud800"}', "JSON"),
        h("a JSON array", b"[1, 2, 3]", "object"),
        h("null", b"null", "object"),
        h("empty", b"", "JSON"),
        h("unknown type", _event(user, type="task.teleported"), "task.teleported"),
    ]
