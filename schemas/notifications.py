"""Output records on ``todo.notifications`` (reminders, digests) and ``todo.task-commands``
(spawns of recurring tasks).

Owns their shapes only; ids and instants are decided by planning. Outputs forbid unknown
fields and write every key (``null`` included), except ``Occurrence``, which writes only the
key that is set. Must not import faust, aiokafka, asyncpg or ``streams``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    Field,
    GetJsonSchemaHandler,
    SerializerFunctionWrapHandler,
    StrictBool,
    TypeAdapter,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from schemas.events import Reminder
from schemas.values import Count, Instant, LocalDate, NonEmptyStr, OutputModel, Version, Zone


class ReminderDue(OutputModel):
    type: Literal["reminder.due"] = "reminder.due"
    notification_id: NonEmptyStr
    user_id: NonEmptyStr
    task_id: NonEmptyStr
    task_version: Version
    title: str
    due_at: Instant
    reminder: Reminder
    fire_at: Instant
    tick_at: Instant
    late: StrictBool


class DigestTask(OutputModel):
    task_id: NonEmptyStr
    title: str
    due_at: Instant | None
    due_date: LocalDate | None


class DigestDaily(OutputModel):
    type: Literal["digest.daily"] = "digest.daily"
    notification_id: NonEmptyStr
    user_id: NonEmptyStr
    timezone: Zone
    local_date: LocalDate
    fire_at: Instant
    tick_at: Instant
    late: StrictBool
    tasks: list[DigestTask]
    overdue_count: Count
    omitted_count: Count = Field(0, description=(
        "v1.1: open tasks due that local day left out of `tasks` by the digest's size cap "
        "(at most 100 tasks listed, the list kept well under the topic's max.message.bytes)"))


class Occurrence(OutputModel):
    """One occurrence of a series: exactly one of ``due_at`` / ``due_date``."""

    due_at: Instant | None = None
    due_date: LocalDate | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Occurrence:
        if (self.due_at is None) == (self.due_date is None):
            raise PydanticCustomError(
                "occurrence_due", "an occurrence has exactly one of due_at or due_date"
            )
        return self

    @model_serializer(mode="wrap")
    def _only_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # Written by hand: the serializer above hides the fields from pydantic's generator.
        return {
            "title": cls.__name__,
            "description": cls.__doc__,
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "due_at": {"type": "string", "format": "date-time"},
                "due_date": {"type": "string", "format": "date"},
            },
            "oneOf": [{"required": ["due_at"]}, {"required": ["due_date"]}],
        }


class SpawnTemplate(OutputModel):
    title: str
    reminders: list[Reminder]


class TaskSpawn(OutputModel):
    type: Literal["task.spawn"] = "task.spawn"
    spawn_id: NonEmptyStr
    user_id: NonEmptyStr
    series_id: NonEmptyStr
    occurrence: Occurrence
    fire_at: Instant
    tick_at: Instant
    late: StrictBool
    template: SpawnTemplate


Notification: TypeAlias = Annotated[ReminderDue | DigestDaily, Field(discriminator="type")]
NOTIFICATION_ADAPTER: TypeAdapter[Notification] = TypeAdapter(Notification)
