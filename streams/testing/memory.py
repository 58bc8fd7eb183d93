"""In-memory twin of the Kafka pipeline: the same handlers, no broker.

``MemoryPipeline`` feeds task events through the ``Rekeyer`` into per-partition logs,
appends ticks to every partition, and runs the ``TimelineAgent`` over them exactly as
``engine.Processor`` does, keeping each partition's changelog. ``crash(p)`` drops p's
in-memory state and restores it from that changelog, as a new owner would. Unit tests and
benchmarks use it; tests/acceptance runs the same scenarios against the real broker.
"""

from __future__ import annotations

from datetime import UTC, datetime

from streams import codec
from streams.kafka.client import Output, Record
from streams.processes.worker import Rekeyer, TimelineAgent
from streams.settings import Settings

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)  # the broker time of records that are not ticks


class MemoryPipeline:
    def __init__(self, settings: Settings, partitions: int) -> None:
        self.settings = settings
        self.partitions = partitions
        self.rekeyer = Rekeyer(settings, partitions)
        self.agent = TimelineAgent(settings)
        self.logs: dict[int, list[Record]] = {p: [] for p in range(partitions)}
        self.changelogs: dict[int, list[Record]] = {p: [] for p in range(partitions)}
        self.outputs: list[Output] = []
        self._offset = 0
        for p in range(partitions):
            self.agent.assign(p, [])

    def _record(self, topic: str, partition: int, key: bytes | None,
                value: bytes | None, at: datetime = _EPOCH) -> Record:
        self._offset += 1
        return Record(topic, partition, self._offset, key, value, int(at.timestamp() * 1000))

    def publish(self, values: list[tuple[bytes | None, bytes]]) -> None:
        """Task events (key, value) on todo.task-events, re-keyed and then processed."""
        records = [self._record(self.settings.topics.task_events, 0, k, v) for k, v in values]
        for out in self.rekeyer.process(0, records):
            if out.topic == self.settings.topics.timeline:
                assert out.partition is not None
                self.logs[out.partition].append(
                    self._record(out.topic, out.partition, out.key, out.value))
            else:
                self.outputs.append(out)
        self.drain()

    def tick(self, at: datetime, *, broker_at: datetime | None = None,
             source: str = "live") -> None:
        """A tick on every partition; its record is stamped ``broker_at`` (default: ``at``,
        as the broker would stamp a live tick published on time)."""
        value = codec.encode_tick(at, source=source)
        for p in range(self.partitions):
            self.logs[p].append(self._record(self.settings.topics.timeline, p, None, value,
                                             broker_at or at))
        self.drain()

    def drain(self) -> None:
        for p, log in self.logs.items():
            if not log:
                continue
            records, self.logs[p] = log, []
            for out in self.agent.process(p, records):
                if out.topic == self.settings.topics.state_changelog:
                    self.changelogs[p].append(self._record(out.topic, p, out.key, out.value))
                else:
                    self.outputs.append(out)

    def crash(self, partition: int) -> None:
        """Lose ``partition``'s memory; restore it from its changelog."""
        self.agent.revoke(partition)
        self.agent.assign(partition, self.changelogs[partition])
