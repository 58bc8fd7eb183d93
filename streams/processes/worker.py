"""The scheduling worker: the re-keyer and the timeline agent, each exactly-once.

    todo.task-events ──re-keyer──► scheduler.timeline ◄── tick producer
                                         │
                                  timeline agent (PartitionState per partition)
                                         ├──► todo.notifications (reminder.due, digest.daily)
                                         ├──► todo.task-commands (task.spawn)
                                         ├──► scheduler.state-changelog (p)
                                         └──► scheduler.dead-letters

Both are thin handlers for ``engine.Processor``: decode → apply → encode. The flow of a
record is plain functions in ``state``/``planning``; nothing here decides when things fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterable

from aiokafka.partitioner import murmur2

from schemas import TaskSpawn, Tick
from streams import codec
from streams.kafka import client as kafka
from streams.kafka.client import Output, Record
from streams.kafka.engine import Processor, decode_all
from streams.processes import lifecycle
from streams.settings import Settings
from streams.telemetry import metrics
from streams.telemetry.logs import fields
from streams.timeline.state import Effects, PartitionState

log = logging.getLogger("cronorch.worker")


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` (murmur2, positive)."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class Rekeyer:
    """todo.task-events → scheduler.timeline, keyed and partitioned by user_id."""

    def __init__(self, settings: Settings, timeline_partitions: int) -> None:
        self.changelog_topic: str | None = None
        self.settings = settings
        self.partitions = timeline_partitions
        self.counts: Counter[str] = Counter()

    def assign(self, partition: int, changelog: Iterable[Record]) -> None:
        pass

    def revoke(self, partition: int) -> None:
        pass

    def process(self, partition: int, records: list[Record]) -> list[Output]:
        decoded, outputs = decode_all(self.settings, "rekeyer", records,
                                      codec.decode_task_event)
        self.counts["dead_letters"] += len(outputs)
        for record, event in decoded:
            user = (event.task.user_id if event.type == "task.upserted" else event.user_id)
            key = user.encode()
            outputs.append(Output(self.settings.topics.timeline, key, record.value,
                                  partition_for(key, self.partitions)))
            self.counts["rekeyed"] += 1
        return outputs


class TimelineAgent:
    """Per partition: task/user state, due index and watermark; ticks fire what is due."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.changelog_topic: str | None = settings.topics.state_changelog
        self.states: dict[int, PartitionState] = {}
        self.counts: Counter[str] = Counter()

    def assign(self, partition: int, changelog: Iterable[Record]) -> None:
        state = PartitionState(partition, reminder_catchup_s=self.settings.reminder_catchup_s,
                               digest_catchup_s=self.settings.digest_catchup_s)
        state.restore((r.key.decode(), r.value) for r in changelog if r.key is not None)
        self.states[partition] = state
        self.counts["restored_tasks"] += len(state.tasks)

    def revoke(self, partition: int) -> None:
        self.states.pop(partition, None)
        # The new owner reports this partition's watermark from now on.
        with contextlib.suppress(KeyError):
            metrics.WATERMARK.remove(str(partition))

    def process(self, partition: int, records: list[Record]) -> list[Output]:
        state = self.states[partition]
        effects = Effects()
        decoded, outputs = decode_all(self.settings, "timeline", records, codec.decode_timeline)
        effects.counts["dead_letters"] += len(outputs)
        for _, item in decoded:
            if isinstance(item, Tick):
                effects.merge(state.tick(item.tick_at))
            else:
                effects.merge(state.apply(item))
        topics = self.settings.topics
        for out in effects.outputs:
            topic = topics.task_commands if isinstance(out, TaskSpawn) else topics.notifications
            outputs.append(Output(topic, out.user_id.encode(), codec.dumps(out)))
            metrics.NOTIFICATIONS.labels(out.type).inc()
        for key in sorted(effects.dirty):
            outputs.append(Output(topics.state_changelog, key.encode(), state.snapshot(key),
                                  partition))
        if state.watermark is not None:
            metrics.WATERMARK.labels(str(partition)).set(state.watermark.timestamp())
        for name in ("applied", "stale"):
            if effects.counts[name]:
                metrics.EVENTS.labels(name).inc(effects.counts[name])
        if effects.counts["missed"]:
            metrics.MISSED.labels("reminder.due").inc(effects.counts["missed"])
        if effects.counts["missed_digests"]:
            metrics.MISSED.labels("digest.daily").inc(effects.counts["missed_digests"])
        self.counts.update(effects.counts)
        return outputs


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``); logs an execution summary every 30 s and at exit."""
    stop = await lifecycle.start(settings, stop)
    partitions = await kafka.partition_count(settings, settings.topics.timeline)
    rekeyer = Rekeyer(settings, partitions)
    agent = TimelineAgent(settings)
    processors = [
        Processor(settings, "rekeyer", settings.topics.task_events, rekeyer),
        Processor(settings, "timeline", settings.topics.timeline, agent),
    ]
    started = time.monotonic()
    log.info("worker started", extra=fields(timeline_partitions=partitions))

    summary = lifecycle.every(
        30, lambda: _summary("worker summary", rekeyer, agent, started))
    tasks = {p.name: asyncio.create_task(p.run(stop)) for p in processors}
    try:
        await lifecycle.supervise(stop, tasks)
    finally:
        summary.cancel()
        _summary("worker stopped", rekeyer, agent, started)


def _summary(event: str, rekeyer: Rekeyer, agent: TimelineAgent, started: float) -> None:
    counts = agent.counts
    log.info(event, extra=fields(
        processed=counts["applied"] + counts["stale"] + counts["ticks"] + counts["ticks_ignored"],
        notified=counts["notified"] + counts["digests"], spawned=counts["spawned"],
        missed=counts["missed"] + counts["missed_digests"], stale=counts["stale"],
        errors=counts["dead_letters"] + rekeyer.counts["dead_letters"],
        rekeyed=rekeyer.counts["rekeyed"], duration_s=round(time.monotonic() - started, 3),
    ))
