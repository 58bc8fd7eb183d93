"""The engine without a broker: a failed transaction resets the partition (abort, restore,
seek back to the committed offset) with exponential backoff, retrying while the broker
refuses, and the batch is then processed again from the committed offset. Restores run
outside the rebalance listener with the partition paused; a revoke cancels them; a restore
that fails for good ends ``run``. The partitions of one poll commit side by side: a failure
resets only its partition, a refusal for good ends the poll once the others have ended, a
cancellation aborts them all."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from streams.errors import NotAuthorized
from streams.kafka import client as kafka
from streams.kafka import engine
from streams.kafka.client import Output, Record, TopicPartition
from streams.settings import Settings
from tests.support import eventually


class Broker:
    """What the fakes share: how many more calls fail, and what got committed."""

    def __init__(self, failing_commits: int, failing_starts: int) -> None:
        self.failing_commits = failing_commits
        self.failing_starts = failing_starts
        self.committed: list[tuple[list[bytes | None], dict[TopicPartition, int]]] = []
        self.aborts = 0
        self.seeks: list[int] = []


class FakeBatch:
    def __init__(self) -> None:
        self.values: list[bytes | None] = []

    def append(self, *, timestamp: int | None, key: bytes | None,
               value: bytes | None) -> object:
        self.values.append(value)
        return object()

    def close(self) -> None:
        pass

    def record_count(self) -> int:
        return len(self.values)


class FakeProducer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.pending: list[bytes | None] = []
        self.offsets: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        if self.broker.failing_starts:
            self.broker.failing_starts -= 1
            raise KafkaConnectionError("broker down")

    async def stop(self) -> None:
        pass

    async def begin_transaction(self) -> None:
        self.pending, self.offsets = [], {}

    async def send(self, topic: str, key: bytes | None = None, value: bytes | None = None,
                   partition: int | None = None) -> asyncio.Future[None]:
        self.pending.append(value)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *,
                         partition: int) -> asyncio.Future[None]:
        self.pending.extend(batch.values)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int],
                                          group_id: str) -> None:
        self.offsets = offsets

    async def commit_transaction(self) -> None:
        if self.broker.failing_commits:
            self.broker.failing_commits -= 1
            raise KafkaConnectionError("connection lost")
        self.broker.committed.append((self.pending, self.offsets))

    async def abort_transaction(self) -> None:
        self.broker.aborts += 1


class FakeConsumer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.paused: set[TopicPartition] = set()

    async def committed(self, tp: TopicPartition) -> int:
        return 10

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.broker.seeks.append(offset)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    def highwater(self, tp: TopicPartition) -> int | None:
        return None  # the engine reports lag only when the client knows the end

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return None

    def subscribe(self, topics: list[str], listener: object) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Msg]]:
        await asyncio.sleep(0)
        return {}


class Echo:
    changelog_topic = None

    def __init__(self) -> None:
        self.assigned = 0

    def assign(self, partition: int, changelog: Iterable[Record]) -> None:
        self.assigned += 1

    def revoke(self, partition: int) -> None:
        pass

    def process(self, partition: int, records: list[Record]) -> list[Output]:
        return [Output("sink", None, r.value) for r in records]


@dataclass
class Msg:
    offset: int
    topic: str = "source"
    partition: int = 0
    key: bytes | None = None
    value: bytes | None = b"v"
    timestamp: int = 0


@pytest.mark.parametrize(("failing_commits", "failing_starts"), [(1, 0), (1, 3)])
def test_failed_transaction_resets_with_backoff_and_retries(
        monkeypatch: pytest.MonkeyPatch, failing_commits: int, failing_starts: int) -> None:
    broker = Broker(failing_commits, 0)
    sleeps: list[float] = []

    async def no_sleep(delay_s: float) -> None:
        sleeps.append(delay_s)

    monkeypatch.setattr(kafka, "producer", lambda settings, tid: FakeProducer(broker))
    monkeypatch.setattr(kafka, "consumer", lambda *a, **k: FakeConsumer(broker))
    monkeypatch.setattr(engine.asyncio, "sleep", no_sleep)
    handler = Echo()

    async def scenario() -> None:
        processor = engine.Processor(Settings(), "test", "source", handler)
        tp = TopicPartition("source", 0)
        processor.assigned([0])
        assert processor.consumer.paused == {tp}
        await processor.restores[0]
        assert processor.consumer.paused == set() and 0 in processor.producers
        broker.failing_starts = failing_starts  # the broker goes away after the first start
        await processor._process(tp, [Msg(10), Msg(11)])  # commit fails → reset
        assert broker.committed == []
        assert processor.consumer.paused == {tp} and 0 not in processor.producers
        await processor._process(tp, [Msg(10), Msg(11)])  # restoring: dropped, not processed
        assert broker.committed == []
        await processor.restores[0]
        await processor._process(tp, [Msg(10), Msg(11)])  # redelivered from offset 10
        assert broker.committed == [([b"v", b"v"], {tp: 12})]
        assert processor.failures[0] == 0

    asyncio.run(scenario())
    assert broker.aborts == 1 and broker.seeks == [10, 10]
    assert handler.assigned == 2  # restored once more after the reset
    assert len(sleeps) == 1 + failing_starts  # one backoff per attempt to reopen
    caps = [engine.RESET_BACKOFF.bound_s(n + 1) for n in range(len(sleeps))]
    assert all(0 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))


class Hanging(Echo):
    """A restore that does not finish until released (a broker that went away)."""

    def __init__(self) -> None:
        super().__init__()
        self.revoked: list[int] = []

    def revoke(self, partition: int) -> None:
        self.revoked.append(partition)


def test_listener_returns_at_once_and_a_revoke_cancels_the_restore(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """aiokafka sends no heartbeat while the listener runs, and a cancellation raised inside
    it ends the group coordinator: the listener must do no IO. The restore it starts is
    cancelled by a revoke, and its producer stopped."""
    broker = Broker(0, 0)
    stops: list[int] = []

    class SlowProducer(FakeProducer):
        async def start(self) -> None:
            await asyncio.sleep(3600)

        async def stop(self) -> None:
            stops.append(1)

    monkeypatch.setattr(kafka, "producer", lambda settings, tid: SlowProducer(broker))
    monkeypatch.setattr(kafka, "consumer", lambda *a, **k: FakeConsumer(broker))
    handler = Hanging()

    async def scenario() -> None:
        processor = engine.Processor(Settings(), "test", "source", handler)
        listener = engine._Listener(processor)
        tps = [TopicPartition("source", 0), TopicPartition("source", 1)]
        await asyncio.wait_for(listener.on_partitions_assigned(tps), 0.1)
        assert set(processor.restores) == {0, 1}
        assert processor.ready() == "restoring partitions [0, 1]"
        await asyncio.sleep(0.01)  # the restores are waiting for the broker
        await asyncio.wait_for(listener.on_partitions_revoked(tps[:1]), 1)
        assert set(processor.restores) == {1}
        assert 0 in handler.revoked and len(stops) == 1
        await processor.release([1])
        assert processor.restores == {} and processor.producers == {}

    asyncio.run(scenario())


def test_a_restore_that_fails_for_good_ends_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a broker hiccup (those are retried): the processor's ``run`` raises, so the
    process exits non-zero instead of owning a partition it never processes."""
    broker = Broker(0, 0)
    monkeypatch.setattr(kafka, "producer", lambda settings, tid: FakeProducer(broker))
    monkeypatch.setattr(kafka, "consumer", lambda *a, **k: FakeConsumer(broker))

    class Broken(Echo):
        def assign(self, partition: int, changelog: Iterable[Record]) -> None:
            raise ValueError("corrupt state")

    async def scenario() -> None:
        processor = engine.Processor(Settings(), "test", "source", Broken())
        assert processor.alive() is None
        assert processor.ready() == "no partitions assigned yet"
        run = asyncio.create_task(processor.run(asyncio.Event()))
        await asyncio.sleep(0)
        processor.assigned([0])
        with pytest.raises(ValueError, match="corrupt state"):
            await asyncio.wait_for(run, 5)
        assert processor.alive() is not None

    asyncio.run(scenario())


def test_cancelled_batch_aborts_its_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop that cannot wait for the batch in flight cancels it: the transaction is
    aborted then, not left open until the broker's transaction timeout."""
    broker = Broker(0, 0)

    class StuckProducer(FakeProducer):
        async def commit_transaction(self) -> None:
            await asyncio.sleep(3600)

    monkeypatch.setattr(kafka, "producer", lambda settings, tid: StuckProducer(broker))
    monkeypatch.setattr(kafka, "consumer", lambda *a, **k: FakeConsumer(broker))

    async def scenario() -> None:
        processor = engine.Processor(Settings(), "test", "source", Echo())
        processor.assigned([0])
        await processor.restores[0]
        batch = asyncio.create_task(processor._process(TopicPartition("source", 0), [Msg(10)]))
        await asyncio.sleep(0.01)
        batch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await batch

    asyncio.run(scenario())
    assert broker.aborts == 1 and broker.committed == []


def test_a_cancellation_escaping_the_client_is_retried_not_fatal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """aiokafka can let the CancelledError of one of its own tasks escape into ours: for a
    restore that is a failure to retry, not a revoke (which would leave p unprocessed)."""
    broker = Broker(0, 0)
    escapes = [1]

    class LeakyProducer(FakeProducer):
        async def start(self) -> None:
            if escapes:
                escapes.pop()
                raise asyncio.CancelledError

    async def no_sleep(delay_s: float) -> None:
        pass

    monkeypatch.setattr(kafka, "producer", lambda settings, tid: LeakyProducer(broker))
    monkeypatch.setattr(kafka, "consumer", lambda *a, **k: FakeConsumer(broker))
    monkeypatch.setattr(engine.asyncio, "sleep", no_sleep)

    async def scenario() -> None:
        processor = engine.Processor(Settings(), "test", "source", Echo())
        processor.assigned([0])
        await processor.restores[0]
        assert 0 in processor.producers and processor.crashed is None
        assert processor.failures[0] == 1

    asyncio.run(scenario())


class Gate:
    """Commits that wait until the test opens them, and who is waiting: so a test can see
    several partitions' transactions open at once."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.waiting: set[int] = set()
        self.everyone = asyncio.Event()


def _gated_producers(broker: Broker, gate: Gate, partitions: int,
                     fail: dict[int, Exception]) -> Any:
    made = iter(range(10**6))

    class GatedProducer(FakeProducer):
        def __init__(self, p: int) -> None:
            super().__init__(broker)
            self.p = p

        async def commit_transaction(self) -> None:
            gate.waiting.add(self.p)
            if len(gate.waiting) == partitions:
                gate.everyone.set()
            await gate.open.wait()
            if self.p in fail:
                raise fail.pop(self.p)
            await super().commit_transaction()

    # Restores start producers in partition order, one each: the n-th made serves p = n.
    return lambda settings, tid: GatedProducer(next(made) % partitions)


def _poll(partitions: int) -> dict[TopicPartition, list[Msg]]:
    return {TopicPartition("source", p): [Msg(10, partition=p), Msg(11, partition=p)]
            for p in range(partitions)}


def test_a_polls_partitions_commit_side_by_side_and_fail_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every partition of a poll has its transaction open before any commits; one that
    fails resets that partition only, the others commit."""
    broker, gate = Broker(0, 0), Gate()
    fail: dict[int, Exception] = {1: KafkaConnectionError("connection lost")}
    monkeypatch.setattr(kafka, "producer", _gated_producers(broker, gate, 3, fail))
    monkeypatch.setattr(kafka, "consumer", lambda *a, **k: FakeConsumer(broker))

    async def scenario() -> engine.Processor:
        processor = engine.Processor(Settings(), "test", "source", Echo())
        for p in range(3):  # one at a time, so that producer n serves partition n
            processor.assigned([p])
            await processor.restores[p]
        poll = asyncio.create_task(processor._process_all(_poll(3), asyncio.Event()))
        await asyncio.wait_for(gate.everyone.wait(), 5)  # all three in flight at once
        gate.open.set()
        await poll
        return processor

    processor = asyncio.run(scenario())
    committed = sorted(tp.partition for _, offsets in broker.committed for tp in offsets)
    assert committed == [0, 2] and broker.aborts == 1
    assert 1 not in processor.producers and processor.failures[1] == 1
    assert processor.next_offset[0] == processor.next_offset[2] == 12


def test_a_refusal_for_good_is_raised_after_the_others_commit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    broker, gate = Broker(0, 0), Gate()
    fail: dict[int, Exception] = {0: TopicAuthorizationFailedError()}
    monkeypatch.setattr(kafka, "producer", _gated_producers(broker, gate, 3, fail))
    monkeypatch.setattr(kafka, "consumer", lambda *a, **k: FakeConsumer(broker))

    async def scenario() -> None:
        processor = engine.Processor(Settings(), "test", "source", Echo())
        for p in range(3):
            processor.assigned([p])
            await processor.restores[p]
        gate.open.set()
        with pytest.raises(NotAuthorized):
            await processor._process_all(_poll(3), asyncio.Event())

    asyncio.run(scenario())
    assert sorted(tp.partition for _, offsets in broker.committed for tp in offsets) == [1, 2]


def test_a_cancelled_poll_aborts_every_transaction_in_flight(
        monkeypatch: pytest.MonkeyPatch) -> None:
    broker, gate = Broker(0, 0), Gate()
    monkeypatch.setattr(kafka, "producer", _gated_producers(broker, gate, 3, {}))
    monkeypatch.setattr(kafka, "consumer", lambda *a, **k: FakeConsumer(broker))

    async def scenario() -> None:
        processor = engine.Processor(Settings(), "test", "source", Echo())
        for p in range(3):
            processor.assigned([p])
            await processor.restores[p]
        poll = asyncio.create_task(processor._process_all(_poll(3), asyncio.Event()))
        await asyncio.wait_for(gate.everyone.wait(), 5)
        poll.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poll

    asyncio.run(scenario())
    assert broker.aborts == 3 and broker.committed == []


def test_a_long_planning_lets_what_fell_due_run_before_the_next(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A task woken by a timer during one partition's long planning (the group's heartbeat)
    runs before the next partition is planned, not after it (or after two)."""
    broker = Broker(0, 0)
    monkeypatch.setattr(kafka, "producer", lambda settings, tid: FakeProducer(broker))
    monkeypatch.setattr(kafka, "consumer", lambda *a, **k: FakeConsumer(broker))
    order: list[str] = []

    class Slow(Echo):
        def process(self, partition: int, records: list[Record]) -> list[Output]:
            order.append(f"plan {partition}")
            until = time.monotonic() + 2 * engine.LONG_PLANNING_S
            while time.monotonic() < until:
                pass  # CPU-bound, as a burst's planning is
            return super().process(partition, records)

    async def heartbeat() -> None:
        await asyncio.sleep(engine.LONG_PLANNING_S / 2)  # falls due during the first plan
        order.append("heartbeat")

    async def scenario() -> None:
        processor = engine.Processor(Settings(), "test", "source", Slow())
        for p in range(3):
            processor.assigned([p])
            await processor.restores[p]
        beat = asyncio.create_task(heartbeat())
        await asyncio.sleep(0)  # the heartbeat's timer is set
        await processor._process_all(_poll(3), asyncio.Event())
        await beat

    asyncio.run(scenario())
    assert order == ["plan 0", "heartbeat", "plan 1", "plan 2"]


class Collecting(Echo):
    """Restores from a changelog, keeping what it read (from the restore thread)."""

    changelog_topic = "changelog"

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.read: list[bytes | None] = []
        self.revoked: list[int] = []
        self.fail_after = fail_after
        self.ended: list[BaseException | None] = []

    def assign(self, partition: int, changelog: Iterable[Record]) -> None:
        try:
            for record in changelog:
                if self.fail_after is not None and len(self.read) == self.fail_after:
                    raise ValueError("corrupt state")
                self.read.append(record.value)
        except BaseException as exc:
            self.ended.append(exc)
            raise
        self.ended.append(None)
        self.assigned += 1

    def revoke(self, partition: int) -> None:
        self.revoked.append(partition)


def _batches(count: int, *, then_hang: bool = False, fetched: list[int] | None = None) -> Any:
    async def read_batches(settings: Settings, topic: str, partition: int, *,
                           stall_timeout_s: float | None = None) -> Any:
        for b in range(count):
            if fetched is not None:
                fetched.append(b)
            yield [Record(topic, partition, b, b"k", b"%d" % b, 0)]
        if then_hang:
            await asyncio.sleep(3600)  # the broker went quiet
    return read_batches


def test_a_restore_streams_the_changelog_into_the_rebuild_a_few_batches_ahead(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fetched batch goes to the rebuild thread as it comes, in order, and the read
    runs at most ``FEED_DEPTH`` batches ahead of it: a partition is never held whole."""
    broker = Broker(0, 0)
    fetched: list[int] = []
    handler = Collecting()
    ahead: list[int] = []
    original = handler.assign

    def assign(partition: int, changelog: Iterable[Record]) -> None:
        def watched() -> Iterable[Record]:
            for record in changelog:
                ahead.append(len(fetched) - len(handler.read))
                time.sleep(0.001)  # a rebuild slower than the read
                yield record
        original(partition, watched())

    monkeypatch.setattr(handler, "assign", assign)
    monkeypatch.setattr(kafka, "producer", lambda settings, tid: FakeProducer(broker))
    monkeypatch.setattr(kafka, "consumer", lambda *a, **k: FakeConsumer(broker))
    monkeypatch.setattr(kafka, "read_batches", _batches(50, fetched=fetched))

    async def scenario() -> None:
        processor = engine.Processor(Settings(), "test", "source", handler)
        processor.assigned([0])
        await asyncio.wait_for(processor.restores[0], 10)
        assert 0 in processor.producers
        await eventually(lambda: not engine.threads_running(), 5, "the thread to end")

    asyncio.run(scenario())
    assert handler.read == [b"%d" % b for b in range(50)]
    # The batch in the thread's hands, the queued ones, and one fetched waiting for room.
    assert max(ahead) <= engine.FEED_DEPTH + 2


def test_a_revoke_mid_read_ends_the_rebuild_thread_and_drops_the_state(
        monkeypatch: pytest.MonkeyPatch) -> None:
    broker = Broker(0, 0)
    handler = Collecting()
    monkeypatch.setattr(kafka, "producer", lambda settings, tid: FakeProducer(broker))
    monkeypatch.setattr(kafka, "consumer", lambda *a, **k: FakeConsumer(broker))
    monkeypatch.setattr(kafka, "read_batches", _batches(3, then_hang=True))

    async def scenario() -> None:
        processor = engine.Processor(Settings(), "test", "source", handler)
        processor.assigned([0])
        await eventually(lambda: len(handler.read) == 3, 5, "the batches read so far")
        await asyncio.wait_for(processor.release([0]), 5)
        assert processor.restores == {} and processor.producers == {}
        await eventually(lambda: not engine.threads_running(), 5, "the thread to end")

    asyncio.run(scenario())
    assert len(handler.ended) == 1 and isinstance(handler.ended[0], engine.RestoreAbandoned)
    assert handler.assigned == 0 and 0 in handler.revoked


def test_a_rebuild_failing_mid_stream_ends_run_without_a_stuck_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The read waiting for room must not wait for a thread that has died."""
    broker = Broker(0, 0)
    handler = Collecting(fail_after=2)
    monkeypatch.setattr(kafka, "producer", lambda settings, tid: FakeProducer(broker))
    monkeypatch.setattr(kafka, "consumer", lambda *a, **k: FakeConsumer(broker))
    monkeypatch.setattr(kafka, "read_batches", _batches(100))

    async def scenario() -> None:
        processor = engine.Processor(Settings(), "test", "source", handler)
        run = asyncio.create_task(processor.run(asyncio.Event()))
        await asyncio.sleep(0)
        processor.assigned([0])
        with pytest.raises(ValueError, match="corrupt state"):
            await asyncio.wait_for(run, 5)

    asyncio.run(scenario())
    assert handler.read == [b"0", b"1"]


def test_overlapping_rebuilds_keep_the_collector_off_until_the_last_ends() -> None:
    """Rebuilds of two roles may overlap in time: the collector stays off until both have
    ended, then is as it was."""
    assert gc.isenabled()
    release = [threading.Event(), threading.Event()]
    during: list[bool] = []

    def assign(partition: int, changelog: Iterable[Record]) -> None:
        release[partition].wait(5)
        during.append(gc.isenabled())

    threads = [threading.Thread(target=engine._rebuild, args=(assign, p, None))
               for p in (0, 1)]
    for thread in threads:
        thread.start()
    release[0].set()
    threads[0].join(5)
    assert not gc.isenabled()  # the other rebuild still runs
    release[1].set()
    threads[1].join(5)
    assert during == [False, False] and gc.isenabled()
