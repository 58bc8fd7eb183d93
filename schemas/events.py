"""Input records on ``todo.task-events``: task upserts and deletions, user settings.

Owns their shapes and the edge checks: non-empty bounded ids, versions ≥ 1, known zones, one
of ``due_at``/``due_date``, the bounds of ``schemas.limits`` (instant range, title length,
reminders per task), and the RRULE fully parsed by the time core, so that nothing a record
carries can make planning raise later. What to plan lives in planning. Must not import
faust, aiokafka, asyncpg or ``streams`` except the time core's RRULE parser.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    Discriminator,
    Field,
    Strict,
    StringConstraints,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas.limits import (
    EARLIEST,
    LATEST,
    LATEST_DATE,
    MAX_BEFORE_MINUTES,
    MAX_REMINDERS,
    MAX_RRULE_CHARS,
    MAX_TITLE_CHARS,
)
from schemas.values import (
    Identifier,
    InputDate,
    InputInstant,
    InputModel,
    LocalTime,
    Version,
    Zone,
)
from streams.errors import InvalidSchedule
from streams.timecore.recurrence import parse_rrule


class BeforeReminder(InputModel):
    """Fires ``before_minutes`` before the task's ``due_at``."""

    before_minutes: Annotated[int, Strict(), Field(ge=0, le=MAX_BEFORE_MINUTES)]


class AtReminder(InputModel):
    """Fires at an absolute instant."""

    at: InputInstant


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
    """A series rule, parsed in full by the time core when decoded (UNTIL range-checked)."""

    rrule: Annotated[str, StringConstraints(min_length=1, max_length=MAX_RRULE_CHARS)]
    anchor: Literal["due", "completion"] = "due"
    skip: Literal["omit", "backward", "forward"] = "omit"

    @field_validator("rrule")
    @classmethod
    def _outline(cls, value: str) -> str:
        if not value.upper().startswith(("FREQ=", "RRULE:")):
            raise PydanticCustomError("rrule_prefix", "rrule must start with 'FREQ=' or 'RRULE:'")
        try:
            rule = parse_rrule(value)
        except InvalidSchedule as exc:
            # The parser's reason names the rule part (COUNT, BYDAY...), quoting at most
            # one item of a rule bounded to MAX_RRULE_CHARS.
            raise PydanticCustomError("rrule", "{reason}", {"reason": str(exc)}) from None
        until = rule.until
        if until is not None:
            day = until.date() if isinstance(until, datetime) else until
            if not EARLIEST.date() <= day <= LATEST_DATE:
                raise PydanticCustomError(
                    "rrule_until", "UNTIL: should be between {earliest} and {latest}",
                    {"earliest": EARLIEST.date().isoformat(),
                     "latest": (LATEST - timedelta(days=1)).date().isoformat()})
        return value


class Task(InputModel):
    """A task as the Todo API sees it; ``due_at`` (timed) and ``due_date`` (all-day) exclude."""

    task_id: Identifier
    user_id: Identifier
    version: Version
    title: Annotated[str, StringConstraints(max_length=MAX_TITLE_CHARS)]
    status: Literal["open", "completed"]
    completed_at: InputInstant | None = None
    due_at: InputInstant | None = None
    due_date: InputDate | None = None
    reminders: Annotated[list[Reminder], Field(max_length=MAX_REMINDERS)] = Field(
        default_factory=list)
    recurrence: Recurrence | None = None
    series_id: Identifier | None = None

    @model_validator(mode="after")
    def _one_due(self) -> Task:
        if self.due_at is not None and self.due_date is not None:
            raise PydanticCustomError("due_conflict", "due_at and due_date are mutually exclusive")
        return self


class TaskUpserted(InputModel):
    type: Literal["task.upserted"]
    event_id: Identifier
    occurred_at: InputInstant
    task: Task


class TaskDeleted(InputModel):
    type: Literal["task.deleted"]
    event_id: Identifier
    occurred_at: InputInstant
    task_id: Identifier
    user_id: Identifier
    version: Version


class DstPolicy(InputModel):
    """How a local time is resolved in a DST gap (``nonexistent``) or fold (``ambiguous``)."""

    nonexistent: Literal["shift_forward", "gap_edge", "skip"] = "shift_forward"
    ambiguous: Literal["first", "second", "both"] = "first"


class UserSettings(InputModel):
    type: Literal["user.settings"]
    event_id: Identifier
    occurred_at: InputInstant
    user_id: Identifier
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
