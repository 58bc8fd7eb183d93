"""Backfill by replay against the real broker: a tick gap longer than the reminders' catch-up
window makes the live worker miss fires; `cronorch backfill` emits exactly those, once.

A dry run prints the same difference and emits nothing; a second run emits nothing; a window
the live worker has not passed is refused.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.processes import tickproducer
from streams.settings import Settings
from tests.model import ts, z
from tests.support import ROOT, Proc, caught_up, env_for, publish, read_json

pytestmark = pytest.mark.kafka

T0 = ts("2026-07-01T10:00:00Z")
DUE = T0 + timedelta(hours=1)


def _backfill(settings: Settings, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "backfill", "--no-progress", *args], cwd=ROOT,
        env=env_for(settings), capture_output=True, check=False, timeout=180)
    out = orjson.loads(proc.stdout) if proc.returncode == 0 else {}
    return proc.returncode, out, proc.stderr.decode()


def test_backfill_emits_exactly_the_fires_a_tick_gap_made_the_worker_miss(
        settings: Settings, tmp_path: Path) -> None:
    events = [
        {"type": "user.settings", "event_id": "s1", "occurred_at": z(T0), "user_id": "ana",
         "version": 1, "timezone": "Europe/Lisbon", "digest_time": None},
        {"type": "task.upserted", "event_id": "e1", "occurred_at": z(T0), "task": {
            "task_id": "t1", "user_id": "ana", "version": 1, "title": "Call the bank",
            "status": "open", "completed_at": None, "due_at": z(DUE), "due_date": None,
            # fire at 10:05 and 10:10 (inside the gap), 10:40 (after it)
            "reminders": [{"before_minutes": 55}, {"before_minutes": 50},
                          {"before_minutes": 20}],
            "recurrence": None, "series_id": None}},
    ]

    async def live() -> list[dict[str, Any]]:
        worker = Proc(settings, "worker", log=tmp_path / "worker.log").start()
        try:
            await publish(settings, events)
            await caught_up(settings, "rekeyer", settings.topics.task_events, transactional=False)
            # Ticks to 10:02, then nothing until 10:30: 10:05 and 10:10 become due 25 and
            # 20 minutes late, beyond the 15-minute catch-up window of reminders.
            await tickproducer.publish_range(settings, T0, T0 + timedelta(minutes=2), 60)
            await tickproducer.publish_range(settings, T0 + timedelta(minutes=30),
                                             T0 + timedelta(minutes=50), 60)
            await caught_up(settings, "timeline", settings.topics.timeline, transactional=True)
        finally:
            worker.kill()
        return await read_json(settings, settings.topics.notifications)

    def fires(notes: list[dict[str, Any]]) -> list[tuple[str, bool]]:
        return sorted((n["fire_at"], n["late"]) for n in notes if n["type"] == "reminder.due")

    before = asyncio.run(live())
    assert fires(before) == [(z(T0 + timedelta(minutes=40)), False)]

    window = ["--from", z(T0), "--to", z(T0 + timedelta(minutes=50))]
    code, dry, err = _backfill(settings, *window, "--dry-run")
    assert code == 0, err
    assert (dry["missing"], dry["emitted"], dry["dry_run"]) == ({"reminder.due": 2}, 0, True)
    assert dry["present"] == 1
    assert fires(asyncio.run(read_json(settings, settings.topics.notifications))) == fires(before)

    code, done, err = _backfill(settings, *window)
    assert code == 0, err
    assert (done["missing"], done["emitted"]) == ({"reminder.due": 2}, 2)
    assert done["missing_ids"] == dry["missing_ids"]
    after = asyncio.run(read_json(settings, settings.topics.notifications))
    assert fires(after) == [(z(T0 + timedelta(minutes=5)), True),
                            (z(T0 + timedelta(minutes=10)), True),
                            (z(T0 + timedelta(minutes=40)), False)]
    ids = [n["notification_id"] for n in after]
    assert len(ids) == len(set(ids))

    code, again, err = _backfill(settings, *window)
    assert code == 0, err
    assert (again["missing"], again["emitted"], again["present"]) == ({}, 0, 3)
    assert len(asyncio.run(read_json(settings, settings.topics.notifications))) == len(after)

    code, _, err = _backfill(settings, "--from", z(T0), "--to", z(T0 + timedelta(hours=5)))
    assert code == 1
    assert "is ahead of the live worker" in err
