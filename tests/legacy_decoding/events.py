"""(A frozen copy of schemas/events.py at 1e4ecda: see tests/legacy_decoding/__init__.py.)

Input records on ``todo.task-events``: task upserts and deletions, user settings.

Owns their shapes and shallow checks (non-empty ids, versions ≥ 1, known zones, one of
``due_at``/``due_date``) and, on top, the edge checks of ``TASK_EVENT_ADAPTER`` (what the
codec decodes records with): the bounds of ``schemas.limits`` (instant and date range, title
length, reminders per task, id length, ``before_minutes``) and the RRULE parsed in full by
the time core, so that nothing a record carries can make planning raise later. The models
themselves stay lenient, so that state stored before the limits (the worker's changelog, a
spawn's template) still loads. Must not import faust, aiokafka, asyncpg or ``streams``
except the time core's RRULE parser.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, TypeAlias, TypeVar

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas.limits import (
    EARLIEST,
    EARLIEST_DATE,
    LATEST,
    LATEST_DATE,
    MAX_BEFORE_MINUTES,
    MAX_ID_CHARS,
    MAX_REMINDERS,
    MAX_RRULE_CHARS,
    MAX_TITLE_CHARS,
    MAX_VERSION,
)
from streams.errors import InvalidSchedule
from streams.timecore.recurrence import parse_rrule
from tests.legacy_decoding.values import (
    Count,
    InputModel,
    Instant,
    LocalDate,
    LocalTime,
    NonEmptyStr,
    Version,
    Zone,
    format_instant,
)

T = TypeVar("T")


class BeforeReminder(InputModel):
    """Fires ``before_minutes`` before the task's ``due_at``."""

    before_minutes: Annotated[Count, Field(json_schema_extra={"maximum": MAX_BEFORE_MINUTES})]


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


def limit_violations(event: TaskUpserted | TaskDeleted | UserSettings) -> list[str]:
    """What ``event`` carries past the bounds of ``schemas.limits``, each as ``path: why``
    (paths and rules only, never the values: a title is user text)."""
    problems: list[str] = []

    def instant(path: str, value: datetime | None) -> None:
        if value is not None and not EARLIEST <= value < LATEST:
            problems.append(f"{path}: should be an instant between {format_instant(EARLIEST)} "
                            f"and {format_instant(LATEST)}")

    def ident(path: str, value: str | None) -> None:
        if value is not None and len(value) > MAX_ID_CHARS:
            problems.append(f"{path}: should have at most {MAX_ID_CHARS} characters")

    ident("event_id", event.event_id)
    instant("occurred_at", event.occurred_at)
    version = event.task.version if isinstance(event, TaskUpserted) else event.version
    if version > MAX_VERSION:
        path = "task.version" if isinstance(event, TaskUpserted) else "version"
        problems.append(f"{path}: should be at most {MAX_VERSION} (a bigint)")
    if isinstance(event, UserSettings):
        ident("user_id", event.user_id)
        return problems
    if isinstance(event, TaskDeleted):
        ident("task_id", event.task_id)
        ident("user_id", event.user_id)
        return problems
    task = event.task
    for name in ("task_id", "user_id", "series_id"):
        ident(f"task.{name}", getattr(task, name))
    if len(task.title) > MAX_TITLE_CHARS:
        problems.append(f"task.title: should have at most {MAX_TITLE_CHARS} characters")
    instant("task.due_at", task.due_at)
    instant("task.completed_at", task.completed_at)
    if task.due_date is not None and not EARLIEST_DATE <= task.due_date <= LATEST_DATE:
        problems.append(f"task.due_date: should be a local date between "
                        f"{EARLIEST_DATE.isoformat()} and {LATEST_DATE.isoformat()}")
    if len(task.reminders) > MAX_REMINDERS:
        problems.append(f"task.reminders: should have at most {MAX_REMINDERS} items")
    for i, reminder in enumerate(task.reminders[:MAX_REMINDERS]):
        if isinstance(reminder, AtReminder):
            instant(f"task.reminders.{i}.at", reminder.at)
        elif reminder.before_minutes > MAX_BEFORE_MINUTES:
            problems.append(f"task.reminders.{i}.before_minutes: should be at most "
                            f"{MAX_BEFORE_MINUTES} (366 days)")
    if task.recurrence is not None:
        problems.extend(_rule_violations(task.recurrence.rrule))
    return problems


# Users share a handful of rules ("FREQ=DAILY", "FREQ=WEEKLY;BYDAY=MO"): parse each once.
@functools.lru_cache(maxsize=4096)
def _rule_violations(rrule: str) -> tuple[str, ...]:
    path = "task.recurrence.rrule"
    if len(rrule) > MAX_RRULE_CHARS:
        return (f"{path}: should have at most {MAX_RRULE_CHARS} characters",)
    try:
        rule = parse_rrule(rrule)
    except InvalidSchedule as exc:
        # Names the rule part (COUNT, BYDAY...), quoting at most one item of a bounded rule.
        return (f"{path}: {exc}",)
    if rule.until is not None:
        day = rule.until.date() if isinstance(rule.until, datetime) else rule.until
        if not EARLIEST.date() <= day <= LATEST_DATE:
            return (f"{path}: UNTIL should be between {EARLIEST.date().isoformat()} and "
                    f"{(LATEST - timedelta(days=1)).date().isoformat()}",)
    return ()


def within_limits(event: T) -> T:
    """``event`` if it is within ``schemas.limits``, else a validation error naming the
    fields (the edge check of ``TASK_EVENT_ADAPTER`` and ``TIMELINE_ADAPTER``)."""
    if isinstance(event, TaskUpserted | TaskDeleted | UserSettings):
        problems = limit_violations(event)
        if problems:
            raise PydanticCustomError("input_limit", "{reason}",
                                      {"reason": "; ".join(problems[:3])})
    return event


TASK_EVENT_ADAPTER: TypeAdapter[TaskEvent] = TypeAdapter(
    Annotated[TaskEvent, AfterValidator(within_limits)])


def user_id_of(event: TaskEvent) -> str:
    """The user whose partition the event belongs to (the re-keying key)."""
    if isinstance(event, TaskUpserted):
        return event.task.user_id
    return event.user_id
