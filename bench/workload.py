"""What the benchmarks feed both sides: task events for the project, rows for the peer.

N tasks over N/10 users (ten tasks a user), one reminder each, all falling due on one
instant (the burst) or spread at a steady rate (lateness). The peer's rows carry the same
``reminder.due`` document the project emits for the same task, so both sides publish
records of the same size to the same broker. Pure: instants are passed in.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from schemas import BeforeReminder, ReminderDue, format_instant
from streams import codec
from streams.timeline.planning import reminder_id

TASKS_PER_USER = 10
REMINDER_BEFORE = timedelta(minutes=15)


def user_of(i: int) -> str:
    return f"u{i // TASKS_PER_USER:07d}"


def task_event(i: int, fire_at: datetime, occurred_at: datetime) -> dict[str, Any]:
    """``task.upserted`` of task i: one reminder, 15 minutes before due, at ``fire_at``."""
    return {
        "type": "task.upserted", "event_id": f"bench-{i}",
        "occurred_at": format_instant(occurred_at),
        "task": {
            "task_id": f"t{i:08d}", "user_id": user_of(i), "version": 1,
            "title": f"benchmark task {i}", "status": "open", "completed_at": None,
            "due_at": format_instant(fire_at + REMINDER_BEFORE), "due_date": None,
            "reminders": [{"before_minutes": 15}], "recurrence": None, "series_id": None,
        },
    }


def burst_events(n: int, fire_at: datetime) -> Iterator[dict[str, Any]]:
    """n tasks whose reminders all fall due on ``fire_at`` (planned a day before)."""
    occurred_at = fire_at - timedelta(days=1)
    return (task_event(i, fire_at, occurred_at) for i in range(n))


def steady_events(rate_per_s: int, duration_s: float, first_fire_at: datetime,
                  occurred_at: datetime) -> Iterator[dict[str, Any]]:
    """Reminders due at ``rate_per_s`` for ``duration_s``, at millisecond instants off the
    tick grid, so each waits for the next tick as real ones do."""
    n = int(rate_per_s * duration_s)
    step_us = 1_000_000 / rate_per_s
    return (task_event(i, first_fire_at + timedelta(microseconds=round(i * step_us / 1000) * 1000),
                       occurred_at) for i in range(n))


def peer_row(i: int, fire_at: datetime) -> tuple[int, str, datetime, bytes]:
    """The peer's row for task i: (id, user_id, fire_at, the reminder.due JSON it publishes)."""
    user, task = user_of(i), f"t{i:08d}"
    doc = ReminderDue(
        notification_id=reminder_id(user, task, fire_at), user_id=user, task_id=task,
        task_version=1, title=f"benchmark task {i}", due_at=fire_at + REMINDER_BEFORE,
        reminder=BeforeReminder(before_minutes=15), fire_at=fire_at, tick_at=fire_at,
        late=False)
    return i, user, fire_at, codec.dumps(doc)
