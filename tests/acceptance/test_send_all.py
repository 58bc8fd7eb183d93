"""``send_all`` against the broker: batched records land where aiokafka's ``send()`` puts
the same keys, in their order, inside the transaction; a fenced producer's batches raise
once, with no delivery future left unretrieved."""

from __future__ import annotations

import asyncio
import gc
import random
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerFenced

from streams.kafka import client as kafka
from streams.kafka.client import Output
from streams.settings import Settings
from tests.support import eventually

pytestmark = pytest.mark.kafka


def test_batched_records_land_where_send_puts_them_in_order(settings: Settings) -> None:
    """Keyed records without a partition go to aiokafka's own partitioner's choice (one
    topic written by ``send``, the other by ``send_all``, both with 6 partitions), and each
    partition holds its records in the order given, across several batches."""
    rng = random.Random(15)
    keys = [rng.randbytes(rng.randrange(1, 60)) for _ in range(400)]
    outputs = [Output(settings.topics.notifications, keys[i % len(keys)],
                      b"%06d:" % i + b"x" * rng.randrange(0, 2_000)) for i in range(3_000)]

    async def scenario() -> None:
        plain = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await plain.start()
        try:
            for key in keys:
                await plain.send(settings.topics.task_commands, key=key, value=b"")
            await plain.flush()
        finally:
            await plain.stop()
        producer = kafka.producer(settings, settings.transactional_id("send-all", 0))
        await producer.start()
        try:
            async with producer.transaction():
                await kafka.send_all(producer, outputs)
        finally:
            await producer.stop()

    asyncio.run(scenario())
    # The commit returns once the coordinator has logged it; the markers that make the
    # records readable read_committed reach the partitions a moment later, so a read at
    # once may stop short at a partition's old last stable offset: read until all are in.
    records: list[kafka.Record] = []

    async def all_readable() -> bool:
        records[:] = await kafka.read_all(
            settings, [settings.topics.notifications, settings.topics.task_commands])
        return sum(r.topic == settings.topics.notifications for r in records) >= len(outputs)

    asyncio.run(eventually(all_readable, 30, "every batched record readable"))
    by_send = {r.key: r.partition for r in records if r.topic == settings.topics.task_commands}
    batched = [r for r in records if r.topic == settings.topics.notifications]
    assert len(batched) == len(outputs)
    assert all(by_send[r.key] == r.partition for r in batched)
    assert len({r.partition for r in batched}) == 6
    for p in range(6):
        got = [r.value for r in sorted(batched, key=lambda r: r.offset) if r.partition == p]
        assert got == [o.value for o in outputs if by_send[o.key] == p]
    assert sum(len(o.value or b"") for o in outputs) > 2 * kafka.BATCH_BYTES


def test_a_fenced_producer_raises_once_and_leaves_nothing_unretrieved(
        settings: Settings) -> None:
    reported: list[dict[str, Any]] = []
    outputs = [Output(settings.topics.notifications, b"user-%d" % (i % 50), b"y" * 1_000)
               for i in range(5_000)]

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reported.append(ctx))
        tid = settings.transactional_id("send-all", 1)
        zombie = kafka.producer(settings, tid)
        await zombie.start()
        await zombie.begin_transaction()
        owner = kafka.producer(settings, tid)
        await owner.start()  # fences the zombie
        try:
            with pytest.raises(ProducerFenced):
                await kafka.send_all(zombie, outputs)
        finally:
            await kafka.stop_quietly(owner, zombie)
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    gc.collect()
    # 5,000 records in about ten batches: none of their futures is reported. aiokafka's own
    # transaction waiter holds the fencing too, and no call retrieves it once the producer
    # is fenced (abort refuses the transition): one report per fenced producer, not ours.
    assert len(reported) <= 1
