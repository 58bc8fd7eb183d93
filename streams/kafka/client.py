"""Kafka adapter: topics, clients and the translation of aiokafka errors into ours.

Nothing above this module names an aiokafka type except the engine, which receives
records as ``Record`` values. Producers are transactional and idempotent; consumers read
``read_committed`` and never auto-commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    ProducerFenced,
    TopicAlreadyExistsError,
)

from streams.errors import BrokerUnavailable, Fenced
from streams.settings import Settings

__all__ = ["TopicPartition"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Record:
    """A consumed record, detached from the client library."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Output:
    """A record to produce; ``partition`` None lets the key decide (murmur2, as Java does)."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic the product uses, with partition counts and configs."""
    t, n = settings.topics, settings.timeline_partitions
    week = str(7 * 24 * 3600 * 1000)
    return [
        TopicSpec(t.task_events, settings.task_events_partitions, {"retention.ms": week}),
        TopicSpec(t.timeline, n, {"retention.ms": week}),
        TopicSpec(t.ticks, 1, {"retention.ms": week}),
        TopicSpec(t.notifications, n, {"retention.ms": week}),
        TopicSpec(t.task_commands, n, {"retention.ms": week}),
        TopicSpec(t.dead_letters, 1, {"retention.ms": str(30 * 24 * 3600 * 1000)}),
        TopicSpec(t.state_changelog, n, {"cleanup.policy": "compact",
                                         "min.compaction.lag.ms": "60000"}),
        TopicSpec(t.job_triggers, 1, {"retention.ms": week}),
        TopicSpec(t.job_runs, 1, {"retention.ms": str(30 * 24 * 3600 * 1000)}),
    ]


@asynccontextmanager
async def admin(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers,
                                 request_timeout_ms=15_000)
    try:
        await client.start()
    except KafkaError as exc:
        raise BrokerUnavailable(f"Kafka at {settings.kafka_bootstrap_servers}: {exc}") from exc
    try:
        yield client
    finally:
        await client.close()


async def wait_ready(settings: Settings, timeout_s: float = 60) -> float:
    """Wait until the broker answers metadata requests; return the seconds waited."""
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - start < timeout_s:
        try:
            async with admin(settings) as client:
                await client.list_topics()
                return time.monotonic() - start
        except (BrokerUnavailable, KafkaError, OSError) as exc:
            last = exc
            await asyncio.sleep(0.2)
    raise BrokerUnavailable(f"Kafka at {settings.kafka_bootstrap_servers} not ready: {last}")


async def ensure_topics(settings: Settings) -> list[str]:
    """Create missing topics; return the names created. Existing topics are left as they are."""
    specs = topic_specs(settings)
    async with admin(settings) as client:
        existing = set(await client.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            with suppress(TopicAlreadyExistsError):
                await client.create_topics([
                    NewTopic(s.name, s.partitions, settings.replication_factor,
                             topic_configs=s.config) for s in missing
                ])
        # Creation is asynchronous in KRaft: wait until every partition has a leader.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            described = await client.describe_topics([s.name for s in specs])
            if all(d.get("error_code", 0) == 0 and d.get("partitions")
                   and all(p.get("leader", -1) >= 0 for p in d["partitions"])
                   for d in described):
                break
            await asyncio.sleep(0.1)
    return [s.name for s in missing]


async def partition_count(settings: Settings, topic: str) -> int:
    async with admin(settings) as client:
        described = await client.describe_topics([topic])
    return len(described[0]["partitions"])


def producer(settings: Settings, transactional_id: str | None) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        transactional_id=transactional_id,
        enable_idempotence=True,
        transaction_timeout_ms=settings.transaction_timeout_ms,
        linger_ms=5,
        acks="all",
    )


def consumer(settings: Settings, *topics: str, group_id: str | None,
             **kwargs: Any) -> AIOKafkaConsumer:
    """A ``read_committed`` consumer without auto-commit; ``kwargs`` override the defaults."""
    options: dict[str, Any] = {"isolation_level": "read_committed", "enable_auto_commit": False,
                               "auto_offset_reset": "earliest", **kwargs}
    return AIOKafkaConsumer(*topics, bootstrap_servers=settings.kafka_bootstrap_servers,
                            group_id=group_id, **options)


def to_record(msg: Any) -> Record:
    return Record(msg.topic, msg.partition, msg.offset, msg.key, msg.value, msg.timestamp)


def translate(exc: BaseException) -> Exception:
    """Map an aiokafka error to ours (call as ``raise translate(e) from e``)."""
    if isinstance(exc, ProducerFenced):
        return Fenced(str(exc))
    if isinstance(exc, (KafkaConnectionError, KafkaError, asyncio.TimeoutError)):
        return BrokerUnavailable(f"{type(exc).__name__}: {exc}")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


async def read_partition(settings: Settings, topic: str, partition: int,
                         on_record: Callable[[Record], None], *,
                         stall_timeout_s: float | None = None) -> int:
    """Read one partition from its start up to its last stable offset; return the count.

    With ``stall_timeout_s``, raise ``BrokerUnavailable`` when a request or the next record
    takes longer than that (the broker went away mid-read): aiokafka would wait for it
    forever.
    """
    def bounded(step: Awaitable[T]) -> Awaitable[T]:
        return step if stall_timeout_s is None else asyncio.wait_for(step, stall_timeout_s)

    client = consumer(settings, group_id=None)
    tp = TopicPartition(topic, partition)
    count = 0
    try:
        await bounded(client.start())
        client.assign([tp])
        await bounded(client.seek_to_beginning(tp))
        end = (await bounded(client.end_offsets([tp])))[tp]
        last_at = time.monotonic()
        while await bounded(client.position(tp)) < end:
            batch = await client.getmany(tp, timeout_ms=500, max_records=5000)
            msgs = batch.get(tp, [])
            for msg in msgs:
                on_record(to_record(msg))
            count += len(msgs)
            if msgs:
                last_at = time.monotonic()
            elif stall_timeout_s is not None and time.monotonic() - last_at > stall_timeout_s:
                raise TimeoutError
        return count
    except (KafkaError, TimeoutError) as exc:
        raise BrokerUnavailable(f"reading {topic}[{partition}] stopped after {count} records: "
                                f"{type(exc).__name__} {exc}") from exc
    finally:
        with suppress(Exception):
            await asyncio.wait_for(client.stop(), 5)


async def read_all(settings: Settings, topics: Iterable[str],
                   timeout_s: float = 10) -> list[Record]:
    """Read every committed record of ``topics`` up to their current end (tests, tools)."""
    tps = [TopicPartition(t, p) for t in topics
           for p in range(await partition_count(settings, t))]
    if not tps:
        return []
    client = consumer(settings, group_id=None)
    await client.start()
    try:
        client.assign(tps)
        await client.seek_to_beginning(*tps)
        ends = await client.end_offsets(tps)
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        for tp in tps:
            while await client.position(tp) < ends[tp]:
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"timed out reading {tp}")
                batch = await client.getmany(tp, timeout_ms=500, max_records=10_000)
                out.extend(to_record(m) for m in batch.get(tp, []))
        return out
    finally:
        await client.stop()


async def send_all(producer: AIOKafkaProducer, outputs: Iterable[Output]) -> None:
    """Send ``outputs`` and wait until the broker has acknowledged every one of them.

    Inside a transaction this drains the send buffer before the commit is asked for, and
    every delivery future is retrieved, so a fenced or failed batch raises here once
    instead of leaving unretrieved exceptions behind.
    """
    futures = [await producer.send(out.topic, key=out.key, value=out.value,
                                   partition=out.partition) for out in outputs]
    results = await asyncio.gather(*futures, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
