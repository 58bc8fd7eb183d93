"""The tests' own model of DESIGN.md section 4 for digests and spawns, from the spec alone.

Independent of ``streams``: local times are resolved by scanning the local day minute by
minute with zoneinfo, month ends by calendar arithmetic. Contract v1.1: a series row (a task
with ``recurrence``) is a template, never listed in a digest nor counted overdue; a digest
lists at most ``DIGEST_MAX_TASKS`` tasks and counts the rest in ``omitted_count``; a spawn
whose local day began more than ``SPAWN_WINDOW`` before its tick is missed. Ids follow
docs/contracts.md: ``uuid5(NAMESPACE, "digest.daily|<user>|<local date>|<fire_at>")`` and
``uuid5(NAMESPACE, "task.spawn|<user>|<series>|<occurrence date or due instant>")``.
"""

from __future__ import annotations

import calendar
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tests.model import NAMESPACE, ts, z

DIGEST_WINDOW = timedelta(hours=3)
DIGEST_MAX_TASKS = 100
SPAWN_WINDOW = timedelta(days=7)


def resolve(d: date, t: time, tz: ZoneInfo, nonexistent: str = "shift_forward",
            ambiguous: str = "first") -> list[datetime]:
    """Every UTC instant (on the minute) whose wall time in ``tz`` is ``d`` ``t``."""
    start = datetime.combine(d, time(), tzinfo=UTC) - timedelta(hours=15)
    wall = datetime.combine(d, t)
    found = []
    for minute in range(0, 40 * 60):
        at = start + timedelta(minutes=minute)
        if at.astimezone(tz).replace(tzinfo=None) == wall:
            found.append(at)
    if found:
        if len(found) == 1 or ambiguous == "both":
            return found
        return [found[0]] if ambiguous == "first" else [found[-1]]
    if nonexistent == "skip":
        return []
    if nonexistent == "gap_edge":
        for minute in range(0, 40 * 60):
            at = start + timedelta(minutes=minute)
            if at.astimezone(tz).replace(tzinfo=None) > wall:
                return [at]
    # shift_forward: the wall time read with the offset in force before the gap
    return [datetime.combine(d, t, tzinfo=tz).astimezone(UTC)]


def day_start(d: date, tz: ZoneInfo) -> datetime:
    return resolve(d, time(), tz, "gap_edge")[0]


def first_tick(at: datetime, grid_start: datetime, step: timedelta) -> datetime:
    n = -(-(at - grid_start) // step)
    return grid_start + max(n, 0) * step


@dataclass
class DigestUser:
    user_id: str
    timezone: str
    digest_time: time
    nonexistent: str = "shift_forward"
    ambiguous: str = "first"


@dataclass
class DigestModel:
    """Digests of users whose tasks never change after creation (the scenario's shape)."""

    grid_start: datetime
    step: timedelta
    tasks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)

    def run(self, phases: list[tuple[DigestUser, datetime, datetime]]) -> None:
        """Each phase: (settings, in force from, to); fires in (from, to], none for a date
        that already fired under an earlier phase of the same user."""
        last_date: dict[str, date] = {}
        for user, start, end in phases:
            tz = ZoneInfo(user.timezone)
            d = start.astimezone(tz).date() - timedelta(days=1)
            while True:
                fires = resolve(d, user.digest_time, tz, user.nonexistent, user.ambiguous)
                if fires and fires[0] > end:
                    break
                for fire in fires:
                    if fire <= start or fire > end:
                        continue
                    if user.user_id in last_date and d <= last_date[user.user_id] and not (
                            user.ambiguous == "both" and d == last_date[user.user_id]):
                        continue
                    last_date[user.user_id] = d
                    self._emit(user, d, fire)
                d += timedelta(days=1)

    def _emit(self, user: DigestUser, d: date, fire: datetime) -> None:
        tz = ZoneInfo(user.timezone)
        tick = first_tick(fire, self.grid_start, self.step)
        assert tick - fire <= DIGEST_WINDOW
        begin, end = day_start(d, tz), day_start(d + timedelta(days=1), tz)
        listed, overdue = [], 0
        for task in self.tasks.get(user.user_id, []):
            if task["status"] != "open" or task.get("recurrence"):
                continue
            if task["due_date"]:
                due = day_start(date.fromisoformat(task["due_date"]), tz)
                today = task["due_date"] == d.isoformat()
            else:
                due = ts(task["due_at"])
                today = begin <= due < end
            if today:
                listed.append((due, task["task_id"], task))
            elif due < begin:
                overdue += 1
        if not listed:
            return
        listed.sort(key=lambda item: (item[0], item[1]))
        nid = str(uuid.uuid5(NAMESPACE, f"digest.daily|{user.user_id}|{d.isoformat()}|{z(fire)}"))
        self.expected[nid] = {
            "type": "digest.daily", "notification_id": nid, "user_id": user.user_id,
            "timezone": user.timezone, "local_date": d.isoformat(), "fire_at": z(fire),
            "tick_at": z(tick), "late": tick > fire,
            "tasks": [{"task_id": t["task_id"], "title": t["title"], "due_at": t["due_at"],
                       "due_date": t["due_date"]} for _, _, t in listed[:DIGEST_MAX_TASKS]],
            "overdue_count": overdue,
            "omitted_count": max(0, len(listed) - DIGEST_MAX_TASKS),
        }


def month_day_occurrences(day: int, months: list[tuple[int, int]], skip: str) -> list[date]:
    """Occurrences of "the ``day``-th of each of ``months``" under an RFC 7529 skip."""
    out = []
    for year, month in months:
        last = calendar.monthrange(year, month)[1]
        if day <= last:
            out.append(date(year, month, day))
        elif skip == "backward":
            out.append(date(year, month, last))
        elif skip == "forward":
            out.append(date(year, month, last) + timedelta(days=1))
    return out


def spawn(user: str, series: str, tz: ZoneInfo, occ_day: date, at: time | None,
          title: str, grid_start: datetime, step: timedelta,
          fire: datetime | None = None) -> dict[str, Any]:
    """The task.spawn of one occurrence (timed when ``at`` is set, else all-day)."""
    if at is None:
        occurrence: dict[str, str] = {"due_date": occ_day.isoformat()}
        key = occ_day.isoformat()
    else:
        due = resolve(occ_day, at, tz)[0]
        occurrence = {"due_at": z(due)}
        key = z(due)
    fire = fire or day_start(occ_day, tz)
    tick = first_tick(fire, grid_start, step)
    sid = str(uuid.uuid5(NAMESPACE, f"task.spawn|{user}|{series}|{key}"))
    return {"type": "task.spawn", "spawn_id": sid, "user_id": user, "series_id": series,
            "occurrence": occurrence, "fire_at": z(fire), "tick_at": z(tick),
            "late": tick > fire, "template": {"title": title, "reminders": []}}


__all__ = ["DIGEST_MAX_TASKS", "SPAWN_WINDOW", "DigestModel", "DigestUser", "day_start",
           "first_tick", "month_day_occurrences", "resolve", "spawn", "ts"]
