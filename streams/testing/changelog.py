"""A large timeline state, written straight into the state changelog: what a worker with
that many pending tasks would have left there. Restore tests and benchmarks start from it
instead of feeding every task through the pipeline first.

Each task is open, timed, due in a year and has two pending reminders; users are shared by
``TASKS_PER_USER`` tasks. The values are the ``streams.timeline.changelog.snapshot`` form.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from schemas import Task, TaskUpserted
from streams.kafka import client as kafka
from streams.settings import Settings
from streams.timeline.changelog import snapshot
from streams.timeline.state import PartitionState

TASKS_PER_USER = 50
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def upserted(partition: int, i: int) -> TaskUpserted:
    """The event that made task ``i`` of ``partition``: reminders due a year after T0."""
    fire = T0 + timedelta(days=365, seconds=i)
    return TaskUpserted.model_validate({
        "type": "task.upserted", "event_id": f"e{partition}-{i}", "occurred_at": T0,
        "task": Task.model_validate({
            "task_id": f"t{partition}-{i}", "user_id": f"u{partition}-{i // TASKS_PER_USER}",
            "version": 1, "title": f"task {i}", "status": "open",
            "due_at": fire + timedelta(hours=1),
            "reminders": [{"at": fire}, {"before_minutes": 15}]})})


def entries(partition: int, tasks: int, *, chunk: int = 10_000) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) changelog records of ``tasks`` pending tasks of ``partition``."""
    for start in range(0, tasks, chunk):
        state = PartitionState(partition, reminder_catchup_s=900)
        dirty: set[str] = set()
        for i in range(start, min(tasks, start + chunk)):
            dirty |= state.apply(upserted(partition, i)).dirty
        for key in sorted(dirty):
            value = snapshot(state, key)
            if value is not None:
                yield key.encode(), value


async def write(settings: Settings, partition: int, tasks: int) -> int:
    """Append the changelog of ``tasks`` pending tasks to ``partition``; return the records."""
    producer = kafka.bulk_producer(settings, linger_ms=20, max_batch_size=256 * 1024,
                                   acks="all")
    await producer.start()
    count = 0
    try:
        for key, value in entries(partition, tasks):
            await producer.send(settings.topics.state_changelog, value=value, key=key,
                                partition=partition)
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count
