"""The spawn sink: each ``task.spawn`` on ``todo.task-commands`` becomes a task row.

    todo.task-commands ──(group <app>-spawnsink, read_committed)──► PostgreSQL
                                                   tasks row + task.upserted outbox row
                       └──► scheduler.dead-letters (malformed or rejected commands)

Delivery is at-least-once from Kafka and idempotent in PostgreSQL, hence effectively once.
A partition's batch is stored in one PostgreSQL transaction; its dead letters are then sent
and acknowledged; only after both is the batch's offset committed to Kafka. A crash in between
redelivers the batch, and storing it again changes nothing: the row is inserted with
``INSERT … ON CONFLICT (series_id, occurrence_key) DO NOTHING`` (an occurrence whose instance
was archived since counts as present), and its outbox row is written by the same statement
only when the row is new. Every value of the row and of its event is a function of the spawn
(``task_id`` and ``event_id`` are UUIDv5 of ``spawn_id``; ``occurred_at``, ``created_at`` and
``updated_at`` are the spawn's ``tick_at``), so a redelivery cannot write anything different.
Dead letters may be sent twice by such a redelivery (at-least-once).
A record that cannot be decoded or mapped to a row (over ``MAX_RECORD_BYTES``, or a
template past today's input limits) is dead-lettered, never allowed to stop the sink.

While PostgreSQL is unavailable the batch is retried with exponential backoff and full jitter,
and nothing past it is committed. A batch PostgreSQL rejects for good (a constraint) is stored
spawn by spawn, and the spawns it still rejects go to the dead letters with the SQLSTATE.

Owns decoding spawns, the spawn → row mapping (``spawned``, pure) and the consume/store/commit
loop. Reads no clock: no stored value depends on when the sink ran. Logs carry ids and counts,
never titles.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from schemas import Occurrence, SpawnTemplate, Task, TaskSpawn, TaskUpserted
from schemas.wire import WireError, dumps, loads
from streams import codec, retry
from streams.errors import DatabaseError, InvalidEvent, Rejected, SchedulerError, TransientError
from streams.kafka import client as kafka
from streams.kafka.client import Output, Record
from streams.kafka.engine import caused_by_record, dead_letter, failure_reason
from streams.postgres.connector import Connector
from streams.postgres.spawns import PgSpawnStore
from streams.processes import lifecycle
from streams.settings import Settings
from streams.stores import SpawnedTask, SpawnStore
from streams.telemetry import metrics
from streams.telemetry.logs import fields
from streams.timeline.planning import instant_key

log = logging.getLogger("cronorch.spawnsink")
T = TypeVar("T")
ROLE = "spawnsink"
# The namespace of the ids the sink derives from a spawn_id (task_id, event_id).
_NAMESPACE = uuid.UUID("5f742d5e-4ce1-487a-9990-bfac02d0971a")
MAX_DELAY_S = 30.0


# --- decoding and mapping (pure) --------------------------------------------------------------


def _known(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` without the keys TaskSpawn does not know.

    TaskSpawn is strict because the worker writes it; as an input here it follows DESIGN §3:
    readers ignore unknown fields.
    """
    out = {k: v for k, v in document.items() if k in TaskSpawn.model_fields}
    for key, model in (("occurrence", Occurrence), ("template", SpawnTemplate)):
        nested = out.get(key)
        if isinstance(nested, dict):
            out[key] = {k: v for k, v in nested.items() if k in model.model_fields}
    return out


def decode_spawn(value: bytes | None) -> TaskSpawn:
    """A ``task.spawn`` command, or ``InvalidEvent`` with a reason that is safe to log."""
    value = codec.checked_size(value)
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise InvalidEvent("invalid JSON") from None
    if not isinstance(document, dict):
        raise InvalidEvent("expected a JSON object")
    kind = document.get("type")
    if kind is None:
        raise InvalidEvent("missing field 'type'")
    if kind != "task.spawn":
        shown = kind[:40] if isinstance(kind, str) else type(kind).__name__
        raise InvalidEvent(f"unknown command type {shown!r}")
    try:
        return loads(TaskSpawn, orjson.dumps(_known(document)))
    except WireError as exc:
        raise InvalidEvent(exc.reason) from None


def occurrence_key(occurrence: Occurrence) -> str:
    """The key of an occurrence in its series: the local date, or the due instant (UTC, Z).

    The same key the worker's planning uses (``planning.SpawnFire.occurrence_key``).
    """
    if occurrence.due_date is not None:
        return occurrence.due_date.isoformat()
    assert occurrence.due_at is not None  # Occurrence has exactly one of them
    return instant_key(occurrence.due_at)


def task_id_of(spawn_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"task|{spawn_id}"))


def event_id_of(spawn_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"task.upserted|{spawn_id}"))


def spawned(spawn: TaskSpawn) -> SpawnedTask:
    """The task row and task.upserted event of a spawn: version 1, open, no recurrence."""
    task = Task(task_id=task_id_of(spawn.spawn_id), user_id=spawn.user_id, version=1,
                title=spawn.template.title, status="open", completed_at=None,
                due_at=spawn.occurrence.due_at, due_date=spawn.occurrence.due_date,
                reminders=list(spawn.template.reminders), recurrence=None,
                series_id=spawn.series_id)
    event = TaskUpserted(type="task.upserted", event_id=event_id_of(spawn.spawn_id),
                         occurred_at=spawn.tick_at, task=task)
    reminders = [r.model_dump(mode="json") for r in spawn.template.reminders]
    return SpawnedTask(
        task_id=task.task_id, user_id=task.user_id, title=task.title, due_at=task.due_at,
        due_date=task.due_date, reminders_json=orjson.dumps(reminders).decode(),
        series_id=spawn.series_id, occurrence_key=occurrence_key(spawn.occurrence),
        created_at=spawn.tick_at, event_json=dumps(event).decode())


# --- the sink ---------------------------------------------------------------------------------


class SpawnSink:
    """Stores batches of task-commands records; IO through ``db`` and ``producer``."""

    def __init__(self, settings: Settings, db: SpawnStore, producer: Any, *,
                 rng: random.Random | None = None, base_delay_s: float = 0.5) -> None:
        self.settings = settings
        self.backoff = retry.Backoff(base_s=base_delay_s, cap_s=MAX_DELAY_S)
        self.db = db
        self.producer = producer
        self.rng = rng or random.Random()
        self.counts: Counter[str] = Counter()

    async def store(self, records: list[Record], stop: asyncio.Event) -> bool:
        """Store one partition's batch and send its dead letters; False if stopped first.

        True means the batch's offset may be committed.
        """
        accepted: list[tuple[Record, SpawnedTask]] = []
        letters: list[Output] = []
        for record in records:
            try:
                accepted.append((record, spawned(decode_spawn(record.value))))
            except Exception as exc:
                # A template past today's input limits (written before them) fails the row's
                # own Task model: that is this record's fault too, never the sink's.
                if not caused_by_record(exc):
                    raise
                letters.append(self._dead_letter(record, failure_reason(exc, "mapping")))
        if accepted:
            try:
                new = await self._retrying(
                    functools.partial(self.db.insert_spawned, [t for _, t in accepted]), stop)
            except DatabaseError as exc:
                log.warning("batch rejected by PostgreSQL: storing spawn by spawn", extra=fields(
                    sqlstate=exc.sqlstate, records=len(accepted)))
                new = await self._one_by_one(accepted, letters, stop)
            if new is None:
                return False
            inserted = sum(new)
            self.counts["inserted"] += inserted
            self.counts["duplicates"] += len(new) - inserted
            metrics.SPAWNS.labels("inserted").inc(inserted)
            metrics.SPAWNS.labels("duplicate").inc(len(new) - inserted)
        if letters:
            if await self._retrying(functools.partial(self._send, letters), stop) is None:
                return False
            self.counts["dead_letters"] += len(letters)
            metrics.DEAD_LETTERS.labels(ROLE).inc(len(letters))
            metrics.SPAWNS.labels("dead_letter").inc(len(letters))
        self.counts["consumed"] += len(records)
        return True

    async def _one_by_one(self, accepted: list[tuple[Record, SpawnedTask]],
                          letters: list[Output], stop: asyncio.Event) -> list[bool] | None:
        new: list[bool] = []
        for record, task in accepted:
            try:
                one = await self._retrying(functools.partial(self.db.insert_spawned, [task]),
                                           stop)
            except DatabaseError as exc:
                letters.append(self._dead_letter(
                    record, f"rejected by PostgreSQL (SQLSTATE {exc.sqlstate})"))
                continue
            if one is None:
                return None
            new.extend(one)
        return new

    def _dead_letter(self, record: Record, reason: str) -> Output:
        log.warning("spawn dead-lettered", extra=fields(
            partition=record.partition, offset=record.offset, reason=reason))
        return dead_letter(self.settings, record, reason)

    async def _send(self, outputs: list[Output]) -> int:
        await kafka.send(self.producer, outputs)
        return len(outputs)

    async def _retrying(self, op: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T | None:
        """``op()`` retried on retriable errors with backoff and full jitter; None if stopped."""
        started = time.monotonic()

        def on_retry(exc: SchedulerError, failures: int, delay_s: float) -> None:
            log.warning("unavailable: retrying", extra=fields(
                error_class=type(exc).__name__, error_message=str(exc)[:300],
                waited_s=round(time.monotonic() - started, 1)))
            self.counts["retries"] += 1

        return await retry.call(op, backoff=self.backoff, stop=stop, rng=self.rng,
                                on_retry=on_retry)


# --- the process ------------------------------------------------------------------------------


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """``cronorch spawn-sink``: consume task-commands until SIGTERM/SIGINT (or ``stop``)."""
    stop = await lifecycle.start(settings, stop)
    db = await Connector.open(settings)
    producer = kafka.producer(settings, None)
    consumer = kafka.consumer(settings, settings.topics.task_commands,
                              group_id=settings.group_id(ROLE),
                              session_timeout_ms=10_000, heartbeat_interval_ms=1_000)
    sink = SpawnSink(settings, PgSpawnStore(db), producer)
    started = time.monotonic()
    try:
        await db.wait_for_schema()
        await kafka.start(producer, consumer)
        log.info("spawn sink started", extra=fields(group=settings.group_id(ROLE)))
        last_summary = time.monotonic()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            for tp, msgs in batches.items():
                records = [kafka.to_record(m) for m in msgs]
                if not await sink.store(records, stop):
                    return  # stopped before the batch was stored: not committed
                try:
                    async with kafka.translated():
                        await consumer.commit({tp: records[-1].offset + 1})
                except (TransientError, Rejected) as exc:
                    # Lost the partition in a rebalance (or the broker): its next owner
                    # reads the batch again, and storing it again changes nothing.
                    log.warning("offset commit failed: the batch will be redelivered",
                                extra=fields(partition=tp.partition,
                                             error_class=type(exc.__cause__ or exc).__name__))
            if time.monotonic() - last_summary >= 30:
                _summary("spawn sink summary", sink, started)
                last_summary = time.monotonic()
    finally:
        await kafka.stop_quietly(consumer, producer)
        await db.close()
        _summary("spawn sink stopped", sink, started)


def _summary(event: str, sink: SpawnSink, started: float) -> None:
    c = sink.counts
    log.info(event, extra=fields(
        consumed=c["consumed"], inserted=c["inserted"], duplicates=c["duplicates"],
        dead_letters=c["dead_letters"], retries=c["retries"],
        duration_s=round(time.monotonic() - started, 3)))
