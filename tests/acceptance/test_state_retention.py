"""Bounded state against the real broker: deleted and completed tasks keep rejecting stale
upserts across a SIGKILL and restore, then expire into tombstones on the state changelog,
whose topic is created with settings that let compaction run."""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.kafka import client as kafka
from streams.processes import tickproducer
from streams.settings import Settings
from tests.model import ts, z
from tests.support import Proc, caught_up, publish, read_json

pytestmark = pytest.mark.kafka

T0 = ts("2026-04-01T00:00:00Z")
STEP_S = 60


def _upsert(task: str, version: int, **changes: Any) -> dict[str, Any]:
    doc = {"task_id": task, "user_id": f"u{int(task[1:]) % 7}", "version": version,
           "title": task, "status": "open", "completed_at": None,
           "due_at": z(T0 + timedelta(hours=5)), "due_date": None,
           "reminders": [{"before_minutes": 60}], "recurrence": None, "series_id": None,
           **changes}
    return {"type": "task.upserted", "event_id": f"{task}-{version}", "occurred_at": z(T0),
            "task": doc}


def _delete(task: str, version: int) -> dict[str, Any]:
    return {"type": "task.deleted", "event_id": f"{task}-d{version}", "occurred_at": z(T0),
            "task_id": task, "user_id": f"u{int(task[1:]) % 7}", "version": version}


async def _topic_config(settings: Settings, topic: str) -> dict[str, str]:
    async with kafka.admin(settings) as client:
        [response] = await client.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)])
    [resource] = response.resources
    return {entry[0]: entry[1] for entry in resource[4]}


async def _ticks(settings: Settings, start: timedelta, end: timedelta) -> None:
    await tickproducer.publish_range(settings, T0 + start, T0 + end, STEP_S)
    await caught_up(settings, "timeline", settings.topics.timeline, transactional=True)


def test_markers_reject_stale_upserts_across_a_restore_then_become_tombstones(
        settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"state_retention_s": 3600})
    tasks = [f"t{n:02d}" for n in range(60)]
    deleted, completed, kept = tasks[:20], tasks[20:40], tasks[40:]
    log = tmp_path / "worker.log"

    async def phase(events: list[dict[str, Any]]) -> None:
        await publish(settings, events)
        await caught_up(settings, "rekeyer", settings.topics.task_events, transactional=False)

    worker = Proc(settings, "worker", log=log).start()
    try:
        asyncio.run(phase([_upsert(t, 1) for t in tasks]))
        asyncio.run(_ticks(settings, timedelta(minutes=1), timedelta(hours=1)))
        asyncio.run(phase([_delete(t, 2) for t in deleted]
                          + [_upsert(t, 2, status="completed", completed_at=z(T0))
                             for t in completed]))
        asyncio.run(_ticks(settings, timedelta(hours=1, minutes=1),
                           timedelta(hours=1, minutes=30)))
        worker.kill(signal.SIGKILL)
        # Stale versions while no worker runs: the restored markers must reject them.
        asyncio.run(publish(settings, [_upsert(t, 2) for t in deleted]
                            + [_upsert(t, 1) for t in completed]))
        worker = Proc(settings, "worker", log=log).start()
        asyncio.run(phase([]))
        asyncio.run(_ticks(settings, timedelta(hours=1, minutes=31),
                           timedelta(hours=4, minutes=30)))
    finally:
        assert worker.kill(signal.SIGTERM) == 0, log.read_text()[-3000:]

    reminders = [n for n in asyncio.run(read_json(settings, settings.topics.notifications))
                 if n["type"] == "reminder.due"]
    assert sorted(n["task_id"] for n in reminders) == kept
    records = asyncio.run(kafka.read_all(settings, [settings.topics.state_changelog]))
    latest: dict[bytes, bytes | None] = {}
    for record in records:
        assert record.key is not None
        latest[record.key] = record.value
    for task in deleted + completed:
        key = f"t|u{int(task[1:]) % 7}|{task}".encode()
        assert key in latest and latest[key] is None, task  # a marker, then a tombstone
    for task in kept:
        assert latest[f"t|u{int(task[1:]) % 7}|{task}".encode()] is not None

    config = asyncio.run(_topic_config(settings, settings.topics.state_changelog))
    assert config["cleanup.policy"] == "compact"
    assert int(config["segment.ms"]) <= 3600 * 1000
    assert float(config["min.cleanable.dirty.ratio"]) <= 0.1
    assert int(config["max.compaction.lag.ms"]) <= 24 * 3600 * 1000
