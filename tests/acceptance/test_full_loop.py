"""The full loop against real PostgreSQL and Kafka, every hop a real process:

a recurring series written by the Todo API (task row + outbox row) → relay →
todo.task-events → worker → task.spawn → spawn sink → new task row + outbox row → relay →
worker → that instance's reminder fires, and the day's digest lists the instance. The series
row itself is a template (contract v1.1): no reminder and no digest line of its own.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from pydantic import SecretStr

from streams.processes import tickproducer
from streams.settings import Settings
from tests.integration.conftest import database, pg_stack  # noqa: F401 - fixtures
from tests.model import ts, z
from tests.support import Proc, caught_up, eventually, read_json

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

T0 = ts("2026-05-01T00:00:00Z")
DAY1 = T0 + timedelta(days=1)


async def _todo_api_writes_series(url: str) -> None:
    """What the Todo API does: the rows and their outbox events, in one transaction."""
    settings_event = {"type": "user.settings", "event_id": "s1", "occurred_at": z(T0),
                      "user_id": "ana", "version": 1, "timezone": "Europe/Lisbon",
                      "digest_time": None}
    series = {"task_id": "series-1", "user_id": "ana", "version": 1, "title": "Stand-up",
              "status": "open", "completed_at": None, "due_at": z(DAY1 + timedelta(hours=9)),
              "due_date": None, "reminders": [{"before_minutes": 30}],
              "recurrence": {"rrule": "FREQ=DAILY;COUNT=3", "anchor": "due", "skip": "omit"},
              "series_id": None}
    event = {"type": "task.upserted", "event_id": "e1", "occurred_at": z(T0), "task": series}
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO user_settings (user_id, version, timezone) VALUES ('ana', 1, "
                "'Europe/Lisbon')")
            await conn.execute(
                "INSERT INTO tasks (task_id, user_id, version, title, status, due_at, "
                "reminders, recurrence) VALUES ($1, 'ana', 1, 'Stand-up', 'open', $2, $3, $4)",
                "series-1", DAY1 + timedelta(hours=9), orjson.dumps(series["reminders"]).decode(),
                orjson.dumps(series["recurrence"]).decode())
            for doc in (settings_event, event):
                await conn.execute(
                    "INSERT INTO outbox (user_id, event_type, payload) VALUES ('ana', $1, $2)",
                    doc["type"], orjson.dumps(doc).decode())
    finally:
        await conn.close()


async def _instances(url: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT task_id, series_id, due_at, title FROM tasks "
                                "WHERE series_id = 'series-1' ORDER BY due_at")
        return [dict(r) for r in rows]
    finally:
        await conn.close()


def test_series_in_postgres_spawns_an_instance_whose_reminder_fires(
        settings: Settings, database: str, tmp_path: Path) -> None:  # noqa: F811
    settings = settings.model_copy(update={"database_url": SecretStr(database)})
    asyncio.run(_todo_api_writes_series(database))
    procs = [Proc(settings, *args, log=tmp_path / f"{args[0]}.log").start()
             for args in (("worker",), ("relay",), ("spawn-sink",))]

    async def scenario() -> None:
        async def published(n: int) -> bool:
            return len(await read_json(settings, settings.topics.task_events)) >= n

        await eventually(lambda: published(2), 60, "the relay publishing the series")
        await caught_up(settings, "rekeyer", settings.topics.task_events, transactional=False)
        # Up to the start of DAY1 in Lisbon (UTC+1 in May): the first occurrence spawns.
        await tickproducer.publish_range(settings, T0 + timedelta(minutes=1), DAY1, 60)

        async def instance_row() -> bool:
            return len(await _instances(database)) == 1

        await eventually(instance_row, 60, "the spawn sink writing the instance row")
        await eventually(lambda: published(3), 60, "the relay publishing the instance")
        await caught_up(settings, "rekeyer", settings.topics.task_events, transactional=False)
        await tickproducer.publish_range(settings, DAY1 + timedelta(minutes=1),
                                         DAY1 + timedelta(hours=9), 60)
        await caught_up(settings, "timeline", settings.topics.timeline, transactional=True)

    try:
        asyncio.run(scenario())
    finally:
        for proc in procs:
            proc.kill(signal.SIGTERM)
    [instance] = asyncio.run(_instances(database))
    spawns = asyncio.run(read_json(settings, settings.topics.task_commands))
    assert [s["occurrence"] for s in spawns] == [{"due_at": "2026-05-02T09:00:00Z"}]
    notifications = asyncio.run(read_json(settings, settings.topics.notifications))
    reminders = [n for n in notifications if n["type"] == "reminder.due"]
    assert [r["task_id"] for r in reminders] == [instance["task_id"]]
    assert reminders[0]["fire_at"] == "2026-05-02T08:30:00Z"
    assert reminders[0]["late"] is False and reminders[0]["title"] == "Stand-up"
    # 09:00 in Lisbon on the instance's day: the instance, never the series next to it.
    digests = [n for n in notifications if n["type"] == "digest.daily"]
    assert [(d["local_date"], d["tasks"], d["overdue_count"], d["omitted_count"])
            for d in digests] == [("2026-05-02", [
                {"task_id": instance["task_id"], "title": "Stand-up",
                 "due_at": "2026-05-02T09:00:00Z", "due_date": None}], 0, 0)]
