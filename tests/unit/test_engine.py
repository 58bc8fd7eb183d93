"""The engine's failure path without a broker: a failed transaction resets the partition
(abort, restore, seek back to the committed offset) with exponential backoff, retrying
while the broker refuses, and the batch is then processed again from the committed offset."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import pytest
from aiokafka.errors import KafkaConnectionError

from streams.kafka import client as kafka
from streams.kafka import engine
from streams.kafka.client import Output, Record, TopicPartition
from streams.settings import Settings


class Broker:
    """What the fakes share: how many more calls fail, and what got committed."""

    def __init__(self, failing_commits: int, failing_starts: int) -> None:
        self.failing_commits = failing_commits
        self.failing_starts = failing_starts
        self.committed: list[tuple[list[bytes | None], dict[TopicPartition, int]]] = []
        self.aborts = 0
        self.seeks: list[int] = []


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

    async def committed(self, tp: TopicPartition) -> int:
        return 10

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.broker.seeks.append(offset)


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
        await processor._open(0)
        broker.failing_starts = failing_starts  # the broker goes away after the first start
        tp = TopicPartition("source", 0)
        await processor._process(tp, [Msg(10), Msg(11)])  # commit fails → reset
        assert broker.committed == []
        await processor._process(tp, [Msg(10), Msg(11)])  # redelivered from offset 10
        assert broker.committed == [([b"v", b"v"], {tp: 12})]
        assert processor.failures[0] == 0

    asyncio.run(scenario())
    assert broker.aborts == 1 and broker.seeks == [10]
    assert handler.assigned == 2  # restored once more after the reset
    assert len(sleeps) == 1 + failing_starts  # one backoff per attempt to reopen
    caps = [engine.backoff_cap_s(engine.RESET_BACKOFF, n + 1) for n in range(len(sleeps))]
    assert all(0 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))
