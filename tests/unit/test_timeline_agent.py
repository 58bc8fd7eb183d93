"""The timeline agent on the in-memory twin: the reminder scenario against the independent
model, and recovery from the changelog at arbitrary points yielding identical output, also
while markers expire into tombstones and fired sets are pruned."""

from __future__ import annotations

import random
from datetime import datetime

import orjson
import pytest

from streams.kafka.client import Record
from streams.settings import Settings
from streams.testing.memory import MemoryPipeline
from streams.timeline.changelog import snapshot
from tests.scenario import STEP, Scenario, build


def _values(events: list[dict[str, object] | bytes]) -> list[tuple[bytes | None, bytes]]:
    out: list[tuple[bytes | None, bytes]] = []
    for e in events:
        if isinstance(e, bytes):
            out.append((b"raw", e))
        else:
            user = e["task"]["user_id"] if "task" in e else e["user_id"]  # type: ignore[index]
            out.append((str(user).encode(), orjson.dumps(e)))
    return out


def _run(sc: Scenario, crash_every: int = 0, seed: int = 1,
         settings: Settings | None = None) -> MemoryPipeline:
    pipe = MemoryPipeline(settings or Settings(), partitions=6)
    rng = random.Random(seed)
    for events, (start, end) in ((sc.phase_a, sc.ticks_a), (sc.phase_b, sc.ticks_b)):
        pipe.publish(_values(events))
        at: datetime = start
        n = 0
        while at <= end:
            pipe.tick(at)
            n += 1
            if crash_every and n % crash_every == 0:
                pipe.crash(rng.randrange(6))
            at += STEP
    return pipe


def _notifications(pipe: MemoryPipeline, kind: str = "reminder.due") -> dict[str, object]:
    topics = pipe.settings.topics
    docs = [orjson.loads(o.value or b"") for o in pipe.outputs
            if o.topic in (topics.notifications, topics.task_commands)]
    chosen = [d for d in docs if kind == "*" or d["type"] == kind]
    by_id = {d.get("notification_id") or d["spawn_id"]: d for d in chosen}
    assert len(by_id) == len(chosen), "duplicate ids"
    return by_id


def test_reminders_equal_the_model() -> None:
    sc = build()
    got = _notifications(_run(sc))
    assert got == sc.expected().expected


@pytest.mark.parametrize("crash_every", [7, 31])
def test_restoring_from_the_changelog_changes_nothing(crash_every: int) -> None:
    sc = build(seed=3, tasks=300)
    crashed, clean = _run(sc, crash_every), _run(sc)
    assert _notifications(crashed, "*") == _notifications(clean, "*")
    assert any(v["type"] == "digest.daily" for v in _notifications(clean, "*").values())


def _latest(changelog: list[Record]) -> dict[bytes, bytes | None]:
    latest: dict[bytes, bytes | None] = {}
    for record in changelog:
        assert record.key is not None
        latest[record.key] = record.value
    return latest


@pytest.mark.parametrize("crash_every", [5, 23])
def test_restoring_while_markers_expire_changes_nothing(crash_every: int) -> None:
    """Deleted and completed tasks (phase B) expire one hour of ticks later: crashes before,
    during and after their tombstones give the same outputs, state and changelog."""
    settings = Settings(state_retention_s=3600)
    sc = build(seed=5, tasks=300)
    crashed, clean = _run(sc, crash_every, settings=settings), _run(sc, settings=settings)
    assert _notifications(crashed, "*") == _notifications(clean, "*")
    for p in range(6):
        a, b = crashed.agent.states[p], clean.agent.states[p]
        assert a.tasks.keys() == b.tasks.keys() and a.users.keys() == b.users.keys()
        assert {k: snapshot(a, k) for k in a.tasks} == {k: snapshot(b, k) for k in b.tasks}
        assert _latest(crashed.changelogs[p]) == _latest(clean.changelogs[p])
    # Every deleted or completed task left: a tombstone is the last word of its key.
    gone = {f"t|{e['user_id'] if 'user_id' in e else e['task']['user_id']}|"
            f"{e['task_id'] if 'task_id' in e else e['task']['task_id']}".encode()
            for e in sc.phase_b if isinstance(e, dict) and (
                e["type"] == "task.deleted" or e["task"]["status"] == "completed")}
    assert len(gone) >= 100
    latest = {k: v for p in range(6) for k, v in _latest(clean.changelogs[p]).items()}
    assert all(latest[k] is None for k in gone)
    assert sum(len(s.tasks) for s in clean.agent.states.values()) == 300 + 60 - len(gone)


def test_poison_goes_to_dead_letters() -> None:
    sc = build(tasks=50)
    pipe = _run(sc)
    letters = [o for o in pipe.outputs if o.topic == pipe.settings.topics.dead_letters]
    assert len(letters) == sc.poison_count
