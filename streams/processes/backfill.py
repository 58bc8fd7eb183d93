"""``cronorch backfill --from T1 --to T2 [--dry-run]``: emit, exactly once, what should have
fired in a window and is not on the output topics.

    scheduler.timeline (read_committed, from the start) ──replay into scratch state──► derived
    todo.notifications + todo.task-commands (read_committed) ──────────────────────► present
    derived - present (by deterministic id, fire_at in [T1, T2]) ──one transaction──► outputs

The replay runs the worker's own ``TimelineAgent`` on fresh state over each timeline
partition as it is logged; the live worker and its changelog are never touched. Where the log
has a gap in its ticks (the tick producer was down, so the live worker saw the fires of the
gap only late, past their catch-up window, and counted them missed), the replay fills the gap
with ticks on the ``TICK_INTERVAL_S`` grid, inside the window only; an event logged in a gap
goes after the filled ticks older than its broker timestamp. Everything else is what the live
worker did, so fires it emitted are derived with the same ids and found present.

Exactly once: the transactional producer ``<app_id>-backfill`` is initialised (fencing any
other backfill) before the output topics are read, and everything missing goes out in one
transaction; a second run finds it present and emits nothing. The window must be behind the
live worker (``--to`` ≤ the oldest partition's watermark of the committed timeline group), so
the live worker never decides a fire of the window again. Backfilled records carry
``late: true``. The timeline's retention (7 days by default) bounds how far back this reaches.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TextIO

import orjson

from schemas import Tick
from streams import codec
from streams.errors import InvalidEvent, InvalidInput
from streams.kafka import client as kafka
from streams.kafka.client import Output, Record, TopicPartition
from streams.processes.worker import TimelineAgent
from streams.settings import Settings
from streams.telemetry.logs import fields
from streams.telemetry.progress import Progress
from streams.timecore.instants import format_instant, parse_instant

log = logging.getLogger("cronorch.backfill")
ROLE = "backfill"


@dataclass
class Plan:
    """What the window should hold, what it holds, and what is missing (by id)."""

    start: datetime
    end: datetime
    derived: dict[str, Output] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)

    @property
    def missing(self) -> dict[str, Output]:
        return {i: out for i, out in self.derived.items() if i not in self.present}

    def summary(self) -> dict[str, Any]:
        kinds: Counter[str] = Counter()
        for out in self.missing.values():
            kinds[orjson.loads(out.value or b"{}")["type"]] += 1
        return {"from": format_instant(self.start), "to": format_instant(self.end),
                "derived": len(self.derived),
                "present": len(self.derived) - len(self.missing),
                "missing": dict(sorted(kinds.items())),
                "missing_ids": sorted(self.missing)}


def _id_of(doc: dict[str, Any]) -> str | None:
    value = doc.get("notification_id") or doc.get("spawn_id")
    return value if isinstance(value, str) else None


def _tick_at(record: Record) -> datetime | None:
    try:
        item = codec.decode_timeline(record.value)
    except InvalidEvent:
        return None  # a bad record: the agent dead-letters it in the replay as it did live
    return item.tick_at if isinstance(item, Tick) else None


def filled(records: Iterable[Record], start: datetime, end: datetime,
           step: timedelta) -> Iterator[Record]:
    """``records`` with the gaps between consecutive ticks that overlap [start, end] filled
    with grid ticks inside the window; events inside a gap keep their place by broker time."""
    previous: datetime | None = None
    pending: list[Record] = []  # events since the previous tick
    for record in records:
        tick_at = _tick_at(record)
        if tick_at is None:
            pending.append(record)
            continue
        if previous is not None and tick_at - previous > step:
            virtual = previous + step
            for event in pending:
                while virtual < tick_at and virtual <= end and (
                        virtual.timestamp() * 1000 <= event.timestamp_ms):
                    if virtual >= start:
                        yield _tick_record(record, virtual)
                    virtual += step
                yield event
            while virtual < tick_at and virtual <= end:
                if virtual >= start:
                    yield _tick_record(record, virtual)
                virtual += step
        else:
            yield from pending
        pending = []
        yield record
        previous = tick_at if previous is None else max(previous, tick_at)
    yield from pending


def _tick_record(like: Record, at: datetime) -> Record:
    return Record(like.topic, like.partition, -1, None, codec.encode_tick(at),
                  int(at.timestamp() * 1000))


def derive(settings: Settings, partition: int, records: list[Record], plan: Plan) -> None:
    """Replay one timeline partition into scratch state; keep the fires of the window."""
    agent = TimelineAgent(settings)
    agent.assign(partition, [])
    step = timedelta(seconds=settings.tick_interval_s)
    batch: list[Record] = []
    topics = (settings.topics.notifications, settings.topics.task_commands)

    def flush() -> None:
        for out in agent.process(partition, batch):
            if out.topic not in topics or out.value is None:
                continue
            doc = orjson.loads(out.value)
            fire_at = parse_instant(doc["fire_at"])
            ident = _id_of(doc)
            if ident is not None and plan.start <= fire_at <= plan.end:
                doc["late"] = True
                plan.derived[ident] = Output(out.topic, out.key, orjson.dumps(doc))
        batch.clear()

    for record in filled(records, plan.start, plan.end, step):
        batch.append(record)
        if len(batch) >= 5_000:
            flush()
    flush()


async def _watermarks(settings: Settings, logs: dict[int, list[Record]]) -> dict[int, datetime]:
    """Per partition: the newest tick before the live timeline group's committed offset."""
    client = kafka.consumer(settings, group_id=settings.group_id("timeline"))
    await client.start()
    try:
        out: dict[int, datetime] = {}
        for p, records in logs.items():
            committed = await client.committed(TopicPartition(settings.topics.timeline, p)) or 0
            ticks = [t for r in records if r.offset < committed
                     and (t := _tick_at(r)) is not None]
            if ticks:
                out[p] = max(ticks)
        return out
    finally:
        await client.stop()


async def plan(settings: Settings, start: datetime, end: datetime,
               progress: TextIO | None = None) -> Plan:
    """Derive the window from the timeline; refuse a window the live worker has not passed."""
    if end < start:
        raise InvalidInput(f"--to {format_instant(end)} is before --from "
                           f"{format_instant(start)}")
    result = Plan(start, end)
    partitions = await kafka.partition_count(settings, settings.topics.timeline)
    logs: dict[int, list[Record]] = {p: [] for p in range(partitions)}
    bar = Progress(progress, "timeline partitions replayed", partitions)
    for p in range(partitions):
        await kafka.read_partition(settings, settings.topics.timeline, p, logs[p].append)
    watermarks = await _watermarks(settings, logs)
    behind = [p for p in range(partitions) if p not in watermarks or watermarks[p] < end]
    if behind:
        oldest = min(watermarks.values(), default=None)
        raise InvalidInput(
            f"--to {format_instant(end)} is ahead of the live worker (timeline partitions "
            f"{behind} have processed ticks only up to "
            f"{'none' if oldest is None else format_instant(oldest)}): backfill only a window "
            "the worker has already decided")
    for p in range(partitions):
        derive(settings, p, logs[p], result)
        logs[p] = []
        bar.add(1)
    bar.end()
    return result


async def _present(settings: Settings, result: Plan) -> None:
    topics = [settings.topics.notifications, settings.topics.task_commands]
    for record in await kafka.read_all(settings, topics, timeout_s=300):
        if record.value is None:
            continue
        try:
            doc = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            continue
        ident = _id_of(doc) if isinstance(doc, dict) else None
        if ident is not None:
            result.present.add(ident)


async def run(settings: Settings, start: datetime, end: datetime, *, dry_run: bool = False,
              progress: TextIO | None = None) -> dict[str, Any]:
    """Plan the window; unless ``dry_run``, emit what is missing in one transaction."""
    result = await plan(settings, start, end, progress)
    if dry_run:
        await _present(settings, result)
        return {**result.summary(), "emitted": 0, "dry_run": True}
    producer = kafka.producer(settings, settings.transactional_id(ROLE))
    try:
        async with kafka.translated():
            await producer.start()  # fences any other backfill before we read what is there
            await _present(settings, result)
            missing = list(result.missing.values())
            if missing:
                await producer.begin_transaction()
                await kafka.send_all(producer, missing)
                await producer.commit_transaction()
    finally:
        await producer.stop()
    log.info("backfill emitted", extra=fields(**{k: v for k, v in result.summary().items()
                                                 if k != "missing_ids"}, emitted=len(missing)))
    return {**result.summary(), "emitted": len(missing), "dry_run": False}
