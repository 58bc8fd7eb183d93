"""The tasks side against real PostgreSQL and Kafka: the spawn sink (schema contract,
idempotency, dead letters), the outbox relay (two relays, per-user order, LISTEN/NOTIFY
wake-up vs polling) and bootstrap. Missing servers fail these tests; nothing skips."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from schemas import (
    TASK_EVENT_ADAPTER,
    AtReminder,
    BeforeReminder,
    DeadLetter,
    Occurrence,
    SpawnTemplate,
    TaskSpawn,
    TaskUpserted,
    dumps,
    loads,
)
from streams.kafka import client as kafka
from streams.postgres.connector import Connector
from streams.postgres.outbox import PgOutboxStore
from streams.postgres.spawns import PgSpawnStore
from streams.processes.relay import Relay, relay_loop
from streams.processes.spawnsink import decode_spawn, event_id_of, spawned, task_id_of
from streams.settings import Settings
from tests.hostile import upsert
from tests.support import ROOT, Proc, caught_up, env_for, eventually, read_json

T = TypeVar("T")

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]
T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)


def _with_db(settings: Settings, url: str) -> Settings:
    return settings.model_copy(update={"database_url": SecretStr(url)})


def _spawn(series: str, day: int, *, user: str = "u1", all_day: bool = False) -> TaskSpawn:
    due = T0 + timedelta(days=day, hours=9)
    occurrence = (Occurrence(due_date=date(2026, 3, 2) + timedelta(days=day)) if all_day
                  else Occurrence(due_at=due))
    return TaskSpawn(
        spawn_id=f"spawn-{series}-{day}", user_id=user, series_id=series, occurrence=occurrence,
        fire_at=T0 + timedelta(days=day), tick_at=T0 + timedelta(days=day, seconds=1), late=True,
        template=SpawnTemplate(title="Water the plants", reminders=[
            BeforeReminder(before_minutes=15), AtReminder(at=due - timedelta(hours=1))]))


async def _fetch(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


@asynccontextmanager
async def _store(url: str, store: Callable[[Connector], T]) -> AsyncIterator[T]:
    db = await Connector.connect(url)
    try:
        yield store(db)
    finally:
        await db.close()


# --- the spawn sink ---------------------------------------------------------------------------


def test_spawn_built_with_the_schema_round_trips_into_a_row(database: str) -> None:
    """Contract: TaskSpawn (as the worker writes it) → bytes → sink → tasks + outbox rows."""
    timed, all_day = _spawn("series-a", 3), _spawn("series-b", 4, all_day=True)
    # Readers ignore unknown fields (DESIGN §3), at every level.
    doc = orjson.loads(dumps(timed))
    doc["future_field"] = 1
    doc["occurrence"]["future_field"] = 2
    doc["template"]["future_field"] = 3
    assert decode_spawn(orjson.dumps(doc)) == timed
    assert decode_spawn(dumps(all_day)) == all_day

    async def go() -> None:
        async with _store(database, PgSpawnStore) as db:
            assert await db.insert_spawned([spawned(timed), spawned(all_day)]) == [True, True]
            assert await db.insert_spawned([spawned(timed), spawned(all_day)]) == [False, False]
        rows = {r["series_id"]: r for r in await _fetch(database, "SELECT * FROM tasks")}
        outbox = await _fetch(database, "SELECT user_id, event_type, payload::text AS payload "
                                        "FROM outbox ORDER BY outbox_id")
        assert len(rows) == 2 and len(outbox) == 2
        for spawn, row, box in ((timed, rows["series-a"], outbox[0]),
                                (all_day, rows["series-b"], outbox[1])):
            assert row["task_id"] == task_id_of(spawn.spawn_id)
            assert (row["user_id"], row["version"], row["status"]) == ("u1", 1, "open")
            assert row["title"] == spawn.template.title
            assert row["due_at"] == spawn.occurrence.due_at
            assert row["due_date"] == spawn.occurrence.due_date
            assert orjson.loads(row["reminders"]) == [
                r.model_dump(mode="json") for r in spawn.template.reminders]
            assert row["recurrence"] is None and row["series_id"] == spawn.series_id
            assert row["created_at"] == row["updated_at"] == spawn.tick_at
            assert (box["user_id"], box["event_type"]) == ("u1", "task.upserted")
            event = loads(TASK_EVENT_ADAPTER, box["payload"])
            assert isinstance(event, TaskUpserted)
            assert event.event_id == event_id_of(spawn.spawn_id)
            assert event.occurred_at == spawn.tick_at
            task = event.task
            assert (task.task_id, task.version, task.status, task.series_id) == (
                row["task_id"], 1, "open", spawn.series_id)
            assert (task.due_at, task.due_date) == (row["due_at"], row["due_date"])
            assert task.reminders == spawn.template.reminders and task.recurrence is None
        assert rows["series-a"]["occurrence_key"] == "2026-03-05T09:00:00Z"
        assert rows["series-b"]["occurrence_key"] == "2026-03-06"
        # A different spawn id for an occurrence already stored, or one archived since,
        # changes nothing either.
        other = timed.model_copy(update={"spawn_id": "another-id"})
        conn = await asyncpg.connect(database)
        try:
            await conn.execute("""
                WITH moved AS (DELETE FROM tasks WHERE series_id = 'series-b' RETURNING *)
                INSERT INTO tasks_archive SELECT task_id, user_id, version, title, status,
                       completed_at, due_at, due_date, reminders, recurrence, series_id,
                       occurrence_key, created_at, updated_at, now() FROM moved""")
        finally:
            await conn.close()
        async with _store(database, PgSpawnStore) as db:
            assert await db.insert_spawned([spawned(other), spawned(all_day)]) == [False, False]
        assert len(await _fetch(database, "SELECT 1 FROM outbox")) == 2
        assert len(await _fetch(database, "SELECT 1 FROM tasks")) == 1

    asyncio.run(go())


async def _send_commands(settings: Settings, values: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                enable_idempotence=True)
    await producer.start()
    try:
        for key, value in values:
            await producer.send(settings.topics.task_commands, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


def test_sink_stores_a_spawn_once_and_the_relay_publishes_it(
        settings: Settings, database: str, tmp_path: Path) -> None:
    """The same spawn twice → one row, one outbox row, one task.upserted on task-events;
    malformed commands → dead letters with the reason."""
    settings = _with_db(settings, database)
    first, second = _spawn("series-a", 1), _spawn("series-a", 2, all_day=True)
    sink = Proc(settings, "spawn-sink", log=tmp_path / "sink.log").start()
    relay = Proc(settings, "relay", log=tmp_path / "relay.log").start()
    try:
        asyncio.run(_send_commands(settings, [
            (b"u1", dumps(first)), (b"u1", dumps(second)), (b"u1", b"{not json"),
            (b"u1", orjson.dumps({"type": "task.explode"})), (b"u1", dumps(first)),
        ]))

        async def check() -> None:
            await caught_up(settings, "spawnsink", settings.topics.task_commands,
                            transactional=False, timeout_s=60)

            async def published() -> bool:
                rows = await _fetch(database, "SELECT 1 FROM outbox WHERE published_at IS NULL")
                return not rows

            await eventually(published, 30, "the outbox published")

        asyncio.run(check())
    finally:
        assert sink.kill(signal.SIGTERM) == 0, (tmp_path / "sink.log").read_text()[-2000:]
        assert relay.kill(signal.SIGTERM) == 0, (tmp_path / "relay.log").read_text()[-2000:]
    tasks = asyncio.run(_fetch(database, "SELECT task_id FROM tasks ORDER BY task_id"))
    assert sorted(r["task_id"] for r in tasks) == sorted(
        task_id_of(s.spawn_id) for s in (first, second))
    assert len(asyncio.run(_fetch(database, "SELECT 1 FROM outbox"))) == 2
    events = asyncio.run(read_json(settings, settings.topics.task_events))
    assert sorted(e["event_id"] for e in events) == sorted(
        event_id_of(s.spawn_id) for s in (first, second))
    letters = [DeadLetter.model_validate(d)
               for d in asyncio.run(read_json(settings, settings.topics.dead_letters))]
    assert sorted(d.reason for d in letters) == ["invalid JSON",
                                                 "unknown command type 'task.explode'"]
    assert {d.original_value for d in letters} == {b"{not json",
                                                   orjson.dumps({"type": "task.explode"})}
    assert "Water the plants" not in (tmp_path / "sink.log").read_text()


# --- the relay --------------------------------------------------------------------------------


def _upsert(user: str, task: str, version: int) -> str:
    return orjson.dumps({
        "type": "task.upserted", "event_id": f"{task}-v{version}",
        "occurred_at": "2026-03-02T00:00:00Z",
        "task": {"task_id": task, "user_id": user, "version": version, "title": "t",
                 "status": "open", "due_at": "2026-03-09T09:00:00Z", "reminders": []},
    }).decode()


def test_two_relays_publish_every_row_in_order_per_user(
        settings: Settings, database: str, tmp_path: Path) -> None:
    """~2,000 rows of 20 users written while two relays run: each row published exactly
    once (no crash here), each user's rows in outbox order, each task's versions rising."""
    settings = _with_db(settings, database)
    rng = random.Random(7)
    users = [f"user-{i:02d}" for i in range(20)]
    versions: dict[str, int] = defaultdict(int)
    rows: list[tuple[str, str]] = []
    for _ in range(2000):
        user = rng.choice(users)
        task = f"{user}-task-{rng.randrange(5)}"
        versions[task] += 1
        rows.append((user, _upsert(user, task, versions[task])))
    relays = [Proc(settings, "relay", "--batch-size", "50",
                   log=tmp_path / f"relay-{i}.log").start() for i in range(2)]
    started = time.monotonic()
    try:
        async def write_and_wait() -> None:
            conn = await asyncpg.connect(database)
            try:
                for i in range(0, len(rows), 100):  # 20 transactions, relays running
                    async with conn.transaction():
                        await conn.executemany(
                            "INSERT INTO outbox (user_id, event_type, payload) "
                            "VALUES ($1, 'task.upserted', $2::jsonb)", rows[i:i + 100])
                    await asyncio.sleep(0.05)

                async def done() -> bool:
                    return bool(await conn.fetchval(
                        "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0)

                await eventually(done, 60, "every outbox row published")
            finally:
                await conn.close()

        asyncio.run(write_and_wait())
        elapsed = time.monotonic() - started
    finally:
        for proc in relays:
            assert proc.kill(signal.SIGTERM) == 0
    published = []
    for i in range(2):
        for line in (tmp_path / f"relay-{i}.log").read_text().splitlines():
            if '"relay stopped"' in line:
                published.append(orjson.loads(line)["published"])
    assert sum(published) == 2000, published
    print(f"\n2 relays, 2000 rows: {elapsed:.1f} s, split {published}")

    events = asyncio.run(read_json(settings, settings.topics.task_events))
    assert len(events) == 2000
    expected: dict[str, list[str]] = defaultdict(list)
    for user, payload in rows:
        expected[user].append(orjson.loads(payload)["event_id"])
    seen: dict[str, list[str]] = defaultdict(list)
    last_version: dict[str, int] = {}
    for event in events:
        task = event["task"]
        seen[task["user_id"]].append(event["event_id"])
        assert task["version"] == last_version.get(task["task_id"], 0) + 1
        last_version[task["task_id"]] = task["version"]
    assert seen == expected


def test_listen_notify_wakes_the_relay_faster_than_polling(
        settings: Settings, database: str) -> None:
    """A committed insert wakes a LISTENing relay within milliseconds; without LISTEN the
    1 s poll picks it up within about a second."""
    settings = _with_db(settings, database)

    async def latencies(listen: bool, poll_interval_s: float, samples: int) -> tuple[
            list[float], Counter[str]]:
        db = await Connector.connect(database)
        producer = kafka.producer(settings, None)
        await producer.start()
        relay = Relay(settings, PgOutboxStore(db), producer,
                      clock=lambda: datetime.now(UTC))
        stop = asyncio.Event()
        loop = asyncio.create_task(relay_loop(relay, stop, poll_interval_s=poll_interval_s,
                                              listen=listen))
        conn = await asyncpg.connect(database)
        out: list[float] = []
        try:
            await asyncio.sleep(0.5)  # the relay is listening and idle
            for i in range(samples):
                outbox_id = await conn.fetchval(
                    "INSERT INTO outbox (user_id, event_type, payload) "
                    "VALUES ('u1', 'task.upserted', $1::jsonb) RETURNING outbox_id",
                    _upsert("u1", f"task-{listen}", i + 1))
                start = time.monotonic()
                while not await conn.fetchval(
                        "SELECT published_at IS NOT NULL FROM outbox WHERE outbox_id = $1",
                        outbox_id):
                    assert time.monotonic() - start < 10, "row never published"
                    await asyncio.sleep(0.005)
                out.append(time.monotonic() - start)
                await asyncio.sleep(random.uniform(0.1, 0.4))
        finally:
            stop.set()
            await loop
            await conn.close()
            await producer.stop()
            await db.close()
        return out, relay.counts

    notified, counts_listen = asyncio.run(latencies(True, 30.0, 5))
    polled, counts_poll = asyncio.run(latencies(False, 1.0, 5))
    print(f"\nLISTEN/NOTIFY latency: max {max(notified) * 1000:.0f} ms, "
          f"mean {sum(notified) / len(notified) * 1000:.0f} ms; "
          f"1 s polling: max {max(polled) * 1000:.0f} ms, "
          f"mean {sum(polled) / len(polled) * 1000:.0f} ms")
    assert max(notified) < 0.5, notified  # with a 30 s poll, only NOTIFY explains it
    assert counts_listen["wakeups_notify"] >= 5 and counts_listen["wakeups_poll"] == 0
    assert max(polled) < 1.5, polled
    assert counts_poll["wakeups_notify"] == 0 and counts_poll["wakeups_poll"] >= 1
    assert sum(polled) / len(polled) > sum(notified) / len(notified)


# --- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_publishes_settings_then_every_open_task(
        settings: Settings, database: str) -> None:
    settings = _with_db(settings, database)

    async def seed() -> None:
        conn = await asyncpg.connect(database)
        try:
            await conn.execute("""
                INSERT INTO user_settings (user_id, version, timezone, digest_time)
                SELECT 'u' || g, 2, 'Europe/Berlin', '08:30' FROM generate_series(0, 49) g""")
            await conn.execute("""
                INSERT INTO tasks (task_id, user_id, version, title, status, due_at, reminders)
                SELECT 'open-' || g, 'u' || (g % 50), 1 + g % 3, 'secret title ' || g, 'open',
                       '2026-04-01T09:00:00Z'::timestamptz + g * interval '1 minute',
                       '[{"before_minutes": 15}]'
                  FROM generate_series(1, 3000) g""")
            await conn.execute("""
                INSERT INTO tasks (task_id, user_id, title, status, completed_at)
                SELECT 'done-' || g, 'u1', 't', 'completed', '2026-03-01T00:00:00Z'
                  FROM generate_series(1, 500) g""")
            await conn.execute("""
                INSERT INTO tasks (task_id, user_id, title, status, due_date, reminders)
                VALUES ('bad-1', 'u1', 't', 'open', '2026-04-02', '[{"nope": 1}]')""")
        finally:
            await conn.close()

    asyncio.run(seed())
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "bootstrap", "--as-of", "2026-03-02T12:00:00Z",
         "--chunk-size", "500"], cwd=ROOT, env=env_for(settings), capture_output=True,
        check=False, timeout=120)
    elapsed = time.monotonic() - started
    stderr = proc.stderr.decode()  # bytes: text mode would turn each \r into \n
    assert proc.returncode == 0, stderr[-2000:]
    summary = orjson.loads(proc.stdout)
    assert summary == {"as_of": "2026-03-02T12:00:00Z", "user_settings": 50,
                       "open_tasks": 3000, "user_settings_invalid": 0,
                       "open_tasks_invalid": 1}
    assert "\r50/50 user settings (100%)\n" in stderr
    assert "\r1500/3001 tasks (49%)\r" in stderr
    assert "\r3001/3001 tasks (100%)\n" in stderr
    assert '"row skipped: not a valid event"' in stderr and '"task_id":"bad-1"' in stderr
    assert "secret title" not in stderr
    print(f"\nbootstrap of 50 settings + 3000 open tasks: {elapsed:.1f} s (subprocess)")

    events = asyncio.run(read_json(settings, settings.topics.task_events))
    assert len(events) == 3050
    first_task: dict[str, int] = {}
    settings_at: dict[str, int] = {}
    versions: dict[str, int] = {}
    for i, raw in enumerate(events):
        event = TASK_EVENT_ADAPTER.validate_python(raw)
        assert event.occurred_at == datetime(2026, 3, 2, 12, tzinfo=UTC)
        if isinstance(event, TaskUpserted):
            first_task.setdefault(event.task.user_id, i)
            versions[event.task.task_id] = event.task.version
        else:
            settings_at[event.user_id] = i
    assert versions == {f"open-{g}": 1 + g % 3 for g in range(1, 3001)}
    assert len(settings_at) == 50
    assert all(settings_at[user] < at for user, at in first_task.items())


def test_a_user_is_published_by_one_relay_at_a_time_and_only_after_the_ack(
        database: str) -> None:
    """The adapter's claim: a held user is skipped by others; a failed publish marks nothing."""
    from streams.errors import BrokerUnavailable

    async def go() -> None:
        async with _store(database, PgOutboxStore) as db, \
                _store(database, PgOutboxStore) as other:
            conn = await asyncpg.connect(database)
            try:
                await conn.executemany(
                    "INSERT INTO outbox (user_id, event_type, payload) "
                    "VALUES ($1, 'task.upserted', $2::jsonb)",
                    [("u1", _upsert("u1", "t1", v)) for v in (1, 2, 3)])
            finally:
                await conn.close()
            now = lambda: datetime.now(UTC)  # noqa: E731

            async def broken(rows: list[Any]) -> None:
                raise BrokerUnavailable("no broker")

            with pytest.raises(BrokerUnavailable):
                await db.publish_outbox("u1", 10, broken, now)
            assert await db.outbox_unpublished() == 3

            entered, release = asyncio.Event(), asyncio.Event()
            got: list[list[int]] = []

            async def slow(rows: list[Any]) -> None:
                got.append([r.outbox_id for r in rows])
                entered.set()
                await release.wait()

            holder = asyncio.create_task(db.publish_outbox("u1", 2, slow, now))
            await entered.wait()
            assert await other.publish_outbox("u1", 10, slow, now) is None  # held: skipped
            release.set()
            assert await holder == 2
            assert await other.publish_outbox("u1", 10, slow, now) == 1  # only the rest
            assert got[1] == [got[0][-1] + 1]
            assert await db.outbox_unpublished() == 0

    asyncio.run(go())


@pytest.mark.parametrize("max_message_bytes", [1_000_000, 5_000_000],
                         ids=["over-the-setting", "refused-by-kafka"])
def test_an_outbox_row_too_large_for_kafka_never_blocks_other_users(
        settings: Settings, database: str, max_message_bytes: int) -> None:
    """Its row is dead-lettered (bounded) and marked published; the rows around it go out.
    Caught before sending when over ``max_message_bytes``; when the setting is larger than
    what Kafka takes, the refusal is found row by row instead of retried forever."""
    settings = _with_db(settings, database).model_copy(
        update={"max_message_bytes": max_message_bytes})
    small = [("user-a", upsert("user-a", "a")), ("user-c", upsert("user-c", "c"))]
    huge = upsert("user-b", "b")
    huge["task"]["title"] = "h" * 1_200_000

    async def scenario() -> int:
        conn = await asyncpg.connect(database)
        try:
            for user, doc in (small[0], ("user-b", huge), small[1]):
                await conn.execute("INSERT INTO outbox (user_id, event_type, payload) "
                                   "VALUES ($1, 'task.upserted', $2::jsonb)", user,
                                   orjson.dumps(doc).decode())
        finally:
            await conn.close()
        db = await Connector.connect(database)
        producer = kafka.producer(settings, None)
        await producer.start()
        try:
            relay = Relay(settings, PgOutboxStore(db), producer,
                          clock=lambda: datetime.now(UTC))
            return await asyncio.wait_for(relay.drain(), 60)
        finally:
            await producer.stop()
            await db.close()

    assert asyncio.run(scenario()) == 3
    events = asyncio.run(read_json(settings, settings.topics.task_events))
    assert sorted(e["task"]["user_id"] for e in events) == ["user-a", "user-c"]
    (letter,) = asyncio.run(read_json(settings, settings.topics.dead_letters))
    assert letter["source_topic"] == "outbox"
    assert ("max.message.bytes" if max_message_bytes == 1_000_000
            else "refused by Kafka: MessageSizeTooLargeError") in letter["reason"]
    assert letter["original_truncated"] and letter["original_size_bytes"] > 1_200_000
