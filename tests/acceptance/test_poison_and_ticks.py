"""Poison input goes to the dead-letter topic with a reason, valid input around it still
flows; the tick producer restarts without a gap and two of them never double-fire."""

from __future__ import annotations

import asyncio
import base64
import itertools
import random
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.processes import tickproducer
from streams.settings import Settings
from tests.model import z
from tests.support import Proc, caught_up, eventually, publish, read_json

pytestmark = pytest.mark.kafka


def _task_event(user: str, task: str, fire: datetime, version: int = 1) -> dict[str, object]:
    return {"type": "task.upserted", "event_id": f"{task}-{version}",
            "occurred_at": "2026-01-01T00:00:00Z",
            "task": {"task_id": task, "user_id": user, "version": version, "title": "Secret",
                     "status": "open", "due_at": z(fire + timedelta(hours=1)),
                     "reminders": [{"at": z(fire)}]}}


def _poison(rng: random.Random) -> list[tuple[bytes, str]]:
    """(record, a word the reason must contain). The first five cannot be routed (the
    re-keyer refuses them); the last three name their user and fail validation in the
    timeline agent."""
    good = _task_event("u", "t", datetime(2026, 1, 2, tzinfo=UTC))
    wrong_type = orjson.loads(orjson.dumps(good))
    wrong_type["task"]["version"] = "one"
    missing = orjson.loads(orjson.dumps(good))
    del missing["task"]["status"]
    return [
        (bytes(rng.randrange(256) for _ in range(64)), "JSON"),
        (b"", "JSON"),
        (b'"just a string"', "object"),
        (orjson.dumps({**good, "type": "task.teleported"}), "task.teleported"),
        (orjson.dumps({k: v for k, v in good.items() if k != "type"}), "type"),
        (orjson.dumps(wrong_type), "task.version"),
        (orjson.dumps(missing), "task.status"),
        (orjson.dumps({**good, "occurred_at": "2026-01-01T00:00:00"}), "occurred_at"),
    ]


def test_poison_goes_to_dead_letters_and_valid_events_flow(settings: Settings,
                                                           tmp_path: Path) -> None:
    rng = random.Random(5)
    poison = _poison(rng)
    fire = datetime(2026, 1, 2, 12, tzinfo=UTC)
    valid = [_task_event(f"user-{i}", f"task-{i}", fire) for i in range(len(poison) + 1)]
    stream: list[dict[str, object] | bytes] = []
    for i, event in enumerate(valid):
        stream.append(event)
        if i < len(poison):
            stream.append(poison[i][0])

    async def scenario() -> None:
        await publish(settings, stream)
        # Poison written straight into the timeline is caught by the timeline agent too.
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        await producer.send_and_wait(settings.topics.timeline, b'{"type": "tick"}', partition=0)
        await producer.stop()
        await caught_up(settings, "rekeyer", settings.topics.task_events, transactional=False)
        await tickproducer.publish_range(settings, fire, fire, 60)
        await caught_up(settings, "timeline", settings.topics.timeline, transactional=True)

    worker = Proc(settings, "worker", log=tmp_path / "worker.log").start()
    try:
        asyncio.run(scenario())
    finally:
        worker.kill(signal.SIGTERM)
    notes = asyncio.run(read_json(settings, settings.topics.notifications))
    assert sorted(n["task_id"] for n in notes) == sorted(f"task-{i}" for i in range(len(valid)))
    letters = asyncio.run(read_json(settings, settings.topics.dead_letters))
    assert len(letters) == len(poison) + 1
    by_value = {base64.b64decode(d["original_value_b64"]): d for d in letters}
    for n, (record, word) in enumerate(poison):
        letter = by_value[record]
        assert word in letter["reason"], (word, letter["reason"])
        routed = n >= 5  # re-keyed unchanged, then refused where it is validated
        assert letter["source_topic"] == (
            settings.topics.timeline if routed else settings.topics.task_events)
        assert "Secret" not in letter["reason"]
    timeline_letter = by_value[b'{"type": "tick"}']
    assert timeline_letter["source_topic"] == settings.topics.timeline
    assert "tick_at" in timeline_letter["reason"]
    log = (tmp_path / "worker.log").read_text()
    assert "Secret" not in log


async def _ticks_now(settings: Settings) -> list[datetime]:
    docs = await read_json(settings, settings.topics.ticks)
    return [datetime.fromisoformat(d["tick_at"].replace("Z", "+00:00")) for d in docs]


def _ticks(settings: Settings) -> list[datetime]:
    return asyncio.run(_ticks_now(settings))


def _wait_ticks(settings: Settings, count: int) -> None:
    async def enough() -> bool:
        return len(await _ticks_now(settings)) >= count

    asyncio.run(eventually(enough, 30, f"{count} ticks"))


def test_tick_producer_restart_has_no_gap(settings: Settings, tmp_path: Path) -> None:
    """Killed with SIGKILL and restarted: every grid step covered, none published twice."""
    log = tmp_path / "tick.log"
    producer = Proc(settings, "tick", log=log).start()
    _wait_ticks(settings, 3)
    producer.kill(signal.SIGKILL)
    before = _ticks(settings)
    asyncio.run(asyncio.sleep(3))  # a gap in wall time the restart must fill
    producer = Proc(settings, "tick", log=log).start()
    _wait_ticks(settings, len(before) + 6)
    producer.kill(signal.SIGTERM)
    ticks = _ticks(settings)
    assert len(ticks) == len(set(ticks)), "a tick was published twice"
    ticks.sort()
    step = timedelta(seconds=settings.tick_interval_s)
    gaps = [(a, b) for a, b in itertools.pairwise(ticks) if b - a != step]
    assert not gaps, gaps
    assert "tick catch-up" in log.read_text()


def test_two_tick_producers_never_double_fire(settings: Settings, tmp_path: Path) -> None:
    """Two live producers at once: ticks stay gapless and every reminder fires once."""
    now = datetime.now(UTC).replace(microsecond=0)
    fires = [now + timedelta(seconds=4 + s) for s in range(0, 10)]
    events = [_task_event(f"user-{i % 3}", f"task-{i}", at) for i, at in enumerate(fires)]
    worker = Proc(settings, "worker", log=tmp_path / "worker.log").start()
    a = Proc(settings, "tick", log=tmp_path / "a.log").start()
    b = Proc(settings, "tick", log=tmp_path / "b.log").start()
    try:
        asyncio.run(publish(settings, events))

        async def all_fired() -> bool:
            notes = await read_json(settings, settings.topics.notifications)
            return len({n["notification_id"] for n in notes}) >= len(fires)

        asyncio.run(eventually(all_fired, 60, "every reminder fired"))
        asyncio.run(asyncio.sleep(3))
    finally:
        for proc in (a, b, worker):
            proc.kill(signal.SIGTERM)
    notes = asyncio.run(read_json(settings, settings.topics.notifications))
    counts = Counter(n["notification_id"] for n in notes)
    assert len(counts) == len(fires) and max(counts.values()) == 1
    ticks = sorted(set(_ticks(settings)))
    step = timedelta(seconds=settings.tick_interval_s)
    gaps = [(x, y) for x, y in itertools.pairwise(ticks) if y - x != step]
    assert not gaps, gaps
