"""``changelog.restore`` reads values as they come (a stream, not a list held whole): the
latest value of each key wins whatever came before it — a tombstone then a new value, a
value without ``base`` then one with it, the watermark written after the tasks — exactly as
when only the latest values were decoded. Expected values from docs/contracts.md ("State
retention"): a task without ``base`` takes the restored watermark as its base."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from schemas import TaskUpserted, UserSettings
from streams.timeline.changelog import WATERMARK_KEY, restore, snapshot
from streams.timeline.state import PartitionState

T0 = datetime(2026, 3, 9, tzinfo=UTC)


def _upsert(task_id: str, version: int, at: datetime) -> TaskUpserted:
    return TaskUpserted.model_validate({
        "type": "task.upserted", "event_id": f"{task_id}-{version}", "occurred_at": T0,
        "task": {"task_id": task_id, "user_id": "u", "version": version, "title": task_id,
                 "status": "open", "due_at": at + timedelta(hours=1),
                 "reminders": [{"at": at}]}})


def _values(task_id: str, version: int, at: datetime) -> list[tuple[str, bytes | None]]:
    state = PartitionState(0, reminder_catchup_s=900)
    state.apply(UserSettings.model_validate({
        "type": "user.settings", "event_id": "s", "occurred_at": T0, "user_id": "u",
        "version": 1, "timezone": "UTC", "digest_time": "08:00"}))
    dirty = state.apply(_upsert(task_id, version, at)).dirty
    return [(key, snapshot(state, key)) for key in sorted(dirty)]


def _restored(entries: list[tuple[str, bytes | None]]) -> PartitionState:
    state = PartitionState(0, reminder_catchup_s=900)
    restore(state, iter(entries))  # an iterator: read once, as a stream is
    return state


def test_the_latest_value_of_each_key_wins() -> None:
    later = T0 + timedelta(days=2)
    v1 = _values("a", 1, T0 + timedelta(days=1))
    v2 = _values("a", 2, later)
    state = _restored([*v1, ("t|u|a", None), *v2])
    assert state.tasks["t|u|a"].version == 2
    assert list(state.tasks["t|u|a"].pending(state.watermark)) == [later]
    assert _restored([*v1, ("t|u|a", None)]).tasks == {}
    assert _restored([*v1, ("u|u", None)]).users == {}


def test_a_value_without_base_takes_the_watermark_read_after_it() -> None:
    watermark = T0 + timedelta(hours=1)
    key, value = next((k, v) for k, v in _values("a", 1, T0 + timedelta(days=1))
                      if k.startswith("t|"))
    assert value is not None
    old = orjson.loads(value)
    del old["base"]  # written before ``base`` existed
    mark = (WATERMARK_KEY, orjson.dumps({"watermark": "2026-03-09T01:00:00Z"}))
    state = _restored([(key, orjson.dumps(old)), mark])
    assert state.watermark == watermark and state.tasks[key].base == watermark
    # A later value with its own base replaces the old one, base included.
    new = orjson.loads(value)
    new["base"] = "2026-03-09T00:30:00Z"
    state = _restored([(key, orjson.dumps(old)), (key, orjson.dumps(new)), mark])
    assert state.tasks[key].base == T0 + timedelta(minutes=30)
