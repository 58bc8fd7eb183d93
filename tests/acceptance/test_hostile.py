"""Issue 8 against the real broker: nothing a user sends may stop the scheduler.

47 kinds of malformed or hostile task events (tests/hostile.py) are interleaved with valid
events of the same users, keyed by those users so they share partitions; garbage and a live
tick ten years ahead are written straight into the timeline. Every valid reminder arrives
exactly once (read_committed), every bad record is in the dead letters exactly once with a
reason naming what was wrong (from the re-keyer if it cannot be routed, else from the
timeline agent, which validates), and the worker never restarts. The tick producer's resume
read skips what is not a tick and a tick far ahead of its broker time; range ticks still
move time on purpose.
(The relay's side, an outbox row too large for Kafka, is in tests/integration/test_outbox.py.)
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.kafka import client as kafka
from streams.processes import tickproducer
from streams.settings import Settings
from tests.hostile import catalogue, upsert
from tests.model import z
from tests.support import Proc, caught_up, read_json

pytestmark = pytest.mark.kafka
FIRE = datetime(2026, 1, 2, 12, tzinfo=UTC)


async def _send(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes]],
                partition: int | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                enable_idempotence=True, linger_ms=5,
                                max_request_size=2_000_000)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, key=key, value=value, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


def test_hostile_records_never_stop_the_scheduler(settings: Settings, tmp_path: Path) -> None:
    users = [f"user-{i}" for i in range(12)]
    stream: list[tuple[bytes | None, bytes]] = []
    bad: dict[str, tuple[str, str]] = {}  # sha256 of the value -> (kind, word)
    expected: set[tuple[str, str]] = set()
    by_user = {user: catalogue(user) for user in users}
    for n in range(len(by_user[users[0]])):
        user = users[n % len(users)]
        hostile = by_user[user][n]
        for k in range(2):  # valid events of the same user on both sides of the bad one
            task = f"task-{n}-{k}"
            fire = FIRE + timedelta(minutes=(n + k) % 20)
            stream.append((user.encode(), orjson.dumps(upsert(
                user, task, due_at=z(fire + timedelta(hours=1)),
                reminders=[{"at": z(fire)}, {"before_minutes": 60 - 30}]))))
            expected |= {(task, z(fire)), (task, z(fire + timedelta(minutes=30)))}
            if k == 0:
                stream.append((user.encode(), hostile.value))
                bad[hashlib.sha256(hostile.value).hexdigest()] = (hostile.kind, hostile.word)
    assert len(bad) >= 30
    far = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3650)
    live_far = orjson.dumps({"type": "tick", "tick_at": z(far)})
    worker = Proc(settings, "worker", log=tmp_path / "worker.log").start()
    try:
        async def scenario() -> int:
            await _send(settings, settings.topics.task_events, stream)
            partitions = await kafka.partition_count(settings, settings.topics.timeline)
            for p in range(partitions):
                await _send(settings, settings.topics.timeline,
                            [(None, b"\x00garbage"), (None, live_far)], partition=p)
            await caught_up(settings, "rekeyer", settings.topics.task_events,
                            transactional=False)
            await tickproducer.publish_range(settings, FIRE, FIRE + timedelta(minutes=60), 60)
            await caught_up(settings, "timeline", settings.topics.timeline, transactional=True)
            return partitions

        partitions = asyncio.run(scenario())
        assert worker.alive(), "the worker stopped"
    finally:
        assert worker.kill(signal.SIGTERM) == 0
    notes = asyncio.run(read_json(settings, settings.topics.notifications))
    counts = Counter(n["notification_id"] for n in notes)
    assert max(counts.values()) == 1
    assert {(n["task_id"], n["fire_at"]) for n in notes} == expected
    assert all(n["late"] is False for n in notes)

    letters = asyncio.run(read_json(settings, settings.topics.dead_letters))
    # Each bad record once: the re-keyer refuses what it cannot route (no JSON object, no
    # user); what names its user is re-keyed unchanged and refused by the timeline agent.
    from_events = [d for d in letters if d["original_sha256"] in bad]
    assert Counter(d["original_sha256"] for d in from_events) == dict.fromkeys(bad, 1)
    where = {bad[d["original_sha256"]][0]: d["source_topic"] for d in from_events}
    for kind in ("garbage bytes", "a JSON array", "missing user_id", "unknown type"):
        assert where[kind] == settings.topics.task_events, kind
    for kind in ("due_at far future", "title 2000 chars", "rrule BYHOUR", "unknown zone"):
        assert where[kind] == settings.topics.timeline, kind
    for letter in from_events:
        kind, word = bad[letter["original_sha256"]]
        assert word in letter["reason"], (kind, letter["reason"])
        assert "Secret" not in letter["reason"]
        assert len(orjson.dumps(letter)) < 64 * 1024
    from_timeline = Counter(
        "tick" if d["reason"].startswith("tick_at: live tick") else "garbage"
        for d in letters
        if d["source_topic"] == settings.topics.timeline and d["original_sha256"] not in bad)
    assert from_timeline == {"tick": partitions, "garbage": partitions}
    log = (tmp_path / "worker.log").read_text()
    assert "Secret" not in log
    assert "partition reset" not in log and "Traceback" not in log


def test_tick_resume_skips_non_ticks_and_ticks_far_ahead(settings: Settings) -> None:
    """One wrong clock reading in scheduler.ticks must not stall the live grid."""
    now = datetime.now(UTC).replace(microsecond=0)
    good = orjson.dumps({"type": "tick", "tick_at": z(now - timedelta(seconds=5))})
    ahead = orjson.dumps({"type": "tick", "tick_at": z(now + timedelta(days=365))})
    asyncio.run(_send(settings, settings.topics.ticks,
                      [(None, good), (None, b"not json"), (None, ahead)], partition=0))
    assert asyncio.run(tickproducer.last_tick(settings)) == now - timedelta(seconds=5)


def test_range_ticks_move_time_on_a_fresh_stack_and_after_earlier_ranges(
        settings: Settings, tmp_path: Path) -> None:
    """`cronorch tick --from --to --step` works as before: range ticks are taken as they
    are, far from the broker's clock too, and a later range after an earlier one."""
    later = FIRE + timedelta(days=400)
    events = [upsert("u-1", "early", due_at=z(FIRE + timedelta(hours=1)),
                     reminders=[{"at": z(FIRE)}]),
              upsert("u-2", "later", due_at=z(later + timedelta(hours=1)),
                     reminders=[{"at": z(later)}])]
    worker = Proc(settings, "worker", log=tmp_path / "worker.log").start()
    try:
        async def scenario() -> None:
            await _send(settings, settings.topics.task_events,
                        [(e["task"]["user_id"].encode(), orjson.dumps(e)) for e in events])
            await caught_up(settings, "rekeyer", settings.topics.task_events,
                            transactional=False)
            for start in (FIRE, later):
                await tickproducer.publish_range(settings, start, start + timedelta(minutes=2),
                                                 60)
            await caught_up(settings, "timeline", settings.topics.timeline, transactional=True)

        asyncio.run(scenario())
    finally:
        worker.kill(signal.SIGTERM)
    notes = asyncio.run(read_json(settings, settings.topics.notifications))
    assert sorted(n["task_id"] for n in notes) == ["early", "later"]
    letters = asyncio.run(read_json(settings, settings.topics.dead_letters))
    assert letters == []
