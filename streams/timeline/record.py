"""A task as the timeline keeps it in memory: a compact record, not the wire model.

A pending task lives in a worker's memory until it fires, a million of them per worker, so
the per-task size matters: a validated ``schemas.Task`` costs about 2 KB (its ``__dict__``,
the set of fields it was given, one model per reminder), a ``TaskRecord`` a few hundred
bytes (slots; reminders by minutes shared across tasks). It has the attributes planning
reads (``planning.TaskFields``), turns back into the changelog document exactly as
``Task.model_dump(mode="json")`` writes it (``doc``), and is read straight from that
document on restore (``from_doc``) without validating it again: the changelog holds only
what this code wrote. No IO and no clock here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

from schemas import AtReminder, BeforeReminder, Recurrence, Task
from streams.timecore.instants import format_instant, parse_instant

# Reminders "n minutes before" are a handful of values shared by most tasks: one model each.
_BEFORE: dict[int, BeforeReminder] = {}
_BEFORE_MAX = 4096
# An "at" reminder is its own instant; it shares the set of its fields' names instead (a
# set per model is 216 bytes). Frozen: pydantic only reads it (a model_copy copies it).
_AT_FIELDS = cast(set[str], frozenset({"at"}))


def _before(reminder: BeforeReminder) -> BeforeReminder:
    shared = _BEFORE.get(reminder.before_minutes)
    if shared is not None:
        return shared
    if len(_BEFORE) < _BEFORE_MAX:
        _BEFORE[reminder.before_minutes] = reminder
    return reminder


def _at(at: datetime) -> AtReminder:
    # Built from a validated model or from the changelog this code wrote: nothing to check.
    return AtReminder.model_construct(_AT_FIELDS, at=at)


Reminder = BeforeReminder | AtReminder


def _shared(reminders: list[Reminder]) -> tuple[Reminder, ...]:
    return tuple(_before(r) if isinstance(r, BeforeReminder) else _at(r.at) for r in reminders)


@dataclass(frozen=True, slots=True)
class TaskRecord:
    task_id: str
    user_id: str
    version: int
    title: str
    status: str
    completed_at: datetime | None
    due_at: datetime | None
    due_date: date | None
    reminders: tuple[BeforeReminder | AtReminder, ...]
    recurrence: Recurrence | None
    series_id: str | None

    @classmethod
    def of(cls, task: Task, *, user_id: str | None = None,
           task_id: str | None = None) -> TaskRecord:
        """``task`` compacted; ``user_id``/``task_id`` pass strings to share with the state."""
        return cls(task_id or task.task_id, user_id or task.user_id, task.version, task.title,
                   task.status, task.completed_at, task.due_at, task.due_date,
                   _shared(task.reminders), task.recurrence, task.series_id)

    def doc(self) -> dict[str, Any]:
        """The document ``Task.model_dump(mode="json")`` writes for the same task."""
        return {
            "task_id": self.task_id, "user_id": self.user_id, "version": self.version,
            "title": self.title, "status": self.status,
            "completed_at": None if self.completed_at is None
            else format_instant(self.completed_at),
            "due_at": None if self.due_at is None else format_instant(self.due_at),
            "due_date": None if self.due_date is None else self.due_date.isoformat(),
            "reminders": [{"before_minutes": r.before_minutes} if isinstance(r, BeforeReminder)
                          else {"at": format_instant(r.at)} for r in self.reminders],
            "recurrence": None if self.recurrence is None
            else self.recurrence.model_dump(mode="json"),
            "series_id": self.series_id,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any], *, user_id: str | None = None,
                 task_id: str | None = None) -> TaskRecord:
        """A record from its changelog document (``doc``'s form, or any older one that
        ``Task`` reads: missing optional keys take their defaults)."""
        # Built shared as read (not through ``_shared``: an "at" model built twice cost
        # a fifth of a restore).
        reminders: list[BeforeReminder | AtReminder] = []
        for r in doc.get("reminders", ()):
            if "before_minutes" in r:
                shared = _BEFORE.get(r["before_minutes"])
                reminders.append(shared if shared is not None else
                                 _before(BeforeReminder(before_minutes=r["before_minutes"])))
            else:
                reminders.append(_at(parse_instant(r["at"])))
        completed, due, day = doc.get("completed_at"), doc.get("due_at"), doc.get("due_date")
        rule = doc.get("recurrence")
        return cls(
            task_id or doc["task_id"], user_id or sys.intern(doc["user_id"]), doc["version"],
            doc["title"], sys.intern(doc["status"]),  # a few values: held once, not per task
            None if completed is None else parse_instant(completed),
            None if due is None else parse_instant(due),
            None if day is None else date.fromisoformat(day),
            tuple(reminders), None if rule is None else Recurrence.model_validate(rule),
            doc.get("series_id"))
