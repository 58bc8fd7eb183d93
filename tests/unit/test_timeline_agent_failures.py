"""The worker's timeline agent when firing one key raises, without a broker: that key is
logged by its hash and counted, the tick's other fires and its watermark go out in the same
batch, and nothing is dead-lettered (the tick itself was fine)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from streams.kafka.client import Record
from streams.processes.worker import TimelineAgent
from streams.settings import Settings
from streams.telemetry import metrics
from streams.timeline.state import PartitionState

T0 = datetime(2026, 3, 9, tzinfo=UTC)


def _record(offset: int, doc: dict[str, Any], at: datetime) -> Record:
    return Record("unit.timeline", 0, offset, b"k", orjson.dumps(doc), int(at.timestamp() * 1000))


def _upsert(task_id: str) -> dict[str, Any]:
    return {"type": "task.upserted", "event_id": task_id, "occurred_at": "2026-03-09T00:00:00Z",
            "task": {"task_id": task_id, "user_id": "someone@example.com", "version": 1,
                     "title": f"secret title {task_id}", "status": "open",
                     "due_at": "2026-03-09T12:00:00Z", "reminders": [{"before_minutes": 0}]}}


def test_a_key_whose_firing_raises_is_logged_by_hash_and_the_tick_goes_on(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(app_id="unit")
    agent = TimelineAgent(settings)
    agent.assign(0, [])
    real = PartitionState._fire_reminders

    def flaky(self: PartitionState, task: Any, texts: Any, effects: Any) -> None:
        if task.task_id == "bad":
            raise KeyError("secret title bad")
        real(self, task, texts, effects)

    monkeypatch.setattr(PartitionState, "_fire_reminders", flaky)
    noon = T0 + timedelta(hours=12)
    tick = {"type": "tick", "tick_at": "2026-03-09T12:00:00Z", "source": "live"}
    held = metrics.FIRES_HELD.labels("task")
    before = held._value.get()
    with caplog.at_level(logging.ERROR, logger="cronorch.worker"):
        outputs = agent.process(0, [_record(0, _upsert("good"), T0),
                                    _record(1, _upsert("bad"), T0), _record(2, tick, noon)])
    topics = settings.topics
    fires = [orjson.loads(o.value or b"") for o in outputs if o.topic == topics.notifications]
    assert [f["task_id"] for f in fires] == ["good"]
    assert [o for o in outputs if o.topic == topics.dead_letters] == []
    assert agent.states[0].watermark == noon
    assert held._value.get() == before + 1
    assert agent.states[0].failures == []  # reported once
    [line] = [r for r in caplog.records if r.getMessage().startswith("firing failed")]
    text = repr(line.__dict__)
    assert "someone@example.com" not in text and "secret" not in text
    logged = line.__dict__["fields"]
    assert (logged["kind"], logged["error_class"], len(logged["key_sha256"])) == (
        "task", "KeyError", 16)
