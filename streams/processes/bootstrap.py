"""Bootstrap: a snapshot of PostgreSQL published to ``todo.task-events``.

Publishes every user's settings (``user.settings``), then every open task
(``task.upserted``), keyed by ``user_id``, from one REPEATABLE READ snapshot, so a worker
starting from empty state learns what the Todo database holds. Settings go first and each
chunk is acknowledged before the next is sent, so in every partition a user's settings precede
the user's tasks.

Idempotent and resumable by nature: each event carries the row's version, and the worker
ignores a version it has already applied, so re-running (after a crash, or on a live system)
only re-publishes what consumers drop. ``event_id`` is a function of (entity, version); every
event's ``occurred_at`` is the snapshot's ``as_of`` instant — a snapshot states the entity as
of then, so the worker plans nothing before it (no reminders of the past, no spawns of past
occurrences the user may have deleted). The same database and ``as_of`` give the same bytes.

A row that does not make a valid event (say, malformed reminders written by hand) is skipped,
counted and logged by id with a reason that holds no user text. The progress bar goes to the
given stream as plain text (``\\r12000/50000 tasks (24%)``). Owns the row → event mapping; all
SQL is in the PostgreSQL adapter; ``as_of`` is passed in.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

import orjson

from schemas import TaskUpserted, UserSettings
from schemas.wire import WireError, dumps, loads
from streams.kafka import client as kafka
from streams.kafka.client import Output
from streams.postgres.connector import Connector
from streams.postgres.tasks import PgTaskStore
from streams.settings import Settings
from streams.telemetry.logs import fields
from streams.telemetry.progress import Progress

log = logging.getLogger("cronorch.bootstrap")
_NAMESPACE = uuid.UUID("0b7d2c56-7f0e-4c53-8d0a-3f1e9c2b6a41")
MAX_SKIPPED_LOGGED = 100


def _json(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def settings_event(row: dict[str, Any], as_of: datetime) -> UserSettings:
    """A ``user.settings`` event from a user_settings row (``WireError`` if it is invalid)."""
    doc = {"type": "user.settings",
           "event_id": str(uuid.uuid5(_NAMESPACE, f"user.settings|{row['user_id']}|"
                                                  f"{row['version']}")),
           "occurred_at": as_of, "user_id": row["user_id"], "version": row["version"],
           "timezone": row["timezone"], "digest_time": row["digest_time"],
           "dst_policy": _json(row["dst_policy"])}
    return loads(UserSettings, orjson.dumps(doc))


def task_event(row: dict[str, Any], as_of: datetime) -> TaskUpserted:
    """A ``task.upserted`` event from a tasks row (``WireError`` if it is invalid)."""
    task = {k: row[k] for k in ("task_id", "user_id", "version", "title", "status",
                                "completed_at", "due_at", "due_date", "series_id")}
    task["reminders"] = _json(row["reminders"]) or []
    task["recurrence"] = _json(row["recurrence"])
    doc = {"type": "task.upserted",
           "event_id": str(uuid.uuid5(_NAMESPACE, f"task|{row['task_id']}|{row['version']}")),
           "occurred_at": as_of, "task": task}
    return loads(TaskUpserted, orjson.dumps(doc))


async def publish_snapshot(settings: Settings, db: PgTaskStore, producer: Any, *,
                           as_of: datetime, chunk_size: int = 1000,
                           progress: TextIO | None = None) -> dict[str, int]:
    """Publish settings then open tasks; returns counts per kind (published, invalid)."""
    counts: Counter[str] = Counter()
    skipped: list[dict[str, Any]] = []
    topic = settings.topics.task_events
    phases: list[tuple[str, str, str, Callable[[dict[str, Any], datetime], Any]]] = [
        ("user settings", "user_settings", "snapshot_user_settings", settings_event),
        ("tasks", "open_tasks", "snapshot_open_tasks", task_event),
    ]
    async with db.snapshot() as snap:
        totals = await snap.fetchrow("snapshot_counts")
        for label, kind, query, build in phases:
            bar = Progress(progress, label, int(totals[kind]))
            async for rows in snap.chunks(query, chunk_size):
                outputs: list[Output] = []
                for row in rows:
                    try:
                        event = build(row, as_of)
                    except WireError as exc:
                        counts[f"{kind}_invalid"] += 1
                        skipped.append({"kind": kind, "user_id": row["user_id"],
                                        "task_id": row.get("task_id"), "reason": exc.reason})
                        continue
                    outputs.append(Output(topic, row["user_id"].encode(), dumps(event)))
                await kafka.send(producer, outputs)
                counts[kind] += len(outputs)
                bar.add(len(rows))
            bar.end()
            # Logged after the bar so the lines do not cut through it; ids only.
            for item in skipped[:MAX_SKIPPED_LOGGED]:
                log.warning("row skipped: not a valid event", extra=fields(**item))
            if len(skipped) > MAX_SKIPPED_LOGGED:
                log.warning("more rows skipped", extra=fields(
                    kind=kind, count=len(skipped) - MAX_SKIPPED_LOGGED))
            skipped.clear()
    return {"user_settings": counts["user_settings"], "open_tasks": counts["open_tasks"],
            "user_settings_invalid": counts["user_settings_invalid"],
            "open_tasks_invalid": counts["open_tasks_invalid"]}


async def run(settings: Settings, *, as_of: datetime, chunk_size: int = 1000,
              progress: TextIO | None = None) -> dict[str, int]:
    """``cronorch bootstrap``: connect, publish the snapshot, close."""
    await kafka.wait_ready(settings)
    await kafka.ensure_topics(settings)
    db = await Connector.open(settings)
    producer = kafka.producer(settings, None)
    try:
        await kafka.start(producer)
        result = await publish_snapshot(settings, PgTaskStore(db), producer, as_of=as_of,
                                        chunk_size=chunk_size, progress=progress)
        log.info("bootstrap finished", extra=fields(**result))
        return result
    finally:
        try:
            await producer.stop()
        finally:
            await db.close()
