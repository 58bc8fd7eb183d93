"""Changelog values written by main's code before ``base`` (commit 1e4ecda: every fired
instant listed in ``fired``) restore into the same behaviour.

``tests/unit/data/changelog_1e4ecda.json`` was written by running ``prefix`` and
``continuation`` below on commit 1e4ecda's ``streams`` (this module as of commit d5d24a3,
``python -m tests.unit.test_timeline_changelog_compat OUT`` with that tree first on
``sys.path``): the changelog left after the prefix, and every output and count of the
continuation run on the state restored from it. The prefix leaves a late reminder applied
but not yet ticked, fired instants edited away, a marker holding fired instants; the
continuation ticks, brings an edited-away instant back and re-opens the marker.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from schemas import TaskDeleted, TaskUpserted, UserSettings
from streams import codec
from streams.timeline.changelog import restore, snapshot
from streams.timeline.outputs import ReminderFired
from streams.timeline.state import PartitionState

DATA = Path(__file__).parent / "data" / "changelog_1e4ecda.json"
def _wire(out: Any) -> bytes:
    return out.wire() if isinstance(out, ReminderFired) else codec.dumps(out)


T0 = datetime(2026, 3, 9, 8, 0, tzinfo=UTC)
M = timedelta(minutes=1)


def _upsert(task_id: str, version: int, at: datetime, due: datetime,
            reminders: list[dict[str, Any]], status: str = "open") -> TaskUpserted:
    return TaskUpserted.model_validate({
        "type": "task.upserted", "event_id": f"{task_id}{version}", "occurred_at": at,
        "task": {"task_id": task_id, "user_id": "u", "version": version, "title": task_id,
                 "status": status, "due_at": due, "reminders": reminders}})


def _before(*minutes: int) -> list[dict[str, Any]]:
    return [{"before_minutes": m} for m in minutes]


def _at(*instants: datetime) -> list[dict[str, Any]]:
    return [{"at": a} for a in instants]


def _new_state() -> PartitionState:
    return PartitionState(0, reminder_catchup_s=900, retention_s=3 * 3600)


def _run(state: PartitionState, steps: list[Any]) -> tuple[list[Any], dict[str, int]]:
    outputs: list[Any] = []
    counts: dict[str, int] = {}
    for step in steps:
        effects = state.tick(step) if isinstance(step, datetime) else state.apply(step)
        outputs += [orjson.loads(_wire(o)) for o in effects.outputs]
        for name, n in effects.counts.items():
            counts[name] = counts.get(name, 0) + n
    return outputs, counts


def prefix() -> list[Any]:
    return [
        UserSettings.model_validate({"type": "user.settings", "event_id": "s",
                                     "occurred_at": T0, "user_id": "u", "version": 1,
                                     "timezone": "UTC", "digest_time": None}),
        T0,
        _upsert("a", 1, T0, T0 + 60 * M, _before(60, 45, 30, 0)),
        _upsert("c", 1, T0, T0 + 40 * M, _before(35, 10)),
        _upsert("d", 1, T0, T0 + 20 * M, _before(15, 0)),
        T0 + 5 * M,
        T0 + 16 * M,
        _upsert("c", 2, T0 + 16 * M, T0 + 40 * M, _before(10)),
        TaskDeleted.model_validate({"type": "task.deleted", "event_id": "d2",
                                    "occurred_at": T0 + 16 * M, "task_id": "d",
                                    "user_id": "u", "version": 2}),
        # Applied after the watermark with an instant before it: late, not yet ticked.
        _upsert("b", 1, T0 + 10 * M, T0 + 30 * M, _at(T0 + 12 * M, T0 + 20 * M)),
        _upsert("e", 1, T0 + 16 * M, T0 + 2 * 60 * M,
                _at(T0 + 60 * M, T0 + 60 * M + timedelta(milliseconds=500))),
    ]


def continuation() -> list[Any]:
    return [
        T0 + 17 * M,
        # Edited back (an event that occurred before the watermark): T0+5 fired already.
        _upsert("c", 3, T0 + M, T0 + 40 * M, _before(35, 10)),
        T0 + 31 * M,
        # Re-opened with one instant fired before, one late within the window, one ahead.
        _upsert("d", 3, T0 + 2 * M, T0 + 50 * M, _at(T0 + 5 * M, T0 + 28 * M, T0 + 40 * M)),
        _upsert("a", 2, T0 + 31 * M, T0 + 70 * M, _before(40, 10)),
        T0 + 32 * M,
        T0 + 45 * M,
        T0 + 61 * M,
        _upsert("c", 4, T0 + M, T0 + 40 * M, _before(35, 10, 5)),
        T0 + 3 * 60 * M,
        T0 + 26 * 60 * M,
    ]


def _document() -> dict[str, Any]:
    state = _new_state()
    _run(state, prefix())
    keys = ["w", "u|u", *sorted(state.tasks)]
    changelog = [[k, None if (v := snapshot(state, k)) is None else v.decode()] for k in keys]
    restored = _new_state()
    restore(restored, [(k, None if v is None else v.encode()) for k, v in changelog])
    outputs, counts = _run(restored, continuation())
    return {"changelog": changelog, "outputs": outputs, "counts": counts}


def _old() -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(DATA.read_bytes())
    return data


def test_the_fixture_is_of_the_old_form() -> None:
    old = _old()
    docs = {k: orjson.loads(v) for k, v in old["changelog"] if k.startswith("t|")}
    assert all("base" not in d for d in docs.values())
    assert docs["t|u|c"]["fired"] == ["2026-03-09T08:05:00Z"]  # edited away, kept
    assert docs["t|u|d"]["task"] is None and docs["t|u|d"]["fired"]
    assert {o["task_id"] for o in old["outputs"] if o["type"] == "reminder.due"} >= {"a", "b"}


def test_old_values_restore_into_the_same_outputs_and_counts() -> None:
    old = _old()
    restored = _new_state()
    restore(restored, [(k, None if v is None else v.encode()) for k, v in old["changelog"]])
    outputs, counts = _run(restored, continuation())
    assert outputs == old["outputs"]
    assert counts == old["counts"]


def test_new_values_give_the_outputs_main_gave() -> None:
    new = _document()
    assert new["outputs"] == _old()["outputs"]
    assert all("base" in orjson.loads(v) for k, v in new["changelog"] if k.startswith("t|"))


if __name__ == "__main__":
    Path(sys.argv[1]).write_bytes(orjson.dumps(_document(), option=orjson.OPT_INDENT_2))
