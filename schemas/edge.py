"""The edge: what records read from a topic are decoded with (``TASK_EVENT_ADAPTER``,
``TIMELINE_ADAPTER``), the input models held to the bounds of ``schemas.limits``.

The models of ``schemas.events`` stay lenient, so that state stored before the limits (the
worker's changelog, a spawn's template) still loads. Each class here mirrors one of them,
under the same name, with the bounds written as field constraints that pydantic-core checks
while it validates: lengths, ranges and item counts natively, the instant range in the one
Python call per instant that converts it to UTC (``values.InputInstant``), the RRULE parsed
in full by the time core once per distinct rule. Nothing walks a decoded event again.

Each adapter shows the lenient union's JSON Schema and validates with the mirrors' core
schema in which every mirror class is replaced by the class it mirrors: a decoded record is
made of the ordinary ``schemas.events`` classes, equal to the same record built any other
way. (Being validation, not construction, an instance of a lenient class handed to
``validate_python`` is taken as it is; records are decoded from bytes.) Must not import
faust, aiokafka, asyncpg or ``streams`` except, through ``schemas.events``, the time core's
RRULE parser.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, TypeAlias, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    Discriminator,
    Field,
    Strict,
    StringConstraints,
    Tag,
    TypeAdapter,
)
from pydantic_core import PydanticCustomError, SchemaValidator

from schemas import events
from schemas.events import TaskEvent, rule_problem
from schemas.limits import (
    EARLIEST_DATE,
    LATEST_DATE,
    MAX_BEFORE_MINUTES,
    MAX_ID_CHARS,
    MAX_REMINDERS,
    MAX_TITLE_CHARS,
    MAX_VERSION,
)
from schemas.ticks import Tick, TimelineRecord
from schemas.values import InputInstant, LocalDate

__all__ = ["TASK_EVENT_ADAPTER", "TIMELINE_ADAPTER"]

M = TypeVar("M", bound=BaseModel)
# mirror class -> the lenient class it stands for in the decoding schema
_MIRRORED: dict[type[BaseModel], type[BaseModel]] = {}


def _mirror(cls: type[M]) -> type[M]:
    (base,) = cls.__bases__
    assert issubclass(base, BaseModel) and cls.__name__ == base.__name__
    assert cls.model_fields.keys() == base.model_fields.keys()
    _MIRRORED[cls] = base
    return cls


def _date_in_range(value: date) -> date:
    if not EARLIEST_DATE <= value <= LATEST_DATE:
        raise PydanticCustomError(
            "local_date_range", "Input should be a local date between {earliest} and {latest}",
            {"earliest": EARLIEST_DATE.isoformat(), "latest": LATEST_DATE.isoformat()})
    return value


def _rule_within_limits(rrule: str) -> str:
    # The outline first, so that a rule without one reads as it does in the lenient model.
    events.Recurrence._outline(rrule)
    problem = rule_problem(rrule)
    if problem is not None:
        raise PydanticCustomError("input_limit", "{reason}", {"reason": problem})
    return rrule


Ident: TypeAlias = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
Version: TypeAlias = Annotated[int, Strict(), Field(ge=1, le=MAX_VERSION)]
InputDate: TypeAlias = Annotated[LocalDate, AfterValidator(_date_in_range)]


@_mirror
class BeforeReminder(events.BeforeReminder):
    before_minutes: Annotated[int, Strict(), Field(ge=0, le=MAX_BEFORE_MINUTES)]


@_mirror
class AtReminder(events.AtReminder):
    at: InputInstant


Reminder: TypeAlias = Annotated[
    Annotated[BeforeReminder, Tag("BeforeReminder")] | Annotated[AtReminder, Tag("AtReminder")],
    Discriminator(
        events._reminder_tag,
        custom_error_type="reminder_shape",
        custom_error_message="a reminder has exactly one of 'before_minutes' or 'at'",
    ),
]


@_mirror
class Recurrence(events.Recurrence):
    rrule: Annotated[str, StringConstraints(min_length=1), AfterValidator(_rule_within_limits)]


# ``reminders`` narrows the lenient list's item type: mypy sees an incompatible override
# (lists are invariant), pydantic a stricter field of the same name (the point of a mirror).
@_mirror
class Task(events.Task):
    task_id: Ident
    user_id: Ident
    version: Version
    title: Annotated[str, StringConstraints(max_length=MAX_TITLE_CHARS)]
    completed_at: InputInstant | None = None
    due_at: InputInstant | None = None
    due_date: InputDate | None = None
    reminders: Annotated[list[Reminder], Field(max_length=MAX_REMINDERS)] = Field(
        default_factory=list)  # type: ignore[assignment]
    recurrence: Recurrence | None = None
    series_id: Annotated[str, StringConstraints(max_length=MAX_ID_CHARS)] | None = None


@_mirror
class TaskUpserted(events.TaskUpserted):
    event_id: Ident
    occurred_at: InputInstant
    task: Task


@_mirror
class TaskDeleted(events.TaskDeleted):
    event_id: Ident
    occurred_at: InputInstant
    task_id: Ident
    user_id: Ident
    version: Version


@_mirror
class UserSettings(events.UserSettings):
    event_id: Ident
    occurred_at: InputInstant
    user_id: Ident
    version: Version


def _lenient(schema: Any) -> Any:
    """``schema`` (a core schema) with every mirror class replaced by the class it mirrors."""
    if isinstance(schema, dict):
        copied = {key: _lenient(value) for key, value in schema.items()}
        if copied.get("type") == "model" and copied.get("cls") in _MIRRORED:
            copied["cls"] = _MIRRORED[copied["cls"]]
        return copied
    if isinstance(schema, list):
        return [_lenient(item) for item in schema]
    return schema


def _edge_adapter(shown: Any, enforced: Any) -> TypeAdapter[Any]:
    """An adapter with ``shown``'s JSON Schema that validates by ``enforced``'s rules."""
    adapter: TypeAdapter[Any] = TypeAdapter(shown)
    schema = _lenient(TypeAdapter(enforced).core_schema)
    # pydantic-core reuses a complete model class's own validator wherever a schema names
    # that class, which would put the lenient rules back; while this validator is built the
    # mirrored classes read as incomplete, so it is built from the schema given.
    # tests/unit/test_decoding.py proves every bound holds through the adapters.
    for cls in _MIRRORED.values():
        cls.__pydantic_complete__ = False
    try:
        adapter.validator = SchemaValidator(schema)
    finally:
        for cls in _MIRRORED.values():
            cls.__pydantic_complete__ = True
    return adapter


_EdgeTaskEvent: TypeAlias = Annotated[
    TaskUpserted | TaskDeleted | UserSettings, Field(discriminator="type")]
_EdgeTimelineRecord: TypeAlias = Annotated[
    Tick | TaskUpserted | TaskDeleted | UserSettings, Field(discriminator="type")]

TASK_EVENT_ADAPTER: TypeAdapter[TaskEvent] = _edge_adapter(TaskEvent, _EdgeTaskEvent)
TIMELINE_ADAPTER: TypeAdapter[TimelineRecord] = _edge_adapter(
    TimelineRecord, _EdgeTimelineRecord)
