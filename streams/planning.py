"""Planning: pure decisions about what fires when (DESIGN.md section 4).

Functions of (state, event or tick) → decisions. No IO, no clock: every instant is passed
in, and the identifiers of what fires are functions of what fires, never of when it was
processed, so a replay of the same log produces the same ids.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from schemas import AtReminder, BeforeReminder, Task

_NAMESPACE = uuid.UUID("6f1c1b8e-3d0a-5c55-9a8e-6d1f4c1e2a77")


class Timeliness(StrEnum):
    ON_TIME = "on_time"
    LATE = "late"
    MISSED = "missed"


def timeliness(fire_at: datetime, tick_at: datetime, window_s: int | None) -> Timeliness:
    """A fire at ``fire_at`` seen at tick ``tick_at``; ``window_s`` None means unlimited."""
    late_s = (tick_at - fire_at).total_seconds()
    if late_s <= 0:
        return Timeliness.ON_TIME
    if window_s is None or late_s <= window_s:
        return Timeliness.LATE
    return Timeliness.MISSED


def notification_id(kind: str, *parts: str) -> str:
    """A deterministic id: UUIDv5 of the kind and what fires."""
    return str(uuid.uuid5(_NAMESPACE, "|".join((kind, *parts))))


def instant_key(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class ReminderFire:
    fire_at: datetime
    reminder: BeforeReminder | AtReminder


def reminder_fires(task: Task, occurred_at: datetime) -> dict[datetime, ReminderFire]:
    """The reminders an open timed task plans, by fire instant.

    A reminder whose instant is at or before the event's ``occurred_at`` is never planned.
    Two reminders landing on the same instant fire once, as the first of them in list order.
    """
    if task.status != "open" or task.due_at is None:
        return {}
    fires: dict[datetime, ReminderFire] = {}
    for reminder in task.reminders:
        if isinstance(reminder, BeforeReminder):
            fire_at = task.due_at - timedelta(minutes=reminder.before_minutes)
        else:
            fire_at = reminder.at
        if fire_at > occurred_at and fire_at not in fires:
            fires[fire_at] = ReminderFire(fire_at, reminder)
    return fires


def reminder_id(user_id: str, task_id: str, fire_at: datetime) -> str:
    return notification_id("reminder.due", user_id, task_id, instant_key(fire_at))
