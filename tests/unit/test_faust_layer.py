"""The faust transactional layer (streams/faust) without a broker: how it plugs into faust,
the faust internals it relies on (so that a faust upgrade that moves them fails here, not
in production), and the transaction bookkeeping of one partition against a recording
producer. tests/acceptance/test_exactly_once.py proves it against Kafka under SIGKILL."""

from __future__ import annotations

import asyncio
import inspect
from collections import defaultdict
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.app.base import App
from faust.channels import Channel as FaustChannel
from faust.streams import Stream
from faust.tables.base import Collection
from faust.tables.recovery import Recovery
from faust.topics import Topic
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.utils.queues import FlowControlEvent

from streams.faust import transport
from streams.faust.transport import PartitionTransaction, event_source

TP0 = TP("src", 0)


def test_broker_scheme_resolves_to_the_layer_through_the_entry_point() -> None:
    assert faust.transport.by_url("cronorch://localhost:9092") is transport.Transport
    assert transport.Transport.Consumer is transport.Consumer
    assert transport.Transport.Producer is transport.Producer
    assert transport.Transport.TransactionManager is transport.TransactionManager


def test_faust_internals_the_layer_relies_on() -> None:
    assert faust.__version__ == "0.15.3", "re-read docs/exactly-once.md against the new faust"
    # The consumer builds its transaction manager from the transport's class attribute...
    assert "create_transaction_manager" in inspect.getsource(faust_consumer.Consumer.__init__)
    # ...and commits through it when exactly-once is on.
    commit = inspect.getsource(faust_consumer.Consumer._commit_offsets)
    assert "self.transactions.commit(" in commit
    # Awaited sends reach the transaction manager; buffered ones (tables) app.producer.
    assert "return self.consumer.transactions" in inspect.getsource(App.maybe_start_producer)
    assert "self.app.producer.send_soon(fut)" in inspect.getsource(Topic.send_soon)
    assert "changelog_topic.send_soon" in inspect.getsource(Collection.send_changelog)
    # Producers are started (fencing) before tables recover on assignment.
    assigned = inspect.getsource(App._on_partitions_assigned)
    assert assigned.index("transactions.on_rebalance") < assigned.index("tables.on_rebalance")
    # Per-partition producers are built the way faust builds its own.
    assert "transactional_id" in inspect.signature(faust_aiokafka.Producer._new_producer).parameters
    # faust forgets a revoked partition's acks before the app's revoke drains the streams,
    # which is why Consumer.on_partitions_revoked drains and commits first.
    revoked = inspect.getsource(faust_consumer.Consumer.on_partitions_revoked)
    assert revoked.index("self._acked.pop(tp") < revoked.index("self._on_partitions_revoked")
    # The stream's skip test, which Consumer._skipped mirrors.
    aiter = inspect.getsource(Stream._py_aiter)
    assert "message.generation_id != self.app.consumer_generation_id" in aiter
    assert "not self.app.flow_control.is_active()" in aiter
    assert "_current_event_contextvar.set(" in aiter
    # Records that arrive while the flow is stopped are dropped, and faust seeks back to
    # the committed offsets, where aiokafka skips a partition with none: hence
    # Consumer.seek_to_committed.
    getmany = inspect.getsource(faust_consumer.Consumer.getmany)
    assert getmany.index("if self.flow_active:") < getmany.index("await self.perform_seek()")
    assert "await self.seek_to_committed()" in inspect.getsource(
        faust_consumer.Consumer.perform_seek)
    assert "if offset and offset > 0:" in inspect.getsource(AIOKafkaConsumer.seek_to_committed)
    # faust counts an offered offset committed whatever the transaction did with it, and
    # offers nothing while the acked offsets start past it: hence Consumer.perform_seek.
    commit_offsets = inspect.getsource(faust_consumer.Consumer._commit_offsets)
    assert commit_offsets.index("if did_commit:") < commit_offsets.index(
        "self._committed_offset.update(committable_offsets)")
    assert "if min(acked) - committed_offset > 1:" in inspect.getsource(
        faust_consumer.Consumer._new_offset)
    # Recovery resumes the source partitions, seeks, then resumes the flow control, which
    # empties the streams' buffers, and the flow: hence Consumer.resume_partitions.
    for end_of_recovery in (Recovery._resume_streams, Recovery.on_recovery_completed):
        code = inspect.getsource(end_of_recovery)
        order = [code.index(step) for step in (
            "consumer.resume_partitions(", "consumer.perform_seek()",
            "flow_control.resume()", "consumer.resume_flow()")]
        assert order == sorted(order), end_of_recovery.__qualname__
    assert "self.clear()" in inspect.getsource(FlowControlEvent.resume)
    assert "clear_on_resume=True" in inspect.getsource(FaustChannel.queue.fget)
    # The drain loop takes a jump in offsets for a gap in the log, acked as a whole.
    assert "await self._add_gap(tp, r_offset + 1, offset)" in inspect.getsource(
        faust_consumer.Consumer._drain_messages)


class RecordingProducer:
    """Records what a transactional aiokafka producer is asked to do, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_delivery = False

    async def begin_transaction(self) -> None:
        self.calls.append(("begin",))

    async def send(self, topic: str, value: bytes | None, **kwargs: Any) -> asyncio.Future[Any]:
        self.calls.append(("send", topic, value))
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail_delivery:
            delivery.set_exception(RuntimeError("broker said no"))
        else:
            delivery.set_result(None)
        return delivery

    async def send_offsets_to_transaction(self, offsets: dict[Any, int], group: str) -> None:
        self.calls.append(("offsets", *offsets.values()))

    async def commit_transaction(self) -> None:
        self.calls.append(("commit",))

    async def abort_transaction(self) -> None:
        self.calls.append(("abort",))

    async def stop(self) -> None:
        self.calls.append(("stop",))


class Channel:
    """Publishes a buffered send the way a faust topic does: through the transaction of
    the event the layer bound it to."""

    def __init__(self, txn: PartitionTransaction) -> None:
        self.txn = txn

    async def publish_message(self, fut: Any, wait: bool = False) -> Any:
        source = event_source()
        assert source is not None and source[0] == TP0
        return await self.txn.send(source[1], "changelog", None, fut.value, None, None, None)


class Buffered:
    def __init__(self, channel: Channel, value: bytes) -> None:
        self.message = self
        self.channel = channel
        self.value = value

    def done(self) -> bool:
        return False


def _sends(producer: RecordingProducer) -> list[Any]:
    return [c for c in producer.calls if c[0] != "begin"]


def test_commit_waits_for_an_event_that_has_sent_to_be_covered() -> None:
    async def scenario() -> None:
        producer = RecordingProducer()
        txn = PartitionTransaction(TP0, producer, "group")
        await txn.send(10, "sink", None, b"10", None, None, None)  # event 10 done
        await txn.send(11, "sink", None, b"11a", None, None, None)  # event 11 in progress
        # faust: everything below 11 is acked; event 11 has output in the transaction.
        assert not await txn.commit(11)
        assert _sends(producer) == [("send", "sink", b"10"), ("send", "sink", b"11a")]
        # Event 11 may go on; event 12 waits for the next transaction.
        await txn.send(11, "sink", None, b"11b", None, None, None)
        blocked = asyncio.ensure_future(txn.send(12, "sink", None, b"12", None, None, None))
        await asyncio.sleep(0)
        assert not blocked.done()
        assert await txn.commit(12)  # event 11 acked: faust's offset now covers it
        await blocked
        assert _sends(producer) == [
            ("send", "sink", b"10"), ("send", "sink", b"11a"), ("send", "sink", b"11b"),
            ("offsets", 12), ("commit",), ("send", "sink", b"12")]
        assert txn.dirty == {12}

    asyncio.run(scenario())


def test_buffered_sends_held_during_a_commit_join_the_transaction_of_their_offset() -> None:
    async def scenario() -> None:
        producer = RecordingProducer()
        txn = PartitionTransaction(TP0, producer, "group")
        channel = Channel(txn)
        await txn.send(5, "sink", None, b"5", None, None, None)
        assert not await txn.commit(5)  # event 5 still in progress: gate closed above it
        txn.send_soon(Buffered(channel, b"6"), 6)  # type: ignore[arg-type]
        assert txn.held  # event 6 made only a buffered send, so nothing held it back...
        assert await txn.commit(7)  # ...and faust acked it: its write is in this commit
        assert _sends(producer) == [("send", "sink", b"5"), ("send", "changelog", b"6"),
                                    ("offsets", 7), ("commit",)]

    asyncio.run(scenario())


def test_a_failed_delivery_aborts_instead_of_committing() -> None:
    async def scenario() -> None:
        producer = RecordingProducer()
        txn = PartitionTransaction(TP0, producer, "group")
        producer.fail_delivery = True
        await txn.send(1, "sink", None, b"1", None, None, None)
        with pytest.raises(RuntimeError, match="broker said no"):
            await txn.commit(2)
        assert _sends(producer) == [("send", "sink", b"1"), ("abort",)]
        with pytest.raises(faust.exceptions.ProducerSendError):
            await txn.send(2, "sink", None, b"2", None, None, None)

    asyncio.run(scenario())


def test_nothing_to_commit_commits_nothing() -> None:
    async def scenario() -> None:
        producer = RecordingProducer()
        txn = PartitionTransaction(TP0, producer, "group")
        assert await txn.commit(3)  # offsets alone still move forward
        assert not await txn.commit(3)
        assert _sends(producer) == [("offsets", 3), ("commit",)]

    asyncio.run(scenario())


class SeekingClient:
    """The aiokafka consumer behind faust's consumer thread, as far as seeking goes."""

    def __init__(self, committed: dict[TopicPartition, int | None]) -> None:
        self.committed = committed
        self.calls: list[tuple[Any, ...]] = []

    async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
        self.calls.append(("committed",))
        return self.committed

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.calls.append(("beginning", *tps))


class ConsumerThread:
    def __init__(self, client: SeekingClient) -> None:
        self.client = client

    def _ensure_consumer(self) -> SeekingClient:
        return self.client

    async def seek_to_committed(self) -> Any:
        return await self.client.seek_to_committed()

    async def call_thread(self, method: Any, *args: Any) -> Any:
        return await method(*args)


def _seeking_consumer(client: SeekingClient, reset: str) -> transport.Consumer:
    consumer = transport.Consumer.__new__(transport.Consumer)
    consumer._thread = ConsumerThread(client)  # type: ignore[assignment]
    consumer.app = type("App", (), {  # type: ignore[assignment]
        "conf": type("Conf", (), {"consumer_auto_offset_reset": reset}),
        "tables": type("Tables", (), {"changelog_topics": {"app-table-changelog"}}),
        "assignor": type("Assignor", (), {"is_standby": staticmethod(lambda tp: False)})})()
    consumer._held_sources, consumer._sought_sources = set(), set()
    consumer._active_partitions, consumer._paused_partitions = set(), set()
    consumer._read_offset = defaultdict(lambda: None)
    consumer._committed_offset = defaultdict(lambda: None)
    consumer.flow_active = False
    consumer.can_resume_flow, consumer.suspend_flow = asyncio.Event(), asyncio.Event()
    return consumer


def test_sources_resumed_at_the_end_of_recovery_are_fetched_only_after_its_seek() -> None:
    """faust's recovery resumes the source partitions, seeks them to their committed
    offsets, then resumes its flow control (emptying the streams' buffers) and the flow,
    which has been on since recovery began. What was fetched before the seek reached the
    streams and was then emptied out, past faust's read offsets: records that nobody
    processed, which faust committed past or waited for for ever. The sources join the
    fetch only when both the seek and the flow's resume are done."""
    src, changelog = TP("src", 0), TP("app-table-changelog", 0)
    consumer = _seeking_consumer(SeekingClient({src: 52, changelog: None}), "earliest")
    consumer.resume_flow()  # recovery reads the changelogs with the flow on
    consumer.resume_partitions({changelog})
    assert consumer._active_partitions == {changelog}
    consumer.resume_partitions({src})  # _resume_streams
    assert consumer._active_partitions == {changelog}, "fetched before the seek"
    asyncio.run(consumer.perform_seek())
    assert consumer._active_partitions == {changelog}, "fetched before the buffers emptied"
    consumer.resume_flow()  # right after flow_control.resume()
    assert consumer._active_partitions == {changelog, src}
    assert consumer._read_offset[src] == 52


def test_a_seek_made_while_the_flow_is_stopped_does_not_release_held_sources() -> None:
    """faust's fetcher seeks back while the flow is stopped; that seek ran before the
    recovery's is not the one the held sources wait for, and a revoke forgets them."""
    src = TP("src", 0)
    consumer = _seeking_consumer(SeekingClient({src: 7}), "earliest")
    consumer.resume_flow()
    consumer.resume_partitions({src})
    consumer.flow_active = False
    asyncio.run(consumer.perform_seek())
    consumer.resume_flow()
    assert consumer._active_partitions == set()
    assert consumer._held_sources == {src}
    consumer._held_sources -= {src}  # what on_partitions_revoked does first
    consumer.resume_partitions({src})  # the next recovery, flow on
    asyncio.run(consumer.perform_seek())
    consumer.resume_flow()
    assert consumer._active_partitions == {src}


@pytest.mark.parametrize("reset", ["earliest", "latest"])
def test_the_seek_to_committed_takes_a_partition_without_a_commit_to_its_beginning(
        reset: str) -> None:
    """faust seeks back to the committed offsets after dropping fetched records; a
    partition nobody has committed must go back too, or the dropped records are lost."""
    fresh, zero, committed = (TopicPartition("src", p) for p in range(3))
    changelog = TopicPartition("app-table-changelog", 0)  # faust's recovery positions it
    offsets = {fresh: None, zero: 0, committed: 17, changelog: None}
    client = SeekingClient(offsets)
    result = asyncio.run(_seeking_consumer(client, reset).seek_to_committed())
    assert result == offsets  # what faust's read offsets take
    expected = [("committed",), ("beginning", fresh, zero)] if reset == "earliest" else [
        ("committed",)]
    assert client.calls == expected


def test_seeking_back_keeps_the_offsets_faust_counted_committed_while_a_commit_is_deferred(
        ) -> None:
    """faust drops the acked offsets it offers for a commit even when the transaction
    defers it. A seek back during a revoke's drain used to set faust's committed offset to
    the broker's, below offsets it had dropped: it then offered nothing for the partition
    again, and the drain waited for the deferred commit for ever."""
    tp = TopicPartition("src", 0)
    client = SeekingClient({tp: 405})  # the broker's: the deferred commits are not in it
    consumer = _seeking_consumer(client, "earliest")
    consumer._read_offset = defaultdict(lambda: None)
    consumer._committed_offset = defaultdict(lambda: None, {tp: 450})  # 405-449 dropped
    consumer._acked = defaultdict(list, {tp: list(range(450, 461))})
    consumer._acked_index = defaultdict(set, {tp: set(range(450, 461))})
    consumer._gap = defaultdict(faust_consumer.IntervalTree)  # faust's own gap bookkeeping
    asyncio.run(consumer.perform_seek())
    assert consumer._read_offset[tp] == 405  # fetching goes back to the broker's offset...
    assert consumer._new_offset(tp) == 461  # ...and faust can still offer the next commit
