"""Exactly-once partition processing, owned by this project.

One consumer in a group reads a source topic ``read_committed``; for each assigned source
partition p there is one transactional producer with the transactional id
``<app>-<role>-<p>``. A batch of p's records is handed to the handler, and everything it
decides — outputs to any topic (sinks the app never consumes included), p's state
changelog writes, and p's consumed offset — commits in one Kafka transaction.

Why not faust-streaming's ``processing_guarantee="exactly_once"``: in 0.15.3 a send to a
topic the app does not consume goes through the plain producer outside the transaction,
a revoke never aborts open transactions, and the send buffer is not drained before the
commit (faust-streaming issues #177, #517, #323). tests/acceptance/test_exactly_once.py shows
the duplicates it produces under SIGKILL; docs/exactly-once.md explains the design.

Outputs over ``max_message_bytes`` are replaced by dead letters before the transaction
(``fit``); a refusal no retry can fix (a record too large for the topic after all, a missing
right) stops the process with the error instead of resetting p forever.

Transient failures (a broker restart, a timeout) reset p after an exponential backoff with
full jitter (0.5 s doubling to 10 s), so a broker outage is waited out instead of spun on.

Fencing: starting p's producer (InitProducerId) aborts whatever a previous owner — crashed
or a zombie — left open on p and fences it, before p's state is restored from the
changelog and its committed offset is read. Any failure inside a transaction resets p:
abort, drop the in-memory state, restore it again and seek back to the committed offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from schemas.limits import DEAD_LETTER_KEY_BYTES
from streams import codec
from streams.errors import BrokerUnavailable, Fenced, InvalidEvent, Rejected, TransientError
from streams.jobs.decisions import backoff_cap_s
from streams.jobs.registry import Retries
from streams.kafka import client as kafka
from streams.kafka.client import Output, Record, TopicPartition
from streams.settings import Settings
from streams.telemetry import metrics
from streams.telemetry.logs import fields

log = logging.getLogger("cronorch.engine")
T = TypeVar("T")
RESET_BACKOFF = Retries(max_attempts=1_000_000, base_delay_s=0.5, max_delay_s=10.0)


class PartitionHandler(Protocol):
    """The business side of a processor; ``process`` may mutate state, never does IO."""

    changelog_topic: str | None

    def assign(self, partition: int, changelog: Iterable[Record]) -> None: ...

    def revoke(self, partition: int) -> None: ...

    def process(self, partition: int, records: list[Record]) -> list[Output]: ...


def dead_letter(settings: Settings, record: Record, reason: str) -> Output:
    """The dead letter of ``record`` (original bytes, where it came from, why), dated by the
    record's broker timestamp so that a replay writes the same letter."""
    letter = codec.dead_letter(
        reason, topic=record.topic, partition=record.partition, offset=record.offset,
        key=record.key, value=record.value,
        failed_at=datetime.fromtimestamp(record.timestamp_ms / 1000, UTC),
    )
    return Output(settings.topics.dead_letters, letter_key(record.key), codec.dumps(letter))


def letter_key(key: bytes | None) -> bytes | None:
    """The key a dead letter is written with: the original's, cut to the prefix the letter
    keeps of it, so a hostile key cannot make the letter itself too large."""
    return None if key is None else key[:DEAD_LETTER_KEY_BYTES]


def caused_by_record(exc: Exception) -> bool:
    """Whether ``exc`` can only come from one record's content, so that dead-lettering that
    record is the cure. Infrastructure errors (a broker or database away, fencing, a refusal
    no record can fix) and running out of memory must reach the engine instead."""
    return not isinstance(exc, (TransientError, Fenced, Rejected, KafkaError, MemoryError))


def failure_reason(exc: Exception, doing: str) -> str:
    """A reason for a record that failed while ``doing`` something: an ``InvalidEvent``'s
    own reason, else the error's class only (its message may quote the record)."""
    if isinstance(exc, InvalidEvent):
        return exc.reason
    return f"{doing} failed: {type(exc).__name__}"


def decode_all(settings: Settings, role: str, records: list[Record],
               decode: Callable[[bytes | None], T]) -> tuple[list[tuple[Record, T]], list[Output]]:
    """Decode each record; those that fail become dead letters (counted per ``role``)."""
    decoded: list[tuple[Record, T]] = []
    letters: list[Output] = []
    for record in records:
        try:
            decoded.append((record, decode(record.value)))
        except Exception as exc:
            if not caused_by_record(exc):
                raise
            letters.append(dead_letter(settings, record, failure_reason(exc, "decoding")))
    if letters:
        metrics.DEAD_LETTERS.labels(role).inc(len(letters))
    return decoded, letters


def fit(settings: Settings, role: str, partition: int, last: Record,
        outputs: list[Output]) -> list[Output]:
    """``outputs`` with any record over ``settings.max_message_bytes`` replaced by a dead letter
    of it (a bounded prefix, its size and hash), so one oversized output can never make the
    broker refuse the transaction over and over. The limits on inputs keep this from
    happening; it is the last line, and each replacement is logged and counted."""
    fitted: list[Output] = []
    for out in outputs:
        size = len(out.value or b"") + len(out.key or b"")
        if size <= settings.max_message_bytes:
            fitted.append(out)
            continue
        reason = (f"output to {out.topic} of {size} bytes is over max.message.bytes "
                  f"({settings.max_message_bytes})")
        log.error("oversized output dead-lettered", extra=fields(
            role=role, partition=partition, topic=out.topic, size_bytes=size))
        metrics.DEAD_LETTERS.labels(role).inc()
        letter = codec.dead_letter(
            reason, topic=out.topic, partition=partition, offset=last.offset, key=out.key,
            value=out.value, failed_at=datetime.fromtimestamp(last.timestamp_ms / 1000, UTC))
        fitted.append(Output(settings.topics.dead_letters, letter_key(out.key),
                             codec.dumps(letter)))
    return fitted


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.processor.release([tp.partition for tp in revoked])

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.processor.acquire([tp.partition for tp in assigned])


class Processor:
    def __init__(self, settings: Settings, role: str, source_topic: str,
                 handler: PartitionHandler) -> None:
        self.settings = settings
        self.role = role
        self.source_topic = source_topic
        self.handler = handler
        self.group_id = settings.group_id(role)
        self.consumer = kafka.consumer(settings, group_id=self.group_id, max_poll_records=2000,
                                       session_timeout_ms=6_000, heartbeat_interval_ms=1_000,
                                       rebalance_timeout_ms=30_000)
        self.producers: dict[int, Any] = {}
        self.next_offset: dict[int, int] = {}
        self.lock = asyncio.Lock()
        self.batches = 0
        self.failures: Counter[int] = Counter()  # consecutive failed batches per partition
        self.rng = random.Random()

    # --- ownership ---------------------------------------------------------------------

    async def acquire(self, partitions: list[int]) -> None:
        async with self.lock:
            for p in sorted(partitions):
                await self._open(p)
            metrics.PARTITIONS.labels(self.role).set(len(self.producers))
            log.info("partitions assigned", extra=fields(role=self.role, partitions=partitions))

    async def release(self, partitions: list[int]) -> None:
        async with self.lock:
            for p in partitions:
                await self._close(p)
            metrics.PARTITIONS.labels(self.role).set(len(self.producers))
            log.info("partitions revoked", extra=fields(role=self.role, partitions=partitions))

    async def _open(self, p: int) -> None:
        producer = kafka.producer(self.settings, self.settings.transactional_id(self.role, p))
        try:
            await producer.start()  # InitProducerId: fences and aborts any previous owner of p
        except KafkaError as exc:
            raise kafka.translate(exc) from exc
        self.producers[p] = producer
        if self.handler.changelog_topic is not None:
            entries: list[Record] = []
            await kafka.read_partition(self.settings, self.handler.changelog_topic, p,
                                       entries.append)
            self.handler.assign(p, entries)
        else:
            self.handler.assign(p, ())
        self.next_offset.pop(p, None)

    async def _close(self, p: int) -> None:
        producer = self.producers.pop(p, None)
        self.handler.revoke(p)
        self.next_offset.pop(p, None)
        if producer is not None:
            try:
                await producer.stop()
            except KafkaError:
                log.warning("producer stop failed", extra=fields(role=self.role, partition=p))

    async def _reset(self, p: int, reason: BaseException) -> None:
        """Throw away p's uncommitted work and start p again from its committed offset,
        retrying with backoff until the broker lets us."""
        producer = self.producers.get(p)
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.abort_transaction()
        await self._close(p)
        while True:
            self.failures[p] += 1
            delay_s = self.rng.uniform(0, backoff_cap_s(RESET_BACKOFF, self.failures[p]))
            log.warning("partition reset", exc_info=reason, extra=fields(
                role=self.role, partition=p, attempt=self.failures[p],
                backoff_s=round(delay_s, 3)))
            await asyncio.sleep(delay_s)
            try:
                await self._open(p)
                tp = TopicPartition(self.source_topic, p)
                committed = await self.consumer.committed(tp)
                if committed is None:
                    await self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, committed)
                return
            except (TimeoutError, KafkaError, BrokerUnavailable) as exc:
                await self._close(p)
                reason = exc

    # --- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.consumer.subscribe([self.source_topic], listener=_Listener(self))
        try:
            await self.consumer.start()
        except KafkaError as exc:
            raise kafka.translate(exc) from exc
        try:
            while not stop.is_set():
                batches = await self.consumer.getmany(
                    timeout_ms=max(self.settings.commit_interval_ms, 50), max_records=2000)
                if not batches:
                    continue
                async with self.lock:
                    for tp, msgs in batches.items():
                        await self._process(tp, msgs)
        finally:
            await self.consumer.stop()
            async with self.lock:
                for p in list(self.producers):
                    await self._close(p)

    async def _process(self, tp: TopicPartition, msgs: list[Any]) -> None:
        p = tp.partition
        producer = self.producers.get(p)
        if producer is None:
            return  # revoked while the batch was in flight
        floor = self.next_offset.get(p, -1)
        records = [kafka.to_record(m) for m in msgs if m.offset >= floor]
        if not records:
            return
        start = time.monotonic()
        try:
            outputs = fit(self.settings, self.role, p, records[-1],
                          self.handler.process(p, records))
            await producer.begin_transaction()
            await kafka.send_all(producer, outputs)
            await producer.send_offsets_to_transaction(
                {tp: records[-1].offset + 1}, self.group_id)
            await producer.commit_transaction()
        except (TimeoutError, KafkaError, Fenced, BrokerUnavailable) as exc:
            metrics.TRANSACTIONS.labels(self.role, "aborted").inc()
            failure = kafka.translate(exc) if isinstance(exc, KafkaError) else exc
            if isinstance(failure, Rejected):
                # Outputs are already fitted to max.message.bytes, so a refusal means the
                # topic's limit or rights differ from the settings: retrying cannot help.
                with contextlib.suppress(Exception):
                    await producer.abort_transaction()
                log.error("Kafka refused the batch for good", extra=fields(
                    role=self.role, partition=p, error_class=type(exc).__name__))
                raise failure from exc
            await self._reset(p, exc)
            return
        self.next_offset[p] = records[-1].offset + 1
        self.failures.pop(p, None)
        self.batches += 1
        metrics.RECORDS.labels(self.role).inc(len(records))
        metrics.TRANSACTIONS.labels(self.role, "committed").inc()
        metrics.TRANSACTION_SECONDS.labels(self.role).observe(time.monotonic() - start)
