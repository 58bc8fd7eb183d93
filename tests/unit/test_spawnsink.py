"""The spawn sink's store step without sockets: retries while PostgreSQL is unavailable,
stops without claiming success, and dead-letters what PostgreSQL rejects for good."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import DeadLetter, Occurrence, SpawnTemplate, TaskSpawn, dumps, loads
from streams.errors import DatabaseError, DatabaseUnavailable
from streams.kafka.client import Record
from streams.processes.spawnsink import SpawnSink, decode_spawn, spawned
from streams.stores import SpawnedTask
from streams.testing.stores import MemorySpawnStore
from tests.support import settings_for

T0 = datetime(2026, 3, 2, tzinfo=UTC)


def _record(offset: int, value: bytes) -> Record:
    return Record("t.todo.task-commands", 0, offset, b"u1", value, 1_772_409_600_000)


def _spawn(n: int) -> bytes:
    return dumps(TaskSpawn(spawn_id=f"s-{n}", user_id="u1", series_id="series",
                           occurrence=Occurrence(due_at=T0.replace(hour=n)), fire_at=T0,
                           tick_at=T0, late=False,
                           template=SpawnTemplate(title="t", reminders=[])))


class FakeDb(MemorySpawnStore):
    """The twin, its first ``failures`` batches failing as unavailable, and the occurrences in
    ``reject`` refused for good (as a CHECK constraint would)."""

    def __init__(self, failures: int = 0, reject: set[str] | None = None) -> None:
        super().__init__()
        self.failures = failures
        self.reject = reject or set()
        self.calls = 0

    @property
    def stored(self) -> dict[str, SpawnedTask]:
        return {t.occurrence_key: t for t in self.tasks.values()}

    async def insert_spawned(self, tasks: Sequence[SpawnedTask]) -> list[bool]:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise DatabaseUnavailable("connection refused")
        if any(t.occurrence_key in self.reject for t in tasks):
            raise DatabaseError("violates check constraint", "23514")
        return await super().insert_spawned(tasks)


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def append(self, *, timestamp: int | None, key: bytes | None,
               value: bytes | None) -> object:
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        pass

    def record_count(self) -> int:
        return len(self.records)


class FakeProducer:
    """The part of aiokafka's producer that ``kafka.send_all`` uses: batches."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *,
                         partition: int) -> asyncio.Future[Any]:
        self.sent.extend((topic, key, value) for key, value in batch.records)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _sink(db: FakeDb, producer: FakeProducer) -> SpawnSink:
    return SpawnSink(settings_for("unit"), db, producer,
                     rng=random.Random(1), base_delay_s=0.01)


def test_unavailable_database_is_retried_until_the_batch_is_stored() -> None:
    db, producer = FakeDb(failures=3), FakeProducer()
    sink = _sink(db, producer)
    records = [_record(0, _spawn(1)), _record(1, _spawn(2)), _record(2, _spawn(1))]
    assert asyncio.run(sink.store(records, asyncio.Event())) is True
    assert db.calls == 4 and sink.counts["retries"] == 3
    assert sink.counts["inserted"] == 2 and sink.counts["duplicates"] == 1
    assert producer.sent == []


def test_stopping_while_the_database_is_away_reports_the_batch_unstored() -> None:
    async def go() -> bool:
        stop = asyncio.Event()
        sink = _sink(FakeDb(failures=10**6), FakeProducer())
        asyncio.get_running_loop().call_later(0.1, stop.set)
        return await sink.store([_record(0, _spawn(1))], stop)

    assert asyncio.run(go()) is False


def test_rejected_and_malformed_spawns_become_dead_letters() -> None:
    rejected = decode_spawn(_spawn(2))
    db = FakeDb(reject={spawned(rejected).occurrence_key})
    producer = FakeProducer()
    sink = _sink(db, producer)
    records = [_record(0, _spawn(1)), _record(1, _spawn(2)), _record(2, b"[]")]
    assert asyncio.run(sink.store(records, asyncio.Event())) is True
    assert list(db.stored) == [spawned(decode_spawn(_spawn(1))).occurrence_key]
    letters = [loads(DeadLetter, value or b"") for _, _, value in producer.sent]
    assert sorted((d.source_offset, d.reason) for d in letters) == [
        (1, "rejected by PostgreSQL (SQLSTATE 23514)"), (2, "expected a JSON object")]
    assert {topic for topic, _, _ in producer.sent} == {"unit.scheduler.dead-letters"}


def test_spawn_ids_are_deterministic() -> None:
    a, b = spawned(decode_spawn(_spawn(1))), spawned(decode_spawn(_spawn(1)))
    assert a == b
    assert a.task_id != spawned(decode_spawn(_spawn(2))).task_id


def test_a_spawn_that_cannot_be_mapped_or_is_too_large_is_dead_lettered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in one command stops the sink: the batch is stored around it."""
    from streams.processes import spawnsink

    original = spawnsink.spawned

    def mapping(spawn: TaskSpawn) -> SpawnedTask:
        if spawn.spawn_id == "s-3":
            raise ValueError("a template the Task model refuses")
        return original(spawn)

    monkeypatch.setattr(spawnsink, "spawned", mapping)
    db, producer = FakeDb(), FakeProducer()
    long_title = TaskSpawn.model_validate_json(_spawn(4)).model_copy(
        update={"template": SpawnTemplate(title="x" * 5_000, reminders=[])})
    records = [_record(0, _spawn(1)), _record(1, _spawn(3)), _record(2, b" " * 70_000),
               _record(3, dumps(long_title))]
    assert asyncio.run(_sink(db, producer).store(records, asyncio.Event())) is True
    assert len(db.stored) == 2  # a template stored before the v1.1 limits still maps
    letters = [loads(DeadLetter, value or b"") for _, _, value in producer.sent]
    assert sorted((d.source_offset, d.reason) for d in letters) == [
        (1, "mapping failed: ValueError"),
        (2, "record of 70000 bytes is over the limit of 65536 bytes")]
