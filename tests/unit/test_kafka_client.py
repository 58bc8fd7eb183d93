"""``send_all`` without a broker: records grouped per partition and packed into batches in
their order, keyed records placed as aiokafka's own partitioner places them, and every
delivery future retrieved whatever fails."""

from __future__ import annotations

import asyncio
import gc
import random
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, ProducerFenced
from aiokafka.partitioner import DefaultPartitioner

from streams.kafka import client as kafka
from streams.kafka.client import Output


def test_default_partition_is_aiokafkas_on_random_keys() -> None:
    rng = random.Random(9)
    partitioner = DefaultPartitioner()
    for count in (1, 2, 6, 7, 64):
        partitions = list(range(count))
        for _ in range(2_000):
            key = rng.randbytes(rng.randrange(0, 80))
            assert kafka.default_partition(key, partitions) == partitioner(
                key, partitions, partitions)


class Batch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes | None, bytes | None]] = []
        self.closed = False

    def append(self, *, timestamp: int | None, key: bytes | None,
               value: bytes | None) -> object | None:
        assert not self.closed
        if len(self.records) == self.capacity:
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True

    def record_count(self) -> int:
        return len(self.records)


class Producer:
    """Batches of ``capacity`` records; ``fail`` decides each submitted batch's outcome:
    None delivered, an exception failed, or raised by ``send_batch`` itself (``refuse``)."""

    def __init__(self, capacity: int = 3, fail: Any = None, refuse: Any = None,
                 block_at: int | None = None) -> None:
        self.capacity = capacity
        self.fail = fail or (lambda n: None)
        self.refuse = refuse or (lambda n: None)
        self.block_at = block_at
        self.blocked = asyncio.Event()
        self.batches: list[tuple[str, int, list[tuple[bytes | None, bytes | None]]]] = []
        # Counts, not the futures: holding them would keep an unretrieved one from being
        # reported when it is collected.
        self.created = 0
        self.settled = 0

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def create_batch(self) -> Batch:
        return Batch(self.capacity)

    async def send_batch(self, batch: Batch, topic: str, *,
                         partition: int) -> asyncio.Future[None]:
        assert batch.closed
        n = len(self.batches)
        if n == self.block_at:
            self.blocked.set()
            await asyncio.Event().wait()
        refusal = self.refuse(n)
        if refusal is not None:
            raise refusal
        self.batches.append((topic, partition, batch.records))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        error = self.fail(n)
        loop = asyncio.get_running_loop()
        if error is None:
            loop.call_soon(future.set_result, None)
        else:
            loop.call_soon(future.set_exception, error)
        self.created += 1
        future.add_done_callback(self._settled)
        return future

    def _settled(self, future: asyncio.Future[None]) -> None:
        self.settled += 1


def _outputs(count: int) -> list[Output]:
    return [Output("t", f"user-{i % 5}".encode(), str(i).encode()) for i in range(count)]


def test_records_keep_their_order_per_partition_in_batches() -> None:
    producer = Producer(capacity=3)
    outputs = [*_outputs(20), Output("u", b"k", b"pinned", 2)]
    asyncio.run(kafka.send_all(producer, outputs))  # type: ignore[arg-type]
    assert all(len(records) <= 3 for _, _, records in producer.batches)
    placed: dict[tuple[str, int], list[bytes | None]] = {}
    for topic, partition, records in producer.batches:
        placed.setdefault((topic, partition), []).extend(v for _, v in records)
    expected: dict[tuple[str, int], list[bytes | None]] = {}
    for out in outputs:
        p = out.partition if out.partition is not None else kafka.default_partition(
            out.key, [0, 1, 2])
        expected.setdefault((out.topic, p), []).append(out.value)
    assert placed == expected
    assert ("u", 2) in placed


def _no_unretrieved(run: Any) -> list[dict[str, Any]]:
    """Run ``run`` in a fresh loop; return what the loop's exception handler was told."""
    reported: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reported.append(ctx))
        await run()
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    gc.collect()
    return reported


def test_failed_batches_raise_the_first_error_once_and_leave_nothing_unretrieved() -> None:
    producer = Producer(capacity=2, fail=lambda n: ProducerFenced() if n >= 1 else None)

    async def run() -> None:
        with pytest.raises(ProducerFenced):
            await kafka.send_all(producer, _outputs(40))  # type: ignore[arg-type]
        assert producer.settled == producer.created

    assert _no_unretrieved(run) == []
    assert len(producer.batches) > 5


def test_a_refused_submission_waits_for_the_batches_already_sent() -> None:
    producer = Producer(capacity=2, fail=lambda n: ProducerFenced(),
                        refuse=lambda n: KafkaTimeoutError() if n == 4 else None)

    async def run() -> None:
        with pytest.raises(KafkaTimeoutError):
            await kafka.send_all(producer, _outputs(40))  # type: ignore[arg-type]
        assert producer.created and producer.settled == producer.created

    assert _no_unretrieved(run) == []


def test_a_cancelled_send_leaves_nothing_unretrieved() -> None:
    producer = Producer(capacity=2, fail=lambda n: ProducerFenced(), block_at=4)

    async def run() -> None:
        task = asyncio.create_task(kafka.send_all(producer, _outputs(40)))  # type: ignore[arg-type]
        await producer.blocked.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.01)  # the batches fail after the caller is gone

    assert _no_unretrieved(run) == []


def test_a_record_over_the_request_size_is_refused_before_anything_is_sent() -> None:
    producer = Producer()
    outputs = [*_outputs(3), Output("t", b"k", b"x" * (kafka.MAX_REQUEST_BYTES + 1))]
    with pytest.raises(MessageSizeTooLargeError):
        asyncio.run(kafka.send_all(producer, outputs))  # type: ignore[arg-type]
    assert producer.batches == []
