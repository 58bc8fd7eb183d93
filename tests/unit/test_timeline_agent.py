"""The timeline agent on the in-memory twin: the reminder scenario against the independent
model, and recovery from the changelog at arbitrary points yielding identical output."""

from __future__ import annotations

import random
from datetime import datetime

import orjson
import pytest

from streams.settings import Settings
from streams.testing.memory import MemoryPipeline
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


def _run(sc: Scenario, crash_every: int = 0, seed: int = 1) -> MemoryPipeline:
    pipe = MemoryPipeline(Settings(), partitions=6)
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
    docs = [orjson.loads(o.value or b"") for o in pipe.outputs
            if o.topic == pipe.settings.topics.notifications]
    chosen = [d for d in docs if kind == "*" or d["type"] == kind]
    by_id = {d["notification_id"]: d for d in chosen}
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


def test_poison_goes_to_dead_letters() -> None:
    sc = build(tasks=50)
    pipe = _run(sc)
    letters = [o for o in pipe.outputs if o.topic == pipe.settings.topics.dead_letters]
    assert len(letters) == sc.poison_count
