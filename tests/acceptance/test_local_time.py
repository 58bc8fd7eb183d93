"""Digests and recurrence spawns end to end against the real broker, exact sets under
read_committed, expected values from tests/local_model.py (written from DESIGN.md alone).

- Digests at local times across the DST changes of March/April 2026 for users in five
  zones, with every gap and fold policy, and a zone change in the middle of the window.
  Every user also has a weekly series with a reminder: a template (contract v1.1), never
  listed, never overdue, never reminded; one user has 130 tasks on one day (the list cap).
- Monthly-on-the-31st and yearly-on-Feb-29 series with each skip policy across 13 months,
  timed and all-day; a completion-anchored series; a series dated three years back, which
  spawns from the bounded catch-up horizon, not from its start.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from streams.processes import tickproducer
from streams.settings import Settings
from tests.local_model import (
    DIGEST_MAX_TASKS,
    SPAWN_WINDOW,
    DigestModel,
    DigestUser,
    day_start,
    first_tick,
    month_day_occurrences,
    spawn,
)
from tests.model import ts, z
from tests.support import Proc, caught_up, publish, read_json

pytestmark = pytest.mark.kafka


def _settings_event(user: DigestUser, version: int, at: datetime) -> dict[str, Any]:
    return {"type": "user.settings", "event_id": f"{user.user_id}-s{version}",
            "occurred_at": z(at), "user_id": user.user_id, "version": version,
            "timezone": user.timezone, "digest_time": user.digest_time.strftime("%H:%M"),
            "dst_policy": {"nonexistent": user.nonexistent, "ambiguous": user.ambiguous}}


def _task(user: str, n: int, *, due_at: datetime | None = None, due_date: date | None = None,
          status: str = "open", recurrence: dict[str, str] | None = None,
          series_id: str | None = None, completed_at: datetime | None = None,
          task_id: str | None = None) -> dict[str, Any]:
    return {"task_id": task_id or f"{user}-t{n:03d}", "user_id": user, "version": 1,
            "title": f"task {n}", "status": status,
            "completed_at": None if completed_at is None else z(completed_at),
            "due_at": None if due_at is None else z(due_at),
            "due_date": None if due_date is None else due_date.isoformat(),
            "reminders": [], "recurrence": recurrence, "series_id": series_id}


def _upsert(task: dict[str, Any], at: datetime) -> dict[str, Any]:
    return {"type": "task.upserted", "event_id": f"{task['task_id']}-v{task['version']}",
            "occurred_at": z(at), "task": task}


async def _run(settings: Settings, phases: list[tuple[list[dict[str, Any]], datetime,
                                                      datetime]], step_s: int) -> None:
    for events, start, end in phases:
        await publish(settings, events)
        await caught_up(settings, "rekeyer", settings.topics.task_events, transactional=False)
        await tickproducer.publish_range(settings, start, end, step_s)
    await caught_up(settings, "timeline", settings.topics.timeline, transactional=True,
                    timeout_s=240)


def _compare(got: list[dict[str, Any]], expected: dict[str, dict[str, Any]]) -> None:
    ids = Counter(n.get("notification_id") or n["spawn_id"] for n in got)
    assert max(ids.values(), default=1) == 1, "duplicate ids"
    by_id = {n.get("notification_id") or n["spawn_id"]: n for n in got}
    missing = sorted(expected.keys() - by_id.keys())
    extra = sorted(by_id.keys() - expected.keys())
    assert not missing, [expected[i] for i in missing[:3]]
    assert not extra, [by_id[i] for i in extra[:3]]
    for i, doc in by_id.items():
        assert doc == expected[i]


def test_digests_across_dst_with_every_policy_and_a_zone_change(settings: Settings,
                                                                tmp_path: Path) -> None:
    step = timedelta(minutes=15)
    w0, wmid, wend = ts("2026-03-04T00:00:00Z"), ts("2026-03-20T00:00:00Z"), \
        ts("2026-04-09T00:00:00Z")
    users = [
        DigestUser("ny-default", "America/New_York", time(9, 0)),
        DigestUser("ny-gap-shift", "America/New_York", time(2, 30)),
        DigestUser("ny-gap-edge", "America/New_York", time(2, 30), "gap_edge"),
        DigestUser("ny-gap-skip", "America/New_York", time(2, 30), "skip"),
        DigestUser("berlin", "Europe/Berlin", time(9, 0)),
        DigestUser("lordhowe-fold-both", "Australia/Lord_Howe", time(1, 45), ambiguous="both"),
        DigestUser("lordhowe-fold-second", "Australia/Lord_Howe", time(1, 45),
                   ambiguous="second"),
        DigestUser("kathmandu", "Asia/Kathmandu", time(9, 0)),
        DigestUser("santiago", "America/Santiago", time(9, 0)),
        DigestUser("mover", "Europe/Berlin", time(9, 0)),
    ]
    moved = DigestUser("mover", "Asia/Tokyo", time(7, 30))
    model = DigestModel(grid_start=w0 + step, step=step)
    events: list[dict[str, Any]] = []
    for u in users:
        events.append(_settings_event(u, 1, w0))
        tasks = []
        for n in range(36):  # a timed task and an all-day task on most days
            day = date(2026, 3, 4) + timedelta(days=n)
            if n % 5 != 3:
                tasks.append(_task(u.user_id, 2 * n, due_at=datetime.combine(
                    day, time(12, 0), tzinfo=ZoneInfo(u.timezone))))
            if n % 3 == 0:
                tasks.append(_task(u.user_id, 2 * n + 1, due_date=day,
                                   status="completed" if n % 9 == 0 else "open"))
        weekly = _task(u.user_id, 900, due_at=datetime.combine(
            date(2026, 3, 10), time(12, 0), tzinfo=ZoneInfo(u.timezone)),
            recurrence={"rrule": "FREQ=WEEKLY", "anchor": "due", "skip": "omit"})
        tasks.append({**weekly, "reminders": [{"before_minutes": 30}]})
        if u.user_id == "berlin":
            tasks += [_task(u.user_id, 1000 + n, due_date=date(2026, 3, 12))
                      for n in range(130)]
        model.tasks[u.user_id] = tasks
        events.extend(_upsert(t, w0) for t in tasks)
    model.run([(u, w0, wend) for u in users if u.user_id != "mover"]
              + [(users[-1], w0, wmid), (moved, wmid, wend)])

    worker = Proc(settings, "worker", log=tmp_path / "worker.log").start()
    try:
        asyncio.run(_run(settings, [
            (events, w0 + step, wmid),
            ([_settings_event(moved, 2, wmid)], wmid + step, wend),
        ], int(step.total_seconds())))
    finally:
        worker.kill(signal.SIGTERM)
    notifications = asyncio.run(read_json(settings, settings.topics.notifications))
    assert not [n for n in notifications if n["type"] == "reminder.due"]  # series: templates
    got = [n for n in notifications if n["type"] == "digest.daily"]
    _compare(got, model.expected)
    capped = [n for n in got if n["omitted_count"]]
    assert [(n["user_id"], n["local_date"], len(n["tasks"])) for n in capped] == [
        ("berlin", "2026-03-12", DIGEST_MAX_TASKS)]
    per_user = Counter(n["user_id"] for n in got)
    # The policies differ exactly on the DST days: guard against a degenerate scenario.
    assert per_user["ny-gap-skip"] == per_user["ny-gap-shift"] - 1
    assert per_user["lordhowe-fold-both"] == per_user["lordhowe-fold-second"] + 1
    assert {n["timezone"] for n in got if n["user_id"] == "mover"} == {"Europe/Berlin",
                                                                       "Asia/Tokyo"}


def test_month_end_and_leap_day_series_and_completion_anchor(settings: Settings,
                                                             tmp_path: Path) -> None:
    step = timedelta(hours=1)
    w0, wmid, wend = ts("2026-03-01T00:00:00Z"), ts("2026-06-15T12:00:00Z"), \
        ts("2027-04-01T00:00:00Z")
    grid = w0 + step
    months = [(2026 + (m - 1) // 12, (m - 1) % 12 + 1) for m in range(2, 17)]
    expected: dict[str, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    for zone_name, timed in (("America/New_York", True), ("Asia/Kathmandu", False)):
        tz = ZoneInfo(zone_name)
        user = f"user-{zone_name.split('/')[1].lower()}"
        events.append({"type": "user.settings", "event_id": f"{user}-s1", "occurred_at": z(w0),
                       "user_id": user, "version": 1, "timezone": zone_name,
                       "digest_time": None})
        for skip in ("omit", "backward", "forward"):
            for rule, start, days in (
                ("FREQ=MONTHLY;BYMONTHDAY=31", date(2026, 1, 31),
                 month_day_occurrences(31, months, skip)),
                ("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29", date(2024, 2, 29),
                 month_day_occurrences(29, [(2026, 2), (2027, 2)], skip)),
            ):
                series = f"{user}-{rule.split(';')[0][5:].lower()}-{skip}"
                at = time(10, 0) if timed else None
                due_at = datetime.combine(start, at, tzinfo=tz) if at else None
                task = _task(user, 0, task_id=series, due_at=due_at,
                             due_date=None if timed else start,
                             recurrence={"rrule": rule, "anchor": "due", "skip": skip})
                events.append(_upsert(task, w0))
                for day in days:
                    doc = spawn(user, series, tz, day, at, "task 0", grid, step)
                    due = ts(doc["occurrence"]["due_at"]) if timed else day_start(day, tz)
                    if w0 < due and ts(doc["fire_at"]) <= wend:
                        expected[doc["spawn_id"]] = doc
    # Completion anchor: the first instance at DTSTART, the next one when it is completed.
    berlin = ZoneInfo("Europe/Berlin")
    user = "user-berlin"
    series = _task(user, 0, task_id="weekly-by-completion",
                   due_at=datetime.combine(date(2026, 3, 10), time(8, 0), tzinfo=berlin),
                   recurrence={"rrule": "FREQ=DAILY;INTERVAL=3", "anchor": "completion",
                               "skip": "omit"})
    events += [{"type": "user.settings", "event_id": "b-s1", "occurred_at": z(w0),
                "user_id": user, "version": 1, "timezone": "Europe/Berlin"},
               _upsert(series, w0)]
    first = spawn(user, "weekly-by-completion", berlin, date(2026, 3, 10), time(8, 0),
                  "task 0", grid, step)
    expected[first["spawn_id"]] = first
    instance = {**_task(user, 1, task_id="instance-1", status="completed",
                        series_id="weekly-by-completion", completed_at=wmid,
                        due_at=datetime.combine(date(2026, 3, 10), time(8, 0), tzinfo=berlin))}
    after = spawn(user, "weekly-by-completion", berlin, date(2026, 6, 18), time(8, 0),
                  "task 0", grid, step, fire=wmid)
    expected[after["spawn_id"]] = after

    # A series whose event is dated three years back: only the occurrences whose day began
    # within the spawn catch-up window of the first tick are spawned (late), then the rest.
    utc, ancient_start = ZoneInfo("UTC"), ts("2023-03-01T10:00:00Z")
    ancient = _task("user-ancient", 0, task_id="ancient-weekly", due_at=ancient_start,
                    recurrence={"rrule": "FREQ=WEEKLY", "anchor": "due", "skip": "omit"})
    events.append(_upsert(ancient, ancient_start - timedelta(days=1)))
    day = ancient_start.date()
    while day_start(day, utc) <= wend:
        doc = spawn("user-ancient", "ancient-weekly", utc, day, time(10, 0), "task 0", grid, step)
        if first_tick(day_start(day, utc), grid, step) - day_start(day, utc) <= SPAWN_WINDOW:
            expected[doc["spawn_id"]] = doc
        day += timedelta(days=7)

    worker = Proc(settings, "worker", log=tmp_path / "worker.log").start()
    try:
        asyncio.run(_run(settings, [
            (events, grid, wmid - step),
            ([_upsert(instance, wmid)], wmid, wend),
        ], int(step.total_seconds())))
    finally:
        worker.kill(signal.SIGTERM)
    got = asyncio.run(read_json(settings, settings.topics.task_commands))
    _compare(got, expected)
    kinds = Counter((n["series_id"].rsplit("-", 1)[-1], "due_date" in n["occurrence"])
                    for n in got if "-" in n["series_id"])
    assert kinds[("omit", True)] < kinds[("backward", True)] == kinds[("forward", True)]
    assert any(n["late"] for n in got) and any(not n["late"] for n in got)
    ancient_spawns = sorted(n["occurrence"]["due_at"] for n in got
                            if n["series_id"] == "ancient-weekly")
    assert ancient_spawns[0] == "2026-02-25T10:00:00Z" and len(ancient_spawns) > 50
