"""Demo data: a handful of users in different zones with tasks whose reminders fire within
the next minute or two, then the notifications printed as they arrive.

An edge module like the CLI: it reads the wall clock to place the demo in the near future.
"""

from __future__ import annotations

import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import orjson

from streams.kafka import client as kafka
from streams.settings import Settings
from streams.timecore.instants import format_seconds

ZONES = ["America/New_York", "Europe/Berlin", "Asia/Kathmandu", "Australia/Lord_Howe",
         "America/Sao_Paulo", "Asia/Tokyo"]
TITLES = ["Water the plants", "Call the dentist", "Submit the report", "Pay rent",
          "Book train tickets", "Renew passport"]


def demo_events(now: datetime, users: int) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs: user settings, then two tasks per user due in a few minutes."""
    events: list[tuple[bytes, bytes]] = []
    at = now.replace(microsecond=0)
    for i in range(users):
        user = f"demo-user-{i + 1}"
        zone = ZONES[i % len(ZONES)]
        events.append((user.encode(), orjson.dumps({
            "type": "user.settings", "event_id": str(uuid.uuid4()),
            "occurred_at": format_seconds(at), "user_id": user, "version": 1, "timezone": zone,
            "digest_time": "09:00"})))
        for j in range(2):
            due = at + timedelta(minutes=2 + j, seconds=10 * i)
            events.append((user.encode(), orjson.dumps({
                "type": "task.upserted", "event_id": str(uuid.uuid4()),
                "occurred_at": format_seconds(at),
                "task": {"task_id": f"{user}-task-{j + 1}", "user_id": user, "version": 1,
                         "title": TITLES[(i + j) % len(TITLES)], "status": "open",
                         "due_at": format_seconds(due),
                         "reminders": [{"before_minutes": 1}, {"at": format_seconds(due - timedelta(
                             seconds=90 - 5 * i))}]}})))
    return events



async def run(settings: Settings, *, users: int, follow_s: float) -> None:
    await kafka.ensure_topics(settings)
    producer = kafka.producer(settings, None)
    await producer.start()
    try:
        for key, value in demo_events(datetime.now(UTC), users):
            await producer.send(settings.topics.task_events, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    print(f"published demo data for {users} users; reminders arrive within ~2 minutes",
          file=sys.stderr)
    if follow_s <= 0:
        return
    consumer = kafka.consumer(settings, settings.topics.notifications, group_id=None,
                              auto_offset_reset="latest")
    await consumer.start()
    deadline = time.monotonic() + follow_s
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for messages in batch.values():
                for msg in messages:
                    doc = orjson.loads(msg.value)
                    print(f"{doc['tick_at']}  {doc['type']:<13} user={doc['user_id']:<12} "
                          f"task={doc.get('task_id', '-'):<20} fire_at={doc['fire_at']} "
                          f"late={doc['late']}", flush=True)
    finally:
        await consumer.stop()
