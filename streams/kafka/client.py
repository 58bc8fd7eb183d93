"""Kafka adapter: topics, clients and the translation of aiokafka errors into ours.

Nothing above this module names an aiokafka type except the engine, which receives
records as ``Record`` values. Producers are transactional and idempotent; consumers read
``read_committed`` and never auto-commit.

Over 400 lines on purpose: it is the one place aiokafka is named (so processes never catch
its errors), and the pieces that need its types — client factories, the error translation,
batched sends with aiokafka's partitioner, bounded reads — would otherwise leak them into
several modules.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    GroupAuthorizationFailedError,
    InvalidMessageError,
    InvalidTimestampError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streams.errors import BrokerUnavailable, ConfigError, Fenced, NotAuthorized, RecordRejected
from streams.settings import Settings

__all__ = ["TopicPartition"]
T = TypeVar("T")


# Records and outputs are made once per record consumed, restored or produced (a burst,
# a restore: millions): plain slotted dataclasses, since a frozen one sets each field
# through object.__setattr__ (1.1 against 0.3 µs for an Output here). Nothing mutates or
# hashes them.
@dataclass(slots=True)
class Record:
    """A consumed record, detached from the client library."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


@dataclass(slots=True)
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


# Compaction only ever cleans closed segments, and Kafka's defaults (1 GiB or 7 days per
# segment, half the log dirty before a clean) would keep a week of superseded state and
# tombstones for a restore to read. Small segments and a low dirty ratio let it run;
# max.compaction.lag.ms bounds how long a superseded value or tombstone can wait.
CHANGELOG_CONFIG = {
    "cleanup.policy": "compact",
    "min.compaction.lag.ms": "60000",
    "max.compaction.lag.ms": str(24 * 3600 * 1000),
    "segment.ms": str(3600 * 1000),
    "segment.bytes": str(64 * 1024 * 1024),
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": str(24 * 3600 * 1000),
}


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic the product uses, with partition counts and configs."""
    t, n = settings.topics, settings.timeline_partitions
    week = str(7 * 24 * 3600 * 1000)
    return [
        TopicSpec(t.task_events, settings.task_events_partitions, {"retention.ms": week}),
        # The broker stamps timeline and tick records itself (LogAppendTime), so a live
        # tick can be checked against a clock that is not the tick producer's.
        TopicSpec(t.timeline, n, {"retention.ms": week,
                                  "message.timestamp.type": "LogAppendTime"}),
        TopicSpec(t.ticks, 1, {"retention.ms": week, "message.timestamp.type": "LogAppendTime"}),
        TopicSpec(t.notifications, n, {"retention.ms": week}),
        TopicSpec(t.task_commands, n, {"retention.ms": week}),
        TopicSpec(t.dead_letters, 1, {"retention.ms": str(30 * 24 * 3600 * 1000)}),
        TopicSpec(t.state_changelog, n, CHANGELOG_CONFIG),
        TopicSpec(t.job_triggers, 1, {"retention.ms": week}),
        TopicSpec(t.job_runs, 1, {"retention.ms": str(30 * 24 * 3600 * 1000)}),
        TopicSpec(t.job_trigger_changelog, 1, {"cleanup.policy": "compact",
                                               "min.compaction.lag.ms": "60000"}),
    ]


@asynccontextmanager
async def admin(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(**connection(settings), request_timeout_ms=15_000)
    try:
        await client.start()
    except KafkaError as exc:
        raise BrokerUnavailable(f"Kafka at {settings.kafka_bootstrap_servers}: {exc}") from exc
    try:
        yield client
    finally:
        await client.close()


async def wait_ready(settings: Settings, timeout_s: float = 60) -> float:
    """Wait until the broker answers metadata requests; return the seconds waited. Rejected
    credentials or an untrusted certificate fail at once with a ``ConfigError`` naming the
    setting, instead of retrying until the timeout."""
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - start < timeout_s:
        try:
            async with admin(settings) as client:
                await client.list_topics()
                return time.monotonic() - start
        except (BrokerUnavailable, KafkaError, OSError) as exc:
            last = exc
            if settings.kafka_security_protocol != "PLAINTEXT":
                await check_access(settings)
            await asyncio.sleep(0.2)
    raise BrokerUnavailable(f"Kafka at {settings.kafka_bootstrap_servers} not ready: {last}")


async def check_access(settings: Settings) -> None:
    """Open one connection to the first bootstrap server the way every client does and turn
    what aiokafka's bootstrap only logs (rejected credentials, a failed TLS handshake) into a
    ``ConfigError`` naming the setting. An unreachable broker passes: that is retriable."""
    host, _, port = settings.kafka_bootstrap_servers.split(",")[0].strip().rpartition(":")
    options = connection(settings)
    options.pop("bootstrap_servers")
    try:
        conn = await create_conn(host, int(port), request_timeout_ms=10_000, **options)
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError("KAFKA_SSL_CAFILE", f"the broker's certificate is not trusted: "
                          f"{exc.verify_message}") from exc
    except (SaslAuthenticationFailed, AuthenticationFailedError) as exc:
        raise ConfigError("KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD",
                          f"the broker rejected the credentials of "
                          f"{settings.kafka_sasl_username!r} "
                          f"({settings.kafka_sasl_mechanism})") from exc
    except (UnsupportedSaslMechanismError, AuthenticationMethodNotSupported) as exc:
        raise ConfigError("KAFKA_SASL_MECHANISM", f"the broker does not accept "
                          f"{settings.kafka_sasl_mechanism}: {exc}") from exc
    except ssl.SSLError as exc:
        raise ConfigError("KAFKA_SECURITY_PROTOCOL", f"the TLS handshake failed ({exc}); "
                          "is the listener TLS?") from exc
    except (TimeoutError, KafkaError, OSError):
        return
    conn.close()


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
                             topic_configs={**s.config, "min.insync.replicas":
                                            str(settings.min_insync_replicas)})
                    for s in missing
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


def connection(settings: Settings) -> dict[str, Any]:
    """The options every aiokafka client of every process gets: where the brokers are and how
    to reach them (TLS, SASL). The one place that turns the security settings into a client."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap_servers,
                               "security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        for variable, path in (("KAFKA_SSL_CAFILE", settings.kafka_ssl_cafile),
                               ("KAFKA_SSL_CERTFILE", settings.kafka_ssl_certfile),
                               ("KAFKA_SSL_KEYFILE", settings.kafka_ssl_keyfile)):
            if path and not os.access(path, os.R_OK):
                raise ConfigError(variable, f"{path!r} is not a readable file")
        try:
            options["ssl_context"] = create_ssl_context(
                cafile=settings.kafka_ssl_cafile or None,
                certfile=settings.kafka_ssl_certfile or None,
                keyfile=settings.kafka_ssl_keyfile or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("KAFKA_SSL_CAFILE / KAFKA_SSL_CERTFILE / KAFKA_SSL_KEYFILE",
                              f"cannot load the TLS files: {exc}") from exc
    if protocol.startswith("SASL_"):
        options.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                       sasl_plain_username=settings.kafka_sasl_username,
                       sasl_plain_password=settings.kafka_sasl_password.get_secret_value())
    return options


# aiokafka's default, named: ``send_all`` refuses a larger record before sending anything.
MAX_REQUEST_BYTES = 1_048_576
# A record's framing in a batch is well under this: smaller records skip the exact estimate.
_CHECKED_FROM_BYTES = MAX_REQUEST_BYTES - 4096
# aiokafka keeps one produce request in flight per broker and each request carries one
# batch per partition, so a partition's records reach the broker one batch per round trip:
# its 16 KiB default made a burst thousands of round trips. A batch must still fit the
# topic's max.message.bytes, which ``max_message_bytes`` states.
BATCH_BYTES = 512 * 1024


def producer(settings: Settings, transactional_id: str | None) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **connection(settings),
        transactional_id=transactional_id,
        enable_idempotence=True,
        transaction_timeout_ms=settings.transaction_timeout_ms,
        linger_ms=5,
        acks="all",
        max_request_size=MAX_REQUEST_BYTES,
        max_batch_size=min(BATCH_BYTES, settings.max_message_bytes),
    )


def consumer(settings: Settings, *topics: str, group_id: str | None,
             **kwargs: Any) -> AIOKafkaConsumer:
    """A ``read_committed`` consumer without auto-commit; ``kwargs`` override the defaults."""
    options: dict[str, Any] = {"isolation_level": "read_committed", "enable_auto_commit": False,
                               "auto_offset_reset": "earliest", **kwargs}
    return AIOKafkaConsumer(*topics, group_id=group_id, **connection(settings), **options)


def to_record(msg: Any) -> Record:
    return Record(msg.topic, msg.partition, msg.offset, msg.key, msg.value, msg.timestamp)


_RECORD_REJECTED = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError,
                    InvalidMessageError, CorruptRecordException, InvalidTimestampError)
_NOT_AUTHORIZED = (TopicAuthorizationFailedError, GroupAuthorizationFailedError,
                   TransactionalIdAuthorizationFailed, ClusterAuthorizationFailedError)


def translate(exc: BaseException) -> Exception:
    """Map an aiokafka error to ours (call as ``raise translate(e) from e``).

    Refusals no retry can fix (a record too large or invalid, a missing right) become
    ``RecordRejected``/``NotAuthorized``; every other Kafka error is ``BrokerUnavailable``.
    """
    if isinstance(exc, ProducerFenced):
        return Fenced(str(exc))
    if isinstance(exc, _RECORD_REJECTED):
        return RecordRejected(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, _NOT_AUTHORIZED):
        return NotAuthorized(f"{type(exc).__name__}: {exc}")
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
    count = 0
    async with aclosing(read_batches(settings, topic, partition,
                                     stall_timeout_s=stall_timeout_s)) as batches:
        async for batch in batches:
            for record in batch:
                on_record(record)
            count += len(batch)
    return count


# Fetched per request by ``read_batches``: aiokafka's 1 MiB default made a restore about
# 1,200 changelog records a round trip.
READ_FETCH_BYTES = 8 * 1024 * 1024


async def read_batches(settings: Settings, topic: str, partition: int, *,
                       stall_timeout_s: float | None = None) -> AsyncGenerator[list[Record], None]:
    """One partition from its start up to its last stable offset, batch by batch, as it
    is fetched (``read_partition``'s semantics; close it with ``aclosing``)."""
    def bounded(step: Awaitable[T]) -> Awaitable[T]:
        return step if stall_timeout_s is None else asyncio.wait_for(step, stall_timeout_s)

    client = consumer(settings, group_id=None, max_partition_fetch_bytes=READ_FETCH_BYTES,
                      fetch_max_bytes=READ_FETCH_BYTES)
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
            if msgs:
                count += len(msgs)
                yield [to_record(msg) for msg in msgs]
                last_at = time.monotonic()  # the time the caller took is no stall
            elif stall_timeout_s is not None and time.monotonic() - last_at > stall_timeout_s:
                raise TimeoutError
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

    Records are grouped by (topic, partition) — a keyed record without a partition goes
    where aiokafka's own partitioner would put it (``default_partition``) — and each group
    is packed into record batches of up to ``BATCH_BYTES``, one delivery future per batch
    instead of one per record: same records, same order within each partition. The groups
    are submitted side by side, so one produce request carries a batch of each.

    Inside a transaction this drains the send buffer before the commit is asked for, and
    every delivery future is retrieved, so a fenced or failed batch raises here once (the
    first error: a submission's, else the first failed batch's) instead of leaving
    unretrieved exceptions behind, also when a submission fails part-way. Raises aiokafka's
    errors: the engine decides on them; processes use ``send``.
    """
    groups: dict[tuple[str, int], list[Output]] = {}
    partitions: dict[str, list[int]] = {}
    for out in outputs:
        if len(out.key or b"") + len(out.value or b"") > _CHECKED_FROM_BYTES:
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(out.key, out.value, [])
            if size > MAX_REQUEST_BYTES:
                # aiokafka's send() refuses such a record before it reaches a batch; so do
                # we, before anything is sent: no batch carries a record the broker refuses.
                raise MessageSizeTooLargeError(
                    f"a record to {out.topic} is {size} bytes when serialized, larger than "
                    f"the maximum request size ({MAX_REQUEST_BYTES})")
        partition = out.partition
        if partition is None:
            known = partitions.get(out.topic)
            if known is None:
                known = partitions[out.topic] = list(await producer.partitions_for(out.topic))
            partition = default_partition(out.key, known)
        groups.setdefault((out.topic, partition), []).append(out)
    futures: list[asyncio.Future[Any]] = []
    submitted = await asyncio.gather(
        *(_submit(producer, topic, partition, group, futures)
          for (topic, partition), group in groups.items()),
        return_exceptions=True)
    results = await asyncio.gather(*futures, return_exceptions=True)
    for result in (*submitted, *results):
        if isinstance(result, BaseException):
            raise result


async def _submit(producer: AIOKafkaProducer, topic: str, partition: int,
                  group: list[Output], futures: list[asyncio.Future[Any]]) -> None:
    """Pack ``group`` into batches and hand them to the producer in order; each batch's
    delivery future goes into ``futures`` as soon as it exists."""
    batch = producer.create_batch()
    for out in group:
        if batch.append(timestamp=None, key=out.key, value=out.value) is None:
            await _send_batch(producer, batch, topic, partition, futures)
            batch = producer.create_batch()
            batch.append(timestamp=None, key=out.key, value=out.value)
    if batch.record_count():
        await _send_batch(producer, batch, topic, partition, futures)


async def _send_batch(producer: AIOKafkaProducer, batch: Any, topic: str, partition: int,
                      futures: list[asyncio.Future[Any]]) -> None:
    # Closed, so the sender takes it at once instead of lingering for more records.
    batch.close()
    future = await producer.send_batch(batch, topic, partition=partition)
    # Retrieved whatever happens next, even when the caller is cancelled before it looks:
    # a failed batch must never log "Future exception was never retrieved".
    future.add_done_callback(_retrieve)
    futures.append(future)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


@functools.lru_cache(maxsize=16_384)
def _key_hash(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key`` in a topic of ``partitions`` partitions, as Kafka's default
    partitioner picks it (murmur2 of the key bytes, positive, modulo the count)."""
    return _key_hash(key) % partitions


def bulk_producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    """A plain (non-transactional) producer with ``options``: for loading test and benchmark
    data fast, never for the pipeline's own outputs."""
    return AIOKafkaProducer(**connection(settings), **options)


# Processes that hold a group lease (the tick producer) subclass this, not aiokafka's name.
RebalanceListener = ConsumerRebalanceListener


def default_partition(key: bytes | None, partitions: list[int]) -> int:
    """The partition aiokafka's ``DefaultPartitioner`` picks for ``key`` among
    ``partitions`` (the producer's metadata, in its order): murmur2 of the key bytes, as the
    Java client does; a record without a key goes to any partition. Hashes are cached: a
    burst sends many records per user."""
    if key is None:
        return random.choice(partitions)
    return partitions[_key_hash(key) % len(partitions)]


async def send(producer: AIOKafkaProducer, outputs: Iterable[Output]) -> None:
    """``send_all`` with aiokafka's errors translated into ours."""
    async with translated():
        await send_all(producer, outputs)


async def start(*clients: Any) -> None:
    """Start producers and consumers, translating aiokafka's errors into ours."""
    async with translated():
        for client in clients:
            await client.start()


async def stop_quietly(*clients: Any) -> None:
    """Stop producers and consumers on the way out; a broker already gone is no news."""
    for client in clients:
        with suppress(KafkaError):
            await client.stop()


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Turn an aiokafka error raised inside into ours (``translate``), chained with ``from``:
    the one place processes meet aiokafka's exceptions."""
    try:
        yield
    except (TimeoutError, KafkaError) as exc:
        raise translate(exc) from exc
