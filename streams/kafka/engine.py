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

Restores run outside aiokafka's rebalance listener, in a task per partition, with the
partition paused: the listener only records the assignment. Inside the listener no
heartbeat is sent (aiokafka starts its heartbeat task after the callback returns), so a
long restore would cost the member its session, and a cancellation raised there ends the
group coordinator for good (docs/exactly-once.md, "Restores and the group"). A restore
that fails other than transiently, or a consumer that fails, ends ``run`` with the error:
the process exits non-zero and is restarted.

Over 400 lines on purpose: the loop, the restore off the rebalance listener, the
per-partition reset with backoff and the side-by-side transactions share one
partition lifecycle (producers, next offsets, restores in flight) that a split would have
to pass around.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from schemas.limits import DEAD_LETTER_KEY_BYTES
from streams import codec
from streams.errors import (
    BrokerUnavailable,
    ComponentStopped,
    Fenced,
    InvalidEvent,
    Rejected,
    TransientError,
)
from streams.kafka import client as kafka
from streams.kafka.client import Output, Record, TopicPartition
from streams.retry import Backoff
from streams.settings import Settings
from streams.telemetry import health, metrics
from streams.telemetry.logs import fields

log = logging.getLogger("cronorch.engine")
T = TypeVar("T")
RESET_BACKOFF = Backoff(base_s=0.5, cap_s=10.0)
REQUEST_TIMEOUT_S = 30.0  # a broker request that takes longer resets the partition
CLOSE_TIMEOUT_S = 5.0  # stopping a client, aborting a transaction: best effort, bounded
PROGRESS_BOUND_S = 60.0  # not ready when there is lag and no batch committed for this long
LONG_PLANNING_S = 0.05  # a partition's planning this long is followed by a turn of the loop
TURN_S = 0.001


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
    """Records the assignment and nothing more: aiokafka calls it inside the group join,
    where no heartbeat is sent and a cancellation ends the group coordinator for good."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.processor.release([tp.partition for tp in revoked])

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.processor.assigned([tp.partition for tp in assigned])


class Processor:
    """One role's consumer and its per-partition producers (see the module docstring).

    A partition is *restoring* from its assignment (or a reset) until its producer has
    started, its state is restored and the consumer is positioned at its committed offset;
    meanwhile it is paused and the loop keeps polling, so the group's heartbeats go on and
    the other partitions are processed. Only then does it join ``producers``.
    """

    def __init__(self, settings: Settings, role: str, source_topic: str,
                 handler: PartitionHandler) -> None:
        self.settings = settings
        self.role = role
        self.name = f"processor {role}"
        self.source_topic = source_topic
        self.handler = handler
        self.group_id = settings.group_id(role)
        self.consumer = kafka.consumer(
            settings, group_id=self.group_id, max_poll_records=2000,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=1_000,
            rebalance_timeout_ms=30_000)
        self.producers: dict[int, Any] = {}
        self.restores: dict[int, asyncio.Task[None]] = {}
        self.next_offset: dict[int, int] = {}
        self.lock = asyncio.Lock()
        # One state rebuild at a time: several CPU-bound threads at once take the GIL from
        # the event loop in turns (each hand-over waits out the switch interval), which
        # slowed the loop to a crawl — signals, heartbeats and all — for no gain in speed.
        self.rebuilding = asyncio.Semaphore(1)
        self.batches = 0
        self.failures: Counter[int] = Counter()  # consecutive failed batches per partition
        self.rng = random.Random()
        self.crashed: BaseException | None = None  # a restore that failed unexpectedly
        self.ended = False
        self.stopping = False
        self.joined = False
        self.progress_at = time.monotonic()
        # Registered from the start: until its partitions are assigned and restored the
        # process is not ready, even before ``run`` has reached the broker.
        health.HEALTH.register(self)

    # --- health (called from the HTTP thread: plain reads only) --------------------------

    def alive(self) -> str | None:
        if self.crashed is not None:
            return f"restore failed: {type(self.crashed).__name__}"
        return "stopped" if self.ended else None

    def ready(self) -> str | None:
        if not self.joined:
            return "no partitions assigned yet"
        restoring = sorted(self.restores)
        if restoring:
            return f"restoring partitions {restoring}"
        stalled_s = time.monotonic() - self.progress_at
        if stalled_s > PROGRESS_BOUND_S and self._lagging():
            return f"lag and no progress for {stalled_s:.0f} s"
        return None

    def _lagging(self) -> bool:
        for p, next_offset in list(self.next_offset.items()):
            end = self.consumer.last_stable_offset(TopicPartition(self.source_topic, p))
            # A transaction's commit marker takes an offset no record has: one is not lag.
            if end is not None and end - next_offset > 1:
                return True
        return False

    # --- ownership ---------------------------------------------------------------------

    def assigned(self, partitions: list[int]) -> None:
        """The group gave us ``partitions``: pause each and restore it in the background."""
        self.joined = True
        log.info("partitions assigned", extra=fields(role=self.role, partitions=partitions))
        for p in sorted(partitions):
            self._begin_restore(p, None)

    async def release(self, partitions: list[int]) -> None:
        restores = [t for p in partitions if (t := self.restores.pop(p, None)) is not None]
        for task in restores:
            task.cancel()
        await asyncio.gather(*restores, return_exceptions=True)
        async with self.lock:  # waits for the batch in flight
            for p in partitions:
                await self._close(p)
            metrics.PARTITIONS.labels(self.role).set(len(self.producers))
        log.info("partitions revoked", extra=fields(role=self.role, partitions=partitions))

    def _begin_restore(self, p: int, reason: BaseException | None) -> None:
        self.consumer.pause(TopicPartition(self.source_topic, p))
        previous = self.restores.get(p)
        if previous is not None:  # a revoke that failed inside aiokafka left it behind
            previous.cancel()
        task = asyncio.create_task(self._restore(p, reason), name=f"{self.name} restore {p}")
        self.restores[p] = task
        task.add_done_callback(functools.partial(self._restore_ended, p))

    def _restore_ended(self, p: int, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            if self.restores.get(p) is not task:
                return  # revoked, replaced or stopping: whoever cancelled it took it out
            exc: BaseException | None = ComponentStopped(
                f"{self.name} restore of partition {p}", "was cancelled from inside")
        else:
            exc = task.exception()
        if exc is not None and self.crashed is None:
            self.crashed = exc  # the loop raises it: the process ends and is restarted

    async def _restore(self, p: int, reason: BaseException | None) -> None:
        """Open p (fence, restore, seek to the committed offset), retrying with backoff
        while the broker refuses; then resume fetching it."""
        tp = TopicPartition(self.source_topic, p)
        started = time.monotonic()
        while True:
            if reason is not None:
                self.failures[p] += 1
                delay_s = RESET_BACKOFF.delay_s(self.failures[p], self.rng)
                log.warning("partition reset", exc_info=reason, extra=fields(
                    role=self.role, partition=p, attempt=self.failures[p],
                    backoff_s=round(delay_s, 3)))
                await asyncio.sleep(delay_s)
            producer: Any = None
            try:
                producer = await self._start_producer(p)
                entries = await self._load(p, producer)
                committed = await asyncio.wait_for(self.consumer.committed(tp),
                                                   REQUEST_TIMEOUT_S)
                if committed is None:
                    await self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, committed)
            except (TimeoutError, KafkaError, BrokerUnavailable) as exc:
                await self._discard(p, producer)
                reason = exc
                continue
            except asyncio.CancelledError as exc:
                await self._discard(p, producer)
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # a revoke or a stop
                # aiokafka lets a CancelledError of its own tasks escape into the caller's
                # (how the first restore used to die inside the rebalance listener): a
                # failure like any other here, not a reason to give p up silently.
                reason = BrokerUnavailable(f"cancelled inside the Kafka client: {exc!r}")
                continue
            except BaseException:
                await self._discard(p, producer)
                raise
            break
        # From here on nothing awaits: a revoke cannot land between these steps.
        self.producers[p] = producer
        self.next_offset[p] = committed or 0
        if self.restores.get(p) is asyncio.current_task():
            del self.restores[p]
        self.consumer.resume(tp)
        self.progress_at = time.monotonic()
        metrics.PARTITIONS.labels(self.role).set(len(self.producers))
        log.info("partition restored", extra=fields(
            role=self.role, partition=p, changelog_records=entries,
            duration_s=round(time.monotonic() - started, 3)))

    async def _start_producer(self, p: int) -> Any:
        producer = kafka.producer(self.settings, self.settings.transactional_id(self.role, p))
        try:
            # InitProducerId fences and aborts any previous owner of p. aiokafka retries it
            # for as long as the broker is away: bounded here, so a reset backs off instead.
            await asyncio.wait_for(producer.start(), REQUEST_TIMEOUT_S)
        except BaseException as exc:
            await _stop_quietly(producer)
            if isinstance(exc, KafkaError):
                raise kafka.translate(exc) from exc
            raise
        return producer

    async def _load(self, p: int, producer: Any) -> int:
        """Restore p's state from its changelog partition; return the records read.

        The changelog streams into the rebuild: each fetched batch goes to the thread that
        rebuilds the state (a large state takes seconds of CPU: off the event loop, so
        heartbeats, the other partitions and the health endpoint go on meanwhile), at most
        ``FEED_DEPTH`` batches ahead of it. The partition is never held whole as records
        (that list doubled a restore's peak memory), and the read overlaps the rebuild.
        """
        topic = self.handler.changelog_topic
        async with self.rebuilding:
            feed = _Feed(asyncio.get_running_loop())
            work = asyncio.ensure_future(_in_thread(_rebuild, self.handler.assign, p, feed))
            try:
                if topic is not None:
                    async with contextlib.aclosing(kafka.read_batches(
                            self.settings, topic, p,
                            stall_timeout_s=REQUEST_TIMEOUT_S)) as batches:
                        async for batch in batches:
                            if not await feed.put(batch, work):
                                break  # the rebuild failed: ``work`` raises it below
                feed.close()
                await asyncio.shield(work)
            except BaseException:
                feed.abandon()
                if not self.stopping:
                    # A revoke or a failed read: let the thread end (it stops at its next
                    # batch) so that its state cannot land after a newer owner's, then
                    # drop it (``_discard``).
                    with contextlib.suppress(BaseException):
                        await work
                raise
        return feed.records

    async def _discard(self, p: int, producer: Any) -> None:
        self.handler.revoke(p)
        if producer is not None:
            await _stop_quietly(producer)

    async def _close(self, p: int) -> None:
        producer = self.producers.pop(p, None)
        self.handler.revoke(p)
        self.next_offset.pop(p, None)
        if producer is not None:
            await _stop_quietly(producer)

    async def _reset(self, p: int, reason: BaseException) -> None:
        """Throw away p's uncommitted work and restore p again in the background, from its
        committed offset, retrying with backoff until the broker lets us."""
        producer = self.producers.get(p)
        if producer is not None:
            await _abort_quietly(producer)
        await self._close(p)
        metrics.PARTITIONS.labels(self.role).set(len(self.producers))
        self._begin_restore(p, reason)

    # --- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop``; raises when the consumer or a restore fails for good.
        Cancelling it aborts the batch in flight and closes everything, bounded in time."""
        self.consumer.subscribe([self.source_topic], listener=_Listener(self))
        try:
            await self.consumer.start()
        except KafkaError as exc:
            raise kafka.translate(exc) from exc
        metrics.PROCESSOR_UP.labels(self.role).set(1)
        try:
            while not stop.is_set():
                if self.crashed is not None:
                    raise self.crashed
                batches = await self.consumer.getmany(
                    timeout_ms=max(self.settings.commit_interval_ms, 50), max_records=2000)
                if not batches:
                    if not self.restores:
                        self.progress_at = time.monotonic()
                    continue
                async with self.lock:
                    await self._process_all(batches, stop)
        finally:
            metrics.PROCESSOR_UP.labels(self.role).set(0)
            self.stopping = True
            await self._shutdown()
            self.ended = True

    async def _shutdown(self) -> None:
        restores = list(self.restores.values())
        self.restores.clear()
        for task in restores:
            task.cancel()
        await asyncio.gather(*restores, return_exceptions=True)
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            # Leaving the group hands our partitions over now instead of after the
            # session timeout; with the broker away it cannot, and is not waited for long.
            await asyncio.wait_for(self.consumer.stop(), CLOSE_TIMEOUT_S)
        await asyncio.gather(*(self._close(p) for p in list(self.producers)))

    async def _process_all(self, batches: dict[TopicPartition, list[Any]],
                           stop: asyncio.Event) -> None:
        """One poll's batches: each partition planned in turn (handlers are synchronous and
        not thread-safe), its transaction started at once, then all of them awaited.

        Each partition has its own transactional producer, so p's round trips (begin,
        sends, offsets, commit) overlap the planning of the next partitions and each other
        instead of queueing behind them. The loop is yielded between partitions so the
        transactions started go out, and the group's heartbeats with them, between two
        plannings. Every failure stays per partition (``_transact``); a cancellation aborts
        every transaction in flight; a refusal for good is raised once all have ended."""
        inflight: list[asyncio.Task[None]] = []
        try:
            for tp, msgs in batches.items():
                if stop.is_set():
                    break
                planned_from = time.monotonic()
                batch = self._plan(tp, msgs)
                if batch is not None:
                    inflight.append(asyncio.create_task(
                        self._transact(batch), name=f"{self.name} batch {tp.partition}"))
                # After a long planning, a turn on a timer rather than sleep(0): a bare yield
                # runs the next planning before the callbacks that fell due meanwhile (the
                # group's heartbeat, the transaction just started), doubling their wait.
                long = time.monotonic() - planned_from > LONG_PLANNING_S
                await asyncio.sleep(TURN_S if long else 0)
        except asyncio.CancelledError:
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
            raise
        except BaseException:
            await asyncio.gather(*inflight, return_exceptions=True)
            raise
        ended = await asyncio.gather(*inflight, return_exceptions=True)
        for result in ended:
            if isinstance(result, BaseException):
                raise result

    async def _process(self, tp: TopicPartition, msgs: list[Any]) -> None:
        """One partition's batch on its own: planned, then committed."""
        batch = self._plan(tp, msgs)
        if batch is not None:
            await self._transact(batch)

    def _plan(self, tp: TopicPartition, msgs: list[Any]) -> _Batch | None:
        """What p's batch decides (the handler's outputs, fitted), or None when p is not
        ours to process right now. Synchronous: nothing can revoke p meanwhile."""
        p = tp.partition
        producer = self.producers.get(p)
        if producer is None:
            return None  # restoring or revoked: the restore seeks back to the committed offset
        floor = self.next_offset.get(p, -1)
        records = [kafka.to_record(m) for m in msgs if m.offset >= floor]
        if not records:
            return None
        batch = _Batch(tp, producer, records, time.monotonic())
        try:
            batch.outputs = fit(self.settings, self.role, p, records[-1],
                                self.handler.process(p, records))
        except (TimeoutError, KafkaError, Fenced, BrokerUnavailable) as exc:
            batch.failure = exc
        return batch

    async def _transact(self, batch: _Batch) -> None:
        """Commit ``batch`` in one transaction with its offset; on failure reset its
        partition, or raise when the refusal is for good."""
        tp, producer, records = batch.tp, batch.producer, batch.records
        p = tp.partition
        try:
            if batch.failure is not None:
                raise batch.failure
            await producer.begin_transaction()
            await kafka.send_all(producer, batch.outputs)
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
        except asyncio.CancelledError:
            # A stop that did not wait for this batch: the transaction must not stay open
            # until the broker's timeout (the next owner's fencing would abort it too).
            metrics.TRANSACTIONS.labels(self.role, "aborted").inc()
            await _abort_quietly(producer)
            raise
        self.next_offset[p] = records[-1].offset + 1
        committed_at_s = time.time()
        on_commit = getattr(self.handler, "committed", None)
        if on_commit is not None:
            on_commit(p, committed_at_s)
        metrics.LAST_COMMIT.labels(self.role).set(committed_at_s)
        highwater = self.consumer.highwater(tp)
        if highwater is not None:
            metrics.CONSUMER_LAG.labels(self.role, str(p)).set(
                max(0, highwater - self.next_offset[p]))
        self.failures.pop(p, None)
        self.batches += 1
        self.progress_at = time.monotonic()
        metrics.RECORDS.labels(self.role).inc(len(records))
        metrics.TRANSACTIONS.labels(self.role, "committed").inc()
        metrics.TRANSACTION_SECONDS.labels(self.role).observe(time.monotonic() - batch.start)


@dataclass(slots=True)
class _Batch:
    """One partition's planned batch, between its planning and its transaction."""

    tp: TopicPartition
    producer: Any
    records: list[Record]
    start: float
    outputs: list[Output] = field(default_factory=list)
    failure: Exception | None = None


async def _stop_quietly(producer: Any) -> None:
    with contextlib.suppress(Exception, asyncio.TimeoutError):
        await asyncio.wait_for(producer.stop(), CLOSE_TIMEOUT_S)


async def _abort_quietly(producer: Any) -> None:
    with contextlib.suppress(Exception, asyncio.TimeoutError):
        await asyncio.wait_for(producer.abort_transaction(), CLOSE_TIMEOUT_S)


FEED_DEPTH = 4  # batches of up to 5,000 records read ahead of a rebuild


class RestoreAbandoned(Exception):
    """The restore a rebuild thread was fed for was given up (a revoke, a failed read)."""


class _Feed:
    """A partition's changelog batches, from the event loop to the thread rebuilding its
    state: the thread iterates over the records as they come (``__iter__``, blocking), the
    loop puts batches (``put``), waiting while ``FEED_DEPTH`` of them are not taken yet."""

    _END = object()
    _ABANDONED = object()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.room = asyncio.Semaphore(FEED_DEPTH)
        self.records = 0

    async def put(self, batch: list[Record], work: asyncio.Future[Any]) -> bool:
        """Hand ``batch`` over once there is room; False if ``work`` (the thread) ended
        first (it failed, or its handler reads no changelog): nobody takes batches."""
        room = asyncio.ensure_future(self.room.acquire())
        try:
            await asyncio.wait([room, work], return_when=asyncio.FIRST_COMPLETED)
        finally:
            room.cancel()
        if not room.done() or room.cancelled():
            return False
        self.queue.put(batch)
        self.records += len(batch)
        return True

    def close(self) -> None:
        self.queue.put(self._END)

    def abandon(self) -> None:
        self.queue.put(self._ABANDONED)

    def __iter__(self) -> Iterator[Record]:
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            if item is self._ABANDONED:
                raise RestoreAbandoned("restore given up")
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                self.loop.call_soon_threadsafe(self.room.release)
            yield from item


def _rebuild(assign: Callable[[int, Iterable[Record]], None], p: int, feed: _Feed) -> None:
    """``assign(p, feed)`` in a restore thread, with the cyclic garbage collector off.

    A rebuild allocates millions of objects and frees next to none: each collection that
    allocation triggers walks them all (generation 2 again and again as the heap grows),
    holding the GIL: 1-6 s stalls of the event loop at a million tasks, enough to lose the
    group session. Freezing the state built, so that later collections skip it too, is
    the process's policy, not the engine's: the worker does it in the handler's ``assign``
    (``streams.processes.collector.settle``, for both runtimes, after collecting the young
    generations so that the loop's fresh cyclic garbage is not frozen with it).
    """
    global _REBUILDING, _GC_WAS_ENABLED
    # Rebuilds of several processors (roles) may overlap: the first in turns the collector
    # off, the last out turns it back on, as it found it.
    with _GC_LOCK:
        if _REBUILDING == 0:
            _GC_WAS_ENABLED = gc.isenabled()
            gc.disable()
        _REBUILDING += 1
    try:
        assign(p, feed)
    finally:
        with _GC_LOCK:
            _REBUILDING -= 1
            if _REBUILDING == 0 and _GC_WAS_ENABLED:
                gc.enable()


_GC_LOCK = threading.Lock()
_REBUILDING = 0  # rebuild threads running (``_rebuild``)
_GC_WAS_ENABLED = True


_THREADS: set[threading.Thread] = set()


def threads_running() -> bool:
    """True while a restore thread (``_in_thread``) is still alive.

    Such a daemon thread must not meet the interpreter's finalization: a daemon thread that
    wants the GIL back then is ended by a forced unwind, and one inside Rust code (orjson,
    pydantic-core) turns that into an abort ("FATAL: exception not rethrown", exit -6). A
    process that stops while one runs leaves with ``os._exit`` instead (``streams.cli``)."""
    return any(thread.is_alive() for thread in _THREADS)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a daemon thread: unlike ``asyncio.to_thread`` (the default executor,
    joined at exit), a restore still running does not hold up the end of the process."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result, exc = fn(*args), None
        except BaseException as caught:
            result, exc = None, caught
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            loop.call_soon_threadsafe(settle, result, exc)
        _THREADS.discard(threading.current_thread())

    thread = threading.Thread(target=work, name="restore", daemon=True)
    _THREADS.add(thread)
    thread.start()
    return await future
