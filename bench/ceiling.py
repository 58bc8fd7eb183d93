"""The Python ceiling: bare aiokafka consume → transactional produce loops, no decoding.

The worker's ingest path has the same two hops (task events → timeline → one changelog
record per task), each exactly-once; here each hop is the least a Python process can do
for it: consume ``read_committed`` in batches of up to 2,000, forward every record's key
and value unchanged, and commit outputs and offsets in one transaction per batch (one
transactional producer per hop for all partitions). Whatever the worker costs above this is
decoding, planning, encoding and its transaction-per-partition layout.

    python -m bench.ceiling   # settings from the environment; runs until SIGTERM
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from streams.settings import Settings

MAX_RECORDS = 2000


class Announce(ConsumerRebalanceListener):  # type: ignore[misc]
    """Logs assignments as the worker does, so the suite reads both the same way."""

    def __init__(self, role: str) -> None:
        self.role = role

    def _log(self, event: str, tps: Iterable[TopicPartition]) -> None:
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = {"ts": ts, "level": "info", "event": event, "role": self.role,
                "partitions": sorted(tp.partition for tp in tps)}
        sys.stderr.write(orjson.dumps(line).decode() + "\n")
        sys.stderr.flush()

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._log("partitions revoked", revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._log("partitions assigned", assigned)


async def hop(settings: Settings, role: str, source: str, sink: str,
              stop: asyncio.Event) -> None:
    group = settings.group_id(role)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=group,
        isolation_level="read_committed", enable_auto_commit=False,
        auto_offset_reset="earliest", max_poll_records=MAX_RECORDS)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        transactional_id=settings.transactional_id(role), enable_idempotence=True,
        acks="all", linger_ms=5)
    await producer.start()
    consumer.subscribe([source], listener=Announce(role))
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=MAX_RECORDS)
            if not batches:
                continue
            async with producer.transaction():
                futures = [await producer.send(sink, key=m.key, value=m.value)
                           for msgs in batches.values() for m in msgs]
                await asyncio.gather(*futures)
                await producer.send_offsets_to_transaction(
                    {tp: msgs[-1].offset + 1 for tp, msgs in batches.items()}, group)
    finally:
        await consumer.stop()
        with contextlib.suppress(Exception):
            await producer.stop()


async def main() -> None:
    settings = Settings.from_env()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    t = settings.topics
    await asyncio.gather(
        hop(settings, "ceiling-rekey", t.task_events, t.timeline, stop),
        hop(settings, "ceiling-plan", t.timeline, t.state_changelog, stop))


if __name__ == "__main__":
    asyncio.run(main())
