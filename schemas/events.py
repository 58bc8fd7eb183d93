"""Input records on ``todo.task-events``: task upserts and deletions, user settings.

Owns their shapes and shallow checks (non-empty ids, versions ≥ 1, known zones, one of
``due_at``/``due_date``, the outline of a rule). These models stay lenient, so that state
stored before the limits (the worker's changelog, a spawn's template) still loads; records
read from a topic are decoded by ``schemas.edge``, which holds the same classes to the
bounds of ``schemas.limits`` and parses the RRULE in full (``rule_problem``), so that
nothing a record carries can make planning raise later. Must not import faust, aiokafka,
asyncpg or ``streams`` except the time core's RRULE parser.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    Discriminator,
    Field,
    Tag,
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
    Count,
    InputModel,
    Instant,
    LocalDate,
    LocalTime,
    NonEmptyStr,
    Version,
    Zone,
)
from streams.errors import InvalidSchedule
from streams.timecore.recurrence import parse_rrule


class BeforeReminder(InputModel):
    """Fires ``before_minutes`` before the task's ``due_at``."""

    before_minutes: Annotated[Count, Field(json_schema_extra={"maximum": MAX_BEFORE_MINUTES})]


class AtReminder(InputModel):
    """Fires at an absolute instant."""

    at: Instant


def _reminder_tag(value: Any) -> str | None:
    # Called from pydantic-core for every reminder decoded: the common case (a dict) first.
    if isinstance(value, dict):
        before = "before_minutes" in value
        if before is ("at" in value):
            return None
        return "BeforeReminder" if before else "AtReminder"
    if isinstance(value, BeforeReminder):
        return "BeforeReminder"
    if isinstance(value, AtReminder):
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
    """A series rule; its outline here, in full when decoded (``TASK_EVENT_ADAPTER``)."""

    rrule: Annotated[NonEmptyStr, Field(json_schema_extra={"maxLength": MAX_RRULE_CHARS})]
    anchor: Literal["due", "completion"] = "due"
    skip: Literal["omit", "backward", "forward"] = "omit"

    @field_validator("rrule")
    @classmethod
    def _outline(cls, value: str) -> str:
        if not value.upper().startswith(("FREQ=", "RRULE:")):
            raise PydanticCustomError("rrule_prefix", "rrule must start with 'FREQ=' or 'RRULE:'")
        return value


class Task(InputModel):
    """A task as the Todo API sees it; ``due_at`` (timed) and ``due_date`` (all-day) exclude.

    The JSON Schema shows the limits; ``TASK_EVENT_ADAPTER`` enforces them, not the model.
    """

    task_id: NonEmptyStr
    user_id: NonEmptyStr
    version: Version
    title: Annotated[str, Field(json_schema_extra={"maxLength": MAX_TITLE_CHARS})]
    status: Literal["open", "completed"]
    completed_at: Instant | None = None
    due_at: Instant | None = None
    due_date: LocalDate | None = None
    reminders: list[Reminder] = Field(default_factory=list,
                                      json_schema_extra={"maxItems": MAX_REMINDERS})
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


# Users share a handful of rules ("FREQ=DAILY", "FREQ=WEEKLY;BYDAY=MO"): parse each once.
@functools.lru_cache(maxsize=4096)
def rule_problem(rrule: str) -> str | None:
    """Why ``rrule`` is past the bounds of ``schemas.limits`` or refused by the time core's
    parser (naming the rule part, quoting at most one item of a bounded rule), or None."""
    if len(rrule) > MAX_RRULE_CHARS:
        return f"should have at most {MAX_RRULE_CHARS} characters"
    try:
        rule = parse_rrule(rrule)
    except InvalidSchedule as exc:
        return str(exc)
    if rule.until is not None:
        day = rule.until.date() if isinstance(rule.until, datetime) else rule.until
        if not EARLIEST.date() <= day <= LATEST_DATE:
            return (f"UNTIL should be between {EARLIEST.date().isoformat()} and "
                    f"{(LATEST - timedelta(days=1)).date().isoformat()}")
    return None


def user_id_of(event: TaskEvent) -> str:
    """The user whose partition the event belongs to (the re-keying key)."""
    if isinstance(event, TaskUpserted):
        return event.task.user_id
    return event.user_id
