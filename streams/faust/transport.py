"""A faust transport that keeps every send of an event inside its source partition's
Kafka transaction: this project's fix for faust-streaming's ``exactly_once``.

Plugged in through faust's transport registry, no monkeypatching: an app sets
``processing_guarantee="exactly_once"`` and ``broker="cronorch://host:port"`` (the
``faust.transports`` entry point in pyproject.toml maps the scheme to :class:`Transport`).
faust keeps its own duties — ``read_committed`` fetching, acking, computing the offset
that is safe to commit, table recovery — and this module owns the transactions:

- One :class:`PartitionTransaction` per assigned source partition p, with its own
  transactional producer (``<app id>-<topic>-<p>``). Starting it on assignment fences and
  aborts whatever a previous owner of p left open; faust starts transaction managers
  before it recovers tables, so recovery reads p's changelog only after that.
- Every send made while an event of p is processed goes through p's producer: awaited
  sends (``topic.send``) find p from faust's ``current_event()``; buffered sends
  (``send_soon``, which is how tables write their changelog) are bound to p when they
  are made and published in order by p's own pump instead of faust's shared buffer.
  A send that no event owns is refused (:class:`~streams.errors.OutsideTransaction`).
- Committing p with faust's committable offset O (every event of p below O acknowledged
  by faust's streams) happens only when every event that sent in p's transaction is below
  O. If one is not (it is still being processed), the commit is deferred: p's events
  above it are held back until faust's next committable offset covers it, which its ack
  asks for at once. Committing drains p's pump, waits until the broker has acknowledged
  every send of the transaction, then puts O in the same transaction and commits it.
- Events that faust's streams skip during a rebalance (stale generation, flow stopped)
  are acked by faust without being processed; here they stay uncommitted, so the offset
  never passes them and the seek after the rebalance delivers them again. That seek
  takes a partition with no committed offset back to its beginning (aiokafka's leaves
  it past the records faust dropped, which were then lost).
- At the end of a recovery, the source partitions faust resumes are fetched only once
  its seek to the committed offsets is done and its flow resumed (which empties the
  streams' buffers); records fetched in between were emptied out, and faust took the
  jump for a gap in the log and committed past them.
- A revoke first stops the streams, waits for the events in flight and commits their
  work, before faust forgets the revoked partitions' acks (after that nothing of theirs
  could commit, and an event held back behind a deferred commit would wait for ever).
  A seek back meanwhile keeps the offsets faust counts as committed, for the same reason.
- Any failure aborts the open transactions and crashes the app, and so does revoking a
  partition with uncommitted work all the same: faust's in-memory tables would otherwise
  keep changes whose changelog was just aborted. The next owner restores them from the
  changelog.

Requires agents that handle each partition's events in order (``concurrency=1``, faust's
default) and ``stream_publish_on_commit=False`` (its default); both are checked at start.

Over 400 lines on purpose: the fix is a set of cooperating overrides of one faust
transport (consumer, producer, transaction manager, revoke order) that only hold together;
split, each part would reach into the others' faust internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Iterable, Mapping
from contextvars import ContextVar
from typing import Any

from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from faust.streams import current_event
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, FutureMessage, Message, RecordMetadata
from faust.types.core import HeadersArg

from streams.errors import ConfigError, OutsideTransaction
from streams.telemetry import metrics
from streams.telemetry.logs import fields

log = logging.getLogger("cronorch.faust")
ROLE = "faust"
# The broker aborts a transaction left open this long (aiokafka's default
# transaction.timeout.ms); a commit that cannot quiesce by then is not going to succeed.
QUIESCE_TIMEOUT_S = 60.0

# Which event a buffered send belongs to, while p's pump publishes it: the pump is its
# own task, so faust's current_event() there is whichever event started the pump.
_BUFFERED_SOURCE: ContextVar[tuple[TP, int] | None] = ContextVar(
    "cronorch_faust_buffered_source", default=None)


def transactional_id(app_id: str, tp: TP) -> str:
    return f"{app_id}-{tp.topic}-{tp.partition}"


def event_source() -> tuple[TP, int] | None:
    """The source partition and offset of the event whose processing makes this send."""
    buffered = _BUFFERED_SOURCE.get()
    if buffered is not None:
        return buffered
    event = current_event()
    if event is None:
        return None
    message = event.message
    return TP(message.topic, message.partition), message.offset


class PartitionTransaction:
    """The Kafka transaction of one source partition: what it holds and how it commits.

    ``dirty`` holds the offsets of the events that have sent in the open transaction;
    while a commit is running, ``cut`` is the highest of them and events above it wait
    (awaited sends) or are held for the next transaction (buffered sends).
    """

    def __init__(self, tp: TP, producer: Any, group_id: str, role: str = ROLE) -> None:
        self.tp = tp
        self.role = role
        self.producer = producer
        self.group_id = group_id
        self.begun = False
        self.dirty: set[int] = set()
        self.cut: int | None = None
        self.opened = asyncio.Event()
        self.opened.set()
        self.changed = asyncio.Event()
        self.inflight = 0
        self.deliveries: list[asyncio.Future[Any]] = []
        self.buffered: deque[tuple[FutureMessage, int]] = deque()
        self.held: list[tuple[FutureMessage, int]] = []
        self.pump: asyncio.Task[None] | None = None
        self.committed: int | None = None
        self.deferred_at = 0.0
        self.sealed = False  # from the end of a commit's drain to its end: nothing may send
        self.failure: BaseException | None = None
        self.lock = asyncio.Lock()
        self.begin_lock = asyncio.Lock()

    @property
    def uncommitted(self) -> bool:
        return bool(self.begun or self.dirty or self.buffered or self.held or self.inflight)

    def admits(self, offset: int) -> bool:
        if self.sealed:
            return False
        return self.cut is None or offset <= self.cut or offset in self.dirty

    def _check(self) -> None:
        if self.failure is not None:
            raise ProducerSendError(f"transaction of {self.tp} failed: {self.failure!r}")

    async def _begin(self) -> None:
        async with self.begin_lock:
            if not self.begun:
                await self.producer.begin_transaction()
                self.begun = True

    async def send(self, offset: int, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp_ms: int | None,
                   headers: Any) -> asyncio.Future[Any]:
        while not self.admits(offset):
            await self.opened.wait()
        self._check()
        self.dirty.add(offset)
        self.inflight += 1
        try:
            await self._begin()
            delivery: asyncio.Future[Any] = await self.producer.send(
                topic, value, key=key, partition=partition, timestamp_ms=timestamp_ms,
                headers=headers)
        except KafkaError as exc:
            self.failure = exc
            raise ProducerSendError(f"send to {topic} failed: {exc!r}") from exc
        finally:
            self.inflight -= 1
            self.changed.set()
        self.deliveries.append(delivery)
        return delivery

    def send_soon(self, fut: FutureMessage, offset: int) -> None:
        self._check()
        if not self.admits(offset):
            self.held.append((fut, offset))
            return
        self._buffer(fut, offset)

    def _buffer(self, fut: FutureMessage, offset: int) -> None:
        self.dirty.add(offset)
        self.buffered.append((fut, offset))
        if self.pump is None or self.pump.done():
            self.pump = asyncio.ensure_future(self._publish_buffered())

    def _release_held(self, below: int | None = None) -> None:
        """Buffer the held sends of events below ``below`` (all when None) into the open
        transaction. An event that made only buffered sends is never held back at the
        gate, so it can be acked while its sends are held: they belong to the transaction
        that commits its offset."""
        kept: list[tuple[FutureMessage, int]] = []
        for fut, offset in self.held:
            if below is None or offset < below:
                self._buffer(fut, offset)
            else:
                kept.append((fut, offset))
        self.held = kept

    async def _publish_buffered(self) -> None:
        # One pump per partition keeps its buffered sends (a table's changelog writes)
        # in the order they were made.
        try:
            while self.buffered:
                fut, offset = self.buffered[0]
                token = _BUFFERED_SOURCE.set((self.tp, offset))
                try:
                    await fut.message.channel.publish_message(fut, wait=False)
                except Exception as exc:
                    self.failure = exc
                    if not fut.done():
                        fut.set_exception(exc)
                    return
                finally:
                    _BUFFERED_SOURCE.reset(token)
                self.buffered.popleft()
        finally:
            self.changed.set()

    def waiting_for(self, unacked: Iterable[Message]) -> bool:
        """Whether a deferred commit still waits for events of the transaction to be acked
        (False once faust's next committable offset can cover them)."""
        return self.cut is not None and any(
            m.topic == self.tp.topic and m.partition == self.tp.partition
            and m.offset <= self.cut and not m.acked for m in unacked)

    async def _drain(self, timeout_s: float) -> None:
        """Wait until every send of the transaction has been handed to the producer, then
        until the broker has acknowledged each of them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.inflight or self.buffered:
            self._check()
            self.changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{self.tp}: sends still in progress after {timeout_s} s")
            with contextlib.suppress(TimeoutError):
                # The timeout only bounds a missed wake-up; sends and the pump set `changed`.
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))
        self._check()
        for delivery in await asyncio.gather(*self.deliveries, return_exceptions=True):
            if isinstance(delivery, BaseException):
                raise delivery

    async def commit(self, offset: int, timeout_s: float = QUIESCE_TIMEOUT_S) -> bool:
        """Commit the open transaction with ``offset``, faust's committable offset for the
        partition (every event below it acknowledged); True if committed.

        An event at or past ``offset`` that has already sent (it is still being processed)
        would have its output committed without its offset, and be processed again after
        a crash. Then the commit is deferred: events above the highest one that has sent
        are held back until faust's next committable offset covers it."""
        async with self.lock:
            self._check()
            self._release_held(below=offset)
            loop = asyncio.get_running_loop()
            if self.dirty and max(self.dirty) >= offset:
                if self.cut is None:
                    self.deferred_at = loop.time()
                elif loop.time() - self.deferred_at > timeout_s:
                    raise TimeoutError(f"{self.tp}: events up to offset {self.cut} still "
                                       f"in progress after {timeout_s} s")
                self.cut = max(self.dirty)
                self.opened.clear()
                return False
            self.cut = -1  # only events that already sent may send more until committed
            self.opened.clear()
            try:
                await self._drain(timeout_s)
                self.sealed = True
                advance = self.committed is None or offset > self.committed
                if not (self.begun or advance):
                    return False
                await self._begin()
                if advance:
                    await self.producer.send_offsets_to_transaction(
                        {KafkaTopicPartition(self.tp.topic, self.tp.partition): offset},
                        self.group_id)
                await self.producer.commit_transaction()
                self.begun = False
                self.dirty.clear()
                self.deliveries.clear()
                if advance:
                    self.committed = offset
                return True
            except BaseException as exc:
                self.failure = self.failure or exc
                await self.abort()
                raise
            finally:
                self.cut = None
                self.sealed = False
                self.opened.set()
                if self.failure is None:
                    self._release_held()

    async def abort(self) -> None:
        if self.begun:
            self.begun = False
            with contextlib.suppress(Exception):
                await self.producer.abort_transaction()
            metrics.TRANSACTIONS.labels(self.role, "aborted").inc()

    async def close(self) -> None:
        """Abort whatever is open and stop the producer (releasing the partition)."""
        if self.pump is not None and not self.pump.done():
            self.pump.cancel()
            with contextlib.suppress(BaseException):
                await self.pump
        await self.abort()
        self.opened.set()
        with contextlib.suppress(KafkaError):
            await self.producer.stop()


class TransactionManager(faust_consumer.TransactionManager):
    """faust's transaction manager, replaced: per source partition, not per destination."""

    role = ROLE  # the label of its metrics and logs

    def __init__(self, transport: Any, *, consumer: Any, producer: Any,
                 **kwargs: Any) -> None:
        super().__init__(transport, consumer=consumer, producer=producer, **kwargs)
        self.transactions: dict[TP, PartitionTransaction] = {}
        self.failure: BaseException | None = None
        self._kick: asyncio.Future[bool] | None = None

    async def on_start(self) -> None:
        conf = self.app.conf
        if conf.stream_publish_on_commit:
            raise ConfigError("stream_publish_on_commit", "must be False with the cronorch "
                              "transport: it publishes outside any event's transaction")
        for agent in self.app.agents.values():
            if agent.concurrency > 1:
                raise ConfigError(f"agents.{agent.name}.concurrency", "must be 1 with the "
                                  "cronorch transport: a partition's events are committed "
                                  "in order")

    def _sources(self, tps: Iterable[TP]) -> set[TP]:
        changelogs = self.app.tables.changelog_topics
        return {TP(tp.topic, tp.partition) for tp in tps
                if tp.topic not in changelogs and not self.app.assignor.is_standby(tp)}

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in self._sources(revoked):
            await self._release(tp)

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP],
                           newly_assigned: set[TP]) -> None:
        for tp in self._sources(revoked):
            await self._release(tp)
        wanted = sorted(self._sources(assigned) - set(self.transactions))
        if wanted:
            opened = await asyncio.gather(*(self._open(tp) for tp in wanted))
            self.transactions.update(zip(wanted, opened, strict=True))
            metrics.PARTITIONS.labels(self.role).set(len(self.transactions))
            log.info("transactional producers started", extra=fields(
                role=self.role, partitions=[f"{tp.topic}:{tp.partition}" for tp in wanted]))

    def partition_producer(self, tp: TP) -> Any:
        """The (not yet started) transactional producer of source partition ``tp``; a
        subclass may build its own, with another transactional id."""
        owner = self.producer
        assert isinstance(owner, Producer), "the cronorch transport builds its own producer"
        return owner.transactional_producer(transactional_id(self.app.conf.id, tp))

    def on_committed(self, tp: TP, offset: int) -> None:
        """Called once ``tp``'s transaction has committed with ``offset``: its outputs are
        readable ``read_committed`` now."""

    async def _open(self, tp: TP) -> PartitionTransaction:
        producer = self.partition_producer(tp)
        await producer.start()  # InitProducerId: fences and aborts any previous owner of tp
        return PartitionTransaction(tp, producer, self.app.conf.id, self.role)

    async def _release(self, tp: TP) -> None:
        txn = self.transactions.pop(tp, None)
        if txn is None:
            return
        metrics.PARTITIONS.labels(self.role).set(len(self.transactions))
        uncommitted = txn.uncommitted
        await txn.close()
        if uncommitted:
            # Tables already hold this work's changes in memory; only a restart drops them.
            await self._fail(RuntimeError(f"{tp} revoked with uncommitted work: aborted"))

    def _transaction_for(self, topic: str) -> tuple[PartitionTransaction, int]:
        source = event_source()
        if source is None:
            raise OutsideTransaction(f"send to {topic} outside the processing of an event: "
                                     "no source partition's transaction can own it")
        tp, offset = source
        txn = self.transactions.get(tp)
        if txn is None:
            raise OutsideTransaction(f"send to {topic} for an event of {tp.topic}:"
                                     f"{tp.partition}, which this worker does not own")
        return txn, offset

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp: float | None,
                   headers: HeadersArg | None, *,
                   transactional_id: str | None = None) -> Awaitable[RecordMetadata]:
        txn, offset = self._transaction_for(topic)
        if isinstance(headers, Mapping):
            headers = list(headers.items())
        timestamp_ms = int(timestamp * 1000.0) if timestamp else None
        return await txn.send(offset, topic, key, value, partition, timestamp_ms, headers)

    def send_soon(self, fut: FutureMessage) -> None:
        txn, offset = self._transaction_for(str(fut.message.channel))
        txn.send_soon(fut, offset)

    async def send_and_wait(self, topic: str, key: bytes | None, value: bytes | None,
                            partition: int | None, timestamp: float | None,
                            headers: HeadersArg | None, *,
                            transactional_id: str | None = None) -> RecordMetadata:
        delivery = await self.send(topic, key, value, partition, timestamp, headers)
        result: RecordMetadata = await delivery
        return result

    async def commit(self, offsets: Mapping[TP, int],
                     start_new_transaction: bool = True) -> bool:
        if self.failure is not None:
            return False
        committed = False
        for tp, offset in offsets.items():
            txn = self.transactions.get(TP(tp.topic, tp.partition))
            if txn is None:
                continue
            try:
                if await txn.commit(offset):
                    committed = True
                    metrics.TRANSACTIONS.labels(self.role, "committed").inc()
                    self.on_committed(txn.tp, offset)
            except BaseException as exc:
                await self._fail(exc)
                return False
        return committed

    def on_ack(self) -> None:
        unacked = self.consumer.unacked
        ready = False
        for txn in self.transactions.values():
            txn.changed.set()
            if txn.cut is not None and not txn.lock.locked() and not txn.waiting_for(unacked):
                ready = True
        if ready and not self.should_stop and (self._kick is None or self._kick.done()):
            # A deferred commit can go now: ask faust for its next committable offsets
            # instead of holding the partition back until the commit interval elapses.
            self._kick = asyncio.ensure_future(self.consumer.commit())

    async def fail(self, exc: BaseException) -> None:
        """Abort every open transaction and crash the app: nothing is committed any more
        in this process (an agent whose work cannot be trusted calls this)."""
        await self._fail(exc)

    async def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
            log.error("transaction failed: aborting and stopping", exc_info=exc,
                      extra=fields(role=self.role))
        for txn in self.transactions.values():
            await txn.abort()
        await self.app.crash(exc)

    async def flush(self) -> None:
        await self.producer.flush()

    async def on_stop(self) -> None:
        for tp in list(self.transactions):
            txn = self.transactions.pop(tp)
            await txn.close()


class Producer(faust_aiokafka.Producer):
    """faust's aiokafka producer; with exactly-once on, every send goes through the
    transaction manager, buffered ones (``send_soon``) included."""

    def transactional_producer(self, transactional_id: str) -> Any:
        return self._new_producer(transactional_id=transactional_id)

    def _transactions(self) -> TransactionManager | None:
        if not self.app.in_transaction:
            return None
        manager = self.app.consumer.transactions
        return manager if isinstance(manager, TransactionManager) else None

    def send_soon(self, fut: FutureMessage) -> None:
        manager = self._transactions()
        if manager is None:
            super().send_soon(fut)
        else:
            manager.send_soon(fut)

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp: float | None,
                   headers: HeadersArg | None, *,
                   transactional_id: str | None = None) -> Awaitable[RecordMetadata]:
        manager = self._transactions()
        if manager is None:
            return await super().send(topic, key, value, partition, timestamp, headers,
                                      transactional_id=transactional_id)
        return await manager.send(topic, key, value, partition, timestamp, headers)


class Consumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer, telling the transaction manager about every ack."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held_sources: set[TP] = set()  # resumed, waiting for the seek that follows
        self._sought_sources: set[TP] = set()  # sought, waiting for the flow to resume

    async def on_start(self) -> None:
        if not self.app.in_transaction:
            raise ConfigError("processing_guarantee", "must be 'exactly_once' with the "
                              "cronorch transport")
        await super().on_start()

    async def seek_to_committed(self) -> Mapping[TP, int]:
        # faust drops the records that reach it while its flow is stopped (a rebalance
        # under way), with the client's position already past them, and seeks back to
        # the committed offsets to read them again. aiokafka leaves a partition that has
        # no committed offset where it is, so there the dropped records were never read
        # again and the next commit passed them: a rebalance before a partition's first
        # commit meets that (the two-worker rebalance test's early ones lost hundreds of
        # fires that way). They go back to where a new owner would start. Only for
        # "earliest": with "latest" the start is the end at assignment, long gone by now.
        # Not table changelogs: nobody commits those, and faust's recovery positions them.
        committed = await super().seek_to_committed()
        fresh = [tp for tp, offset in committed.items()
                 if (offset is None or offset <= 0) and not self._is_changelog_tp(tp)]
        if fresh and self.app.conf.consumer_auto_offset_reset == "earliest":
            thread = self._thread
            await thread.call_thread(thread._ensure_consumer().seek_to_beginning, *fresh)
            log.info("partitions without a committed offset sought to the beginning",
                     extra=fields(role=ROLE, partitions=sorted(
                         f"{tp.topic}:{tp.partition}" for tp in fresh)))
        return committed

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        # faust's recovery ends by resuming the source partitions, seeking them to their
        # committed offsets, then resuming its flow control, which empties the streams'
        # buffers, and the consumer's flow; that flow has been on since recovery began.
        # Records fetched between the resume and the seek reached the streams: the agent
        # processed some, the rest were emptied out of the buffers after the seek had set
        # faust's read offsets back, while the fetch under way went on past them. faust
        # took the jump in offsets for a gap in the log and committed past records nobody
        # had processed, or, with a commit deferred across the jump, waited for ever (how
        # the SIGKILL test stalled after a restart). Here a source partition resumed while
        # the flow is on is fetched only once the seek that follows is done and the flow
        # resumed: by then the buffers have been emptied and the position is the seek's.
        tps = set(tps)
        held = {tp for tp in tps if self.flow_active and not self._is_changelog_tp(tp)
                and not self.app.assignor.is_standby(tp)}
        self._held_sources |= held
        super().resume_partitions(tps - held)

    def resume_flow(self) -> None:
        super().resume_flow()
        if self._sought_sources:
            sought, self._sought_sources = self._sought_sources, set()
            super().resume_partitions(sought)

    async def perform_seek(self) -> None:
        # Taken before the seek, and only by the recovery's (flow on): a seek faust's
        # fetcher makes meanwhile (flow stopped) must not release them.
        held: set[TP] = set()
        if self.flow_active:
            held, self._held_sources = self._held_sources, set()
        try:
            await self._seek_keeping_counted_offsets()
        finally:
            self._sought_sources |= held

    async def _seek_keeping_counted_offsets(self) -> None:
        # faust drops the acked offsets it offers for a commit, and counts them committed,
        # even when the transaction defers that commit; the commit goes through once a
        # later offer covers the deferred events. Seeking back during a revoke's drain
        # (records fetched while the flow was stopped) set faust's committed offsets back
        # to the broker's, below acked offsets it had already dropped: faust then offered
        # nothing for the partition any more ("a gap at the head of the acked"), the
        # deferred commit waited for ever and so did the drain (about 90 s, until the
        # member was expelled). A partition keeps the committed offset faust counted.
        counted = {tp: offset for tp, offset in self._committed_offset.items()
                   if offset is not None}
        await super().perform_seek()
        for tp, offset in counted.items():
            current = self._committed_offset.get(tp)
            if current is None or current < offset:
                self._committed_offset[tp] = offset

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self._held_sources -= revoked
        self._sought_sources -= revoked
        # faust forgets the acks of revoked partitions first, and only then stops the
        # streams, waits for the events in flight and commits: the work done since the
        # last commit can never commit, so its transaction would be aborted and the app
        # crashed; and an event held back behind a deferred commit waits for a commit
        # that never comes, so the revoke never ends. Here the streams are stopped and
        # drained, and their work committed, while faust still knows the acks.
        if (self.app.in_transaction and not self.app.should_stop and self.assignment()
                and isinstance(self.transactions, TransactionManager)
                and self.transactions.failure is None):
            manager = self.transactions
            log.info("draining before the revoke", extra=fields(
                role=manager.role, partitions=sorted(f"{tp.topic}:{tp.partition}"
                                                     for tp in revoked)))
            self.stop_flow()
            self.app.flow_control.suspend()
            self.app.flow_control.clear()
            await self.wait_empty()
            # wait_empty's last commit returns at once when another (the timer's, an
            # ack's kick) is running, which may have read the offsets before the last
            # acks: commit until the revoked partitions hold nothing uncommitted.
            for _ in range(5):
                txns = [manager.transactions.get(TP(tp.topic, tp.partition)) for tp in revoked]
                if not any(txn is not None and txn.uncommitted for txn in txns):
                    break
                await self.commit()
        await super().on_partitions_revoked(revoked)

    def ack(self, message: Message) -> bool:
        if self._skipped(message):
            # faust's streams ack the events they skip during a rebalance (stale
            # generation, flow stopped) "so that lag does not grow", which lets the
            # committed offset pass events nobody processed. Such an event is done with
            # here but never committable: the seek after the rebalance delivers it again.
            message.acked = True
            self.unacked.discard(message)
            log.info("skipped event left uncommitted", extra=fields(
                role=ROLE, topic=message.topic, partition=message.partition,
                offset=message.offset))
            acked = False
        else:
            acked = super().ack(message)
        if isinstance(self.transactions, TransactionManager):
            self.transactions.on_ack()
        return acked

    def _skipped(self, message: Message) -> bool:
        # The same test faust's Stream applies before skipping an event; a skipped event
        # is acked right after it, with nothing awaited in between.
        if message.acked or not self.app.topics.acks_enabled_for(message.topic):
            return False
        generation = getattr(message, "generation_id", None)
        return (not self.app.flow_control.is_active()
                or (generation is not None and generation != self.app.consumer_generation_id))


class Transport(faust_aiokafka.Transport):
    """``cronorch://``: faust's aiokafka transport with this module's consumer, producer
    and transaction manager."""

    Consumer = Consumer
    Producer = Producer
    TransactionManager = TransactionManager


__all__ = ["Consumer", "PartitionTransaction", "Producer", "TransactionManager", "Transport",
           "event_source", "transactional_id"]
