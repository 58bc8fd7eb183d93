"""Wire formats of cronorch: pydantic models of every record on every topic, their JSON
encoding (``schemas.wire``) and JSON Schema export (``schemas.export``).

Inputs ignore unknown fields, outputs forbid them; all models are frozen. Instants are
aware UTC datetimes written RFC 3339 with ``Z``. This package must not import faust,
aiokafka, asyncpg, settings or anything of ``streams``.
"""

from schemas.deadletters import DeadLetter
from schemas.edge import TASK_EVENT_ADAPTER, TIMELINE_ADAPTER
from schemas.events import (
    AtReminder,
    BeforeReminder,
    DstPolicy,
    Recurrence,
    Reminder,
    Task,
    TaskDeleted,
    TaskEvent,
    TaskUpserted,
    UserSettings,
    user_id_of,
)
from schemas.jobs import JobRun, JobTrigger, JobTriggerKind
from schemas.notifications import (
    NOTIFICATION_ADAPTER,
    DigestDaily,
    DigestTask,
    Notification,
    Occurrence,
    ReminderDue,
    SpawnTemplate,
    TaskSpawn,
)
from schemas.ticks import Tick, TimelineRecord
from schemas.values import (
    InputModel,
    Instant,
    LocalDate,
    LocalTime,
    OutputModel,
    Zone,
    format_instant,
)
from schemas.wire import WireError, dumps, loads

__all__ = [
    "NOTIFICATION_ADAPTER",
    "TASK_EVENT_ADAPTER",
    "TIMELINE_ADAPTER",
    "AtReminder",
    "BeforeReminder",
    "DeadLetter",
    "DigestDaily",
    "DigestTask",
    "DstPolicy",
    "InputModel",
    "Instant",
    "JobRun",
    "JobTrigger",
    "JobTriggerKind",
    "LocalDate",
    "LocalTime",
    "Notification",
    "Occurrence",
    "OutputModel",
    "Recurrence",
    "Reminder",
    "ReminderDue",
    "SpawnTemplate",
    "Task",
    "TaskDeleted",
    "TaskEvent",
    "TaskSpawn",
    "TaskUpserted",
    "Tick",
    "TimelineRecord",
    "UserSettings",
    "WireError",
    "Zone",
    "dumps",
    "format_instant",
    "loads",
    "user_id_of",
]
