"""The faust runtime's seek back after a rebalance drops fetched records, against Kafka.

When faust stops its flow (a rebalance under way) it drops the events buffered for its
streams and the records a fetch brings in meanwhile, with the client's position already
past them, and seeks back to the committed offsets (``Consumer.perform_seek``). On a
partition that nobody has committed yet, aiokafka's seek leaves the position where it is;
the dropped records were then never read again, and the next commit put the offset past
them. This is what lost hundreds of fires in the two-worker rebalance test
(tests/acceptance/test_reminders.py) on the faust runtime: a worker that leaves before
its first commit hands over partitions without a committed offset. Here the same drop is
made on purpose, on one partition, and every record must still reach the agent.
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from streams.settings import Settings
from tests.support import eventually

pytestmark = pytest.mark.kafka
RECORDS = 50


async def _publish(settings: Settings, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for i in range(RECORDS):
            await producer.send(topic, value=b"%d" % i, key=b"k", partition=0)
        await producer.flush()
    finally:
        await producer.stop()


def test_records_dropped_by_a_stopped_flow_are_read_again_without_a_committed_offset(
        settings: Settings) -> None:
    topic = settings.topics.task_events
    tp = TopicPartition(topic, 0)
    seen: list[int] = []

    async def scenario() -> None:
        await _publish(settings, topic)
        with tempfile.TemporaryDirectory(prefix="cronorch-faust-seek-") as datadir:
            app = faust.App(
                f"{settings.app_id}-seek", broker=f"cronorch://{settings.kafka_bootstrap_servers}",
                processing_guarantee="exactly_once", store="memory://", datadir=datadir,
                autodiscover=False, web_enabled=False, topic_allow_declare=False,
                topic_disable_leader=True, consumer_auto_offset_reset="earliest",
                key_serializer="raw", value_serializer="raw")
            release = asyncio.Event()

            async def agent(stream: Any) -> None:
                async for event in stream.events():
                    seen.append(event.message.offset)
                    # Held on the first event: nothing is acked, so nothing commits, and
                    # the consumer fetches the rest into the stream's buffer meanwhile.
                    await release.wait()

            app.agent(app.topic(topic, key_serializer="raw", value_serializer="raw"),
                      name="hold")(agent)
            app.in_worker = True  # as streams.faust.worker does: transactions on
            await app.start()
            try:
                consumer = app.consumer

                async def fetched_all() -> bool:
                    return bool(seen) and await consumer.position(tp) >= RECORDS

                await eventually(fetched_all, 60, "every record fetched")
                # What faust's revoke does, and what its fetcher does with records that
                # arrive while the flow is stopped: drop them, then seek back to the
                # committed offsets (of which this partition has none).
                consumer.stop_flow()
                app.flow_control.suspend()
                app.flow_control.clear()
                await consumer.perform_seek()
                app.flow_control.resume()
                consumer.resume_flow()
                release.set()
                await eventually(lambda: set(range(RECORDS)) <= set(seen), 30,
                                 f"all {RECORDS} records at the agent (seen {len(seen)})")
            finally:
                await app.stop()

    asyncio.run(scenario())
    # The first record was in the agent's hands when the flow stopped; it is read again
    # too, since nothing had committed it.
    assert sorted(set(seen)) == list(range(RECORDS))
