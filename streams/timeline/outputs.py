"""A fired reminder as the timeline decides it, and its wire bytes without pydantic.

A burst emits one ``reminder.due`` per fire; building and serialising a validated
``schemas.ReminderDue`` for each cost more than everything else a fire does. A
``ReminderFired`` holds the same fields (its ids and values decided by ``state`` and
``planning``, so nothing needs validating), the instants shared by a tick already as text,
and writes exactly the bytes ``codec.dumps(fired.model())`` writes (a golden test holds
the two together). ``model()`` is the validated wire model, for tests and tools. No IO and
no clock here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal

import orjson

from schemas import AtReminder, BeforeReminder, ReminderDue


# Not frozen: a frozen dataclass sets each of its 15 fields through object.__setattr__,
# which made building one a twentieth of a burst; nothing mutates or hashes it.
@dataclass(slots=True)
class ReminderFired:
    """One ``reminder.due``; ``fire_text``, ``tick_text``, ``due_text`` and ``at_text`` are
    ``fire_at``, ``tick_at``, ``due_at`` and an "at" reminder's instant (None for a
    "before" reminder) in their wire form, formatted once per distinct instant of a tick:
    formatting was a fifth of a burst's CPU when done per fire."""

    type: ClassVar[Literal["reminder.due"]] = "reminder.due"
    notification_id: str
    user_id: str
    task_id: str
    task_version: int
    title: str
    due_at: datetime
    reminder: BeforeReminder | AtReminder
    fire_at: datetime
    tick_at: datetime
    late: bool
    fire_text: str
    tick_text: str
    due_text: str
    at_text: str | None

    def wire(self) -> bytes:
        """The record's value: the bytes of ``codec.dumps(self.model())``, key for key."""
        reminder: dict[str, Any]
        if isinstance(self.reminder, BeforeReminder):
            reminder = {"before_minutes": self.reminder.before_minutes}
        else:
            reminder = {"at": self.at_text}
        return orjson.dumps({
            "type": "reminder.due", "notification_id": self.notification_id,
            "user_id": self.user_id, "task_id": self.task_id,
            "task_version": self.task_version, "title": self.title,
            "due_at": self.due_text, "reminder": reminder,
            "fire_at": self.fire_text, "tick_at": self.tick_text, "late": self.late,
        })

    def model(self) -> ReminderDue:
        """The validated wire model of the same notification."""
        return ReminderDue(
            type="reminder.due", notification_id=self.notification_id, user_id=self.user_id,
            task_id=self.task_id, task_version=self.task_version, title=self.title,
            due_at=self.due_at, reminder=self.reminder, fire_at=self.fire_at,
            tick_at=self.tick_at, late=self.late)
