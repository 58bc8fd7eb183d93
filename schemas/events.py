"""Input records on ``todo.task-events``: task upserts and deletions, user settings.

Owns their shapes and shallow checks (non-empty ids, versions ≥ 1, known zones, one of
``due_at``/``due_date``). Deeper meaning — RRULE grammar, DST resolution, what to plan —
lives in the time core and planning. Must not import faust, aiokafka, asyncpg or ``streams``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeAlias

from pydantic import Discriminator, Field, Tag, TypeAdapter, field_validator, model_validator
from pydantic_core import PydanticCustomError

from schemas.values import (
    Count,
    InputModel,
    Instant,
    LocalDate,
    LocalTime,
    NonEmptyStr,
    Version,
    Zone,
)


class BeforeReminder(InputModel):
    """Fires ``before_minutes`` before the task's ``due_at``."""

    before_minutes: Count


class AtReminder(InputModel):
    """Fires at an absolute instant."""

    at: Instant


def _reminder_tag(value: Any) -> str | None:
    if isinstance(value, BeforeReminder | AtReminder):
        return type(value).__name__
    if not isinstance(value, dict):
        return None
    keys = {"before_minutes", "at"} & value.keys()
    if keys == {"before_minutes"}:
        return "BeforeReminder"
    if keys == {"at"}:
        return "AtReminder"
    return None


# Chosen by which key is present, so a record carrying both keys is rejected rather than
# silently read as one of them (unknown keys are otherwise ignored).
Reminder: TypeAlias = Annotated[
    Annotated[BeforeReminder, Tag("BeforeReminder")] | Annotated[AtReminder, Tag("AtReminder")],
    Discriminator(
        _reminder_tag,
        custom_error_type="reminder_shape",
        custom_error_message="a reminder has exactly one of 'before_minutes' or 'at'",
    ),
]


class Recurrence(InputModel):
    """A series rule; only the RRULE's outline is checked here."""

    rrule: NonEmptyStr
    anchor: Literal["due", "completion"] = "due"
    skip: Literal["omit", "backward", "forward"] = "omit"

    @field_validator("rrule")
    @classmethod
    def _outline(cls, value: str) -> str:
        if not value.upper().startswith(("FREQ=", "RRULE:")):
            raise PydanticCustomError("rrule_prefix", "rrule must start with 'FREQ=' or 'RRULE:'")
        return value


class Task(InputModel):
    """A task as the Todo API sees it; ``due_at`` (timed) and ``due_date`` (all-day) exclude."""

    task_id: NonEmptyStr
    user_id: NonEmptyStr
    version: Version
    title: str
    status: Literal["open", "completed"]
    completed_at: Instant | None = None
    due_at: Instant | None = None
    due_date: LocalDate | None = None
    reminders: list[Reminder] = Field(default_factory=list)
    recurrence: Recurrence | None = None
    series_id: str | None = None

    @model_validator(mode="after")
    def _one_due(self) -> Task:
        if self.due_at is not None and self.due_date is not None:
            raise PydanticCustomError("due_conflict", "due_at and due_date are mutually exclusive")
        return self


class TaskUpserted(InputModel):
    type: Literal["task.upserted"]
    event_id: NonEmptyStr
    occurred_at: Instant
    task: Task


class TaskDeleted(InputModel):
    type: Literal["task.deleted"]
    event_id: NonEmptyStr
    occurred_at: Instant
    task_id: NonEmptyStr
    user_id: NonEmptyStr
    version: Version


class DstPolicy(InputModel):
    """How a local time is resolved in a DST gap (``nonexistent``) or fold (``ambiguous``)."""

    nonexistent: Literal["shift_forward", "gap_edge", "skip"] = "shift_forward"
    ambiguous: Literal["first", "second", "both"] = "first"


class UserSettings(InputModel):
    type: Literal["user.settings"]
    event_id: NonEmptyStr
    occurred_at: Instant
    user_id: NonEmptyStr
    version: Version
    timezone: Zone
    digest_time: LocalTime | None = None
    dst_policy: DstPolicy | None = None


TaskEvent: TypeAlias = Annotated[
    TaskUpserted | TaskDeleted | UserSettings, Field(discriminator="type")
]
TASK_EVENT_ADAPTER: TypeAdapter[TaskEvent] = TypeAdapter(TaskEvent)


def user_id_of(event: TaskEvent) -> str:
    """The user whose partition the event belongs to (the re-keying key)."""
    if isinstance(event, TaskUpserted):
        return event.task.user_id
    return event.user_id
