"""PartitionState, contract v1.1 and bounded state: series rows are templates, digests cap
their list, spawn catch-up has a horizon, deleted and completed tasks shrink to version
markers that expire into tombstones, fired sets stay small. Expected values are written
from DESIGN.md section 4 and docs/contracts.md, not from the code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from schemas import DigestDaily, TaskDeleted, TaskSpawn, TaskUpserted, UserSettings
from streams.timeline.changelog import restore, snapshot
from streams.timeline.outputs import ReminderFired
from streams.timeline.state import PartitionState

T0 = datetime(2026, 3, 9, tzinfo=UTC)  # a Monday; the user is in UTC
MINUTE = timedelta(minutes=1)


def _state(**kwargs: Any) -> PartitionState:
    state = PartitionState(0, reminder_catchup_s=900, **kwargs)
    state.apply(UserSettings.model_validate({
        "type": "user.settings", "event_id": "s", "occurred_at": T0, "user_id": "u",
        "version": 1, "timezone": "UTC", "digest_time": "08:00"}))
    return state


def _upsert(task_id: str, at: datetime, version: int = 1, **task: Any) -> TaskUpserted:
    doc = {"task_id": task_id, "user_id": "u", "version": version, "title": task_id,
           "status": "open", "due_at": T0 + timedelta(hours=12), "reminders": [], **task}
    return TaskUpserted.model_validate({"type": "task.upserted", "event_id": f"{task_id}-{version}",
                                        "occurred_at": at, "task": doc})


def _delete(task_id: str, at: datetime, version: int) -> TaskDeleted:
    return TaskDeleted.model_validate({"type": "task.deleted", "event_id": f"d-{task_id}",
                                       "occurred_at": at, "task_id": task_id, "user_id": "u",
                                       "version": version})


def _ticks(state: PartitionState, start: datetime, end: datetime,
           step: timedelta = MINUTE) -> list[Any]:
    outputs: list[Any] = []
    at = start
    while at <= end:
        outputs += state.tick(at).outputs
        at += step
    return outputs


DAILY = {"rrule": "FREQ=DAILY", "anchor": "due", "skip": "omit"}


def test_a_series_row_is_a_template_never_listed_overdue_or_reminded() -> None:
    state = _state()
    state.apply(_upsert("series", T0, recurrence=DAILY, reminders=[{"before_minutes": 30}]))
    state.apply(_upsert("plain", T0))
    state.apply(_upsert("instance", T0, series_id="series", reminders=[{"before_minutes": 30}]))
    out = _ticks(state, T0 + MINUTE, T0 + timedelta(days=1, hours=9))
    reminders = [o for o in out if isinstance(o, ReminderFired)]
    digests = [o for o in out if isinstance(o, DigestDaily)]
    assert [r.task_id for r in reminders] == ["instance"]
    assert [[t.task_id for t in d.tasks] for d in digests] == [["instance", "plain"]]
    assert digests[0].overdue_count == 0 and digests[0].omitted_count == 0
    # The series spawned its first two occurrences (the instances are not sent back here);
    # on a later day the two open tasks of the first are overdue, the series is not.
    assert [o.occurrence.due_at for o in out if isinstance(o, TaskSpawn)] == [
        T0 + timedelta(hours=12), T0 + timedelta(days=1, hours=12)]
    state.apply(_upsert("tuesday", T0 + timedelta(days=1, hours=10),
                        due_at=T0 + timedelta(days=2, hours=12)))
    [digest] = [o for o in _ticks(state, T0 + timedelta(days=2), T0 + timedelta(days=2, hours=9))
                if isinstance(o, DigestDaily)]
    assert [t.task_id for t in digest.tasks] == ["tuesday"] and digest.overdue_count == 2


def test_a_digest_lists_at_most_100_tasks_and_counts_the_rest() -> None:
    state = _state()
    for n in range(150):
        state.apply(_upsert(f"t{n:03d}", T0))
    [digest] = [o for o in _ticks(state, T0 + MINUTE, T0 + timedelta(hours=9))
                if isinstance(o, DigestDaily)]
    assert [t.task_id for t in digest.tasks] == [f"t{n:03d}" for n in range(100)]
    assert digest.omitted_count == 50


def test_a_digest_of_huge_titles_stays_far_below_a_megabyte() -> None:
    state = _state()
    for n in range(40):
        event = _upsert(f"t{n:03d}", T0)
        # Past any input limit on purpose: the cap holds whatever the titles.
        huge = event.task.model_copy(update={"title": "\u0001" * 20_000})
        state.apply(event.model_copy(update={"task": huge}))
    [digest] = [o for o in _ticks(state, T0 + MINUTE, T0 + timedelta(hours=9))
                if isinstance(o, DigestDaily)]
    encoded = orjson.dumps(digest.model_dump(mode="json"))
    assert len(encoded) < 512 * 1024
    assert len(digest.tasks) == 2 and digest.omitted_count == 38


def test_a_series_dated_years_back_spawns_from_a_bounded_horizon() -> None:
    state = _state()
    long_ago = datetime(2016, 3, 9, 7, 0, tzinfo=UTC)
    state.apply(_upsert("series", long_ago, recurrence=DAILY, due_at=long_ago))
    effects = state.tick(T0 + timedelta(hours=1))
    spawns = [o for o in effects.outputs if isinstance(o, TaskSpawn)]
    # Spawn catch-up is 7 days: occurrences whose day began at most 7 days before the tick.
    days = [(T0 - timedelta(days=6)).date() + timedelta(days=i) for i in range(7)]
    assert [s.occurrence.due_at for s in spawns] == [
        datetime.combine(d, long_ago.timetz()) for d in days]
    assert all(s.late for s in spawns)
    assert effects.counts["missed_spawns"] <= 2
    nxt = [o for o in _ticks(state, T0 + timedelta(hours=2), T0 + timedelta(days=1, hours=1))
           if isinstance(o, TaskSpawn)]
    assert [s.occurrence.due_at for s in nxt] == [T0 + timedelta(days=1, hours=7)]


def test_a_deleted_task_rejects_stale_upserts_until_its_marker_expires() -> None:
    state = _state(retention_s=3600)
    state.tick(T0)
    state.apply(_upsert("t", T0, reminders=[{"before_minutes": 60}]))
    assert state.apply(_delete("t", T0, version=2)).dirty == {"t|u|t"}
    marker = state.tasks["t|u|t"]
    assert marker.task is None and marker.retired_at == T0
    assert orjson.loads(snapshot(state, "t|u|t") or b"")["retired_at"] == "2026-03-09T00:00:00Z"
    assert state.apply(_upsert("t", T0, version=2)).counts["stale"] == 1
    effects = state.tick(T0 + timedelta(minutes=59))
    assert "t|u|t" in state.tasks and effects.counts["tombstones"] == 0
    effects = state.tick(T0 + timedelta(hours=1))
    assert effects.counts["tombstones"] == 1 and "t|u|t" in effects.dirty
    assert snapshot(state, "t|u|t") is None and "t|u|t" not in state.tasks
    assert len(state.index) == 1  # the user's next digest; the reminder left with the task
    assert "u" not in state.user_tasks
    # After the retention a stale version is news again: the documented trade.
    assert state.apply(_upsert("t", T0, version=2)).counts["applied"] == 1


def test_a_completed_task_is_a_marker_and_expires_after_a_restore() -> None:
    state = _state(retention_s=3600)
    state.tick(T0)
    state.apply(_upsert("t", T0, status="completed", completed_at=T0))
    assert state.tasks["t|u|t"].task is None
    restored = PartitionState(0, reminder_catchup_s=900, retention_s=3600)
    restore(restored, [(k, snapshot(state, k)) for k in ("w", "u|u", "t|u|t")])
    assert restored.tasks["t|u|t"].retired_at == T0
    assert restored.apply(_upsert("t", T0)).counts["stale"] == 1
    assert restored.tick(T0 + timedelta(hours=1)).counts["tombstones"] == 1
    assert restored.tasks == {}


def test_changelog_values_written_before_markers_restore_as_markers() -> None:
    old = {"user_id": "u", "task_id": "t", "version": 3, "occurred_at": "2026-03-09T00:00:00Z",
           "task": None, "fired": [], "spawned_through": None, "completion_spawns": []}
    done = {**old, "task_id": "d", "task": {
        "task_id": "d", "user_id": "u", "version": 3, "title": "x", "status": "completed",
        "completed_at": "2026-03-09T00:00:00Z", "due_at": None, "due_date": "2026-03-09",
        "reminders": [], "recurrence": None, "series_id": None}}
    state = PartitionState(0, reminder_catchup_s=900, retention_s=60)
    restore(state, [("t|u|t", orjson.dumps(old)), ("t|u|d", orjson.dumps(done))])
    assert all(s.task is None and s.retired_at == T0 for s in state.tasks.values())
    assert state.tick(T0 + MINUTE).counts["tombstones"] == 2


def test_fired_sets_stay_small_across_many_versions() -> None:
    state = _state()
    at = T0
    for version in range(1, 201):
        due = at + timedelta(minutes=30)
        state.apply(_upsert("t", at, version=version, due_at=due,
                            reminders=[{"before_minutes": 10}, {"before_minutes": 0}]))
        state.tick(due)
        at = due
    assert len(state.tasks["t|u|t"].fired) <= 4


def test_a_tick_past_the_horizon_spawns_nothing_twice_across_a_restore() -> None:
    state = _state()
    long_ago = datetime(2020, 1, 1, 9, 0, tzinfo=UTC)
    state.apply(_upsert("series", long_ago, recurrence=DAILY, due_at=long_ago,
                        due_date=None))
    first = [o.spawn_id for o in state.tick(T0).outputs]
    restored = PartitionState(0, reminder_catchup_s=900)
    restore(restored, [(k, snapshot(state, k)) for k in ("w", "u|u", "t|u|series")])
    again = [o.spawn_id for o in _ticks(restored, T0 + MINUTE, T0 + timedelta(hours=23))]
    # The day that began exactly 7 days before the tick is inside the window: 8 days.
    assert len(first) == 8 and again == []


def test_a_key_whose_firing_raises_costs_no_other_key_its_fires(monkeypatch: Any) -> None:
    """One task's firing raising (a planning bug, a value no validation foresaw) must not
    cost the other tasks due on the same tick their fires, nor stop the watermark: before
    this, the tick raised after the due keys were taken from the index, so every fire of
    the partition due on that tick was lost. The failing key is reported, its later fires
    are held, and it fires again once it changes."""
    state = _state()
    due = T0 + timedelta(hours=12)
    for task_id in ("a-good", "b-bad", "c-good"):
        state.apply(_upsert(task_id, T0, reminders=[{"before_minutes": 30}]))
    real = PartitionState._fire_reminders

    def flaky(self: PartitionState, task: Any, texts: Any, effects: Any) -> None:
        real(self, task, texts, effects)  # what it decided before the error stands
        if task.task_id == "b-bad":
            raise ValueError("a planning bug")

    monkeypatch.setattr(PartitionState, "_fire_reminders", flaky)
    effects = state.tick(due - timedelta(minutes=30))
    fired = sorted(o.task_id for o in effects.outputs if isinstance(o, ReminderFired))
    assert fired == ["a-good", "b-bad", "c-good"]
    assert state.watermark == due - timedelta(minutes=30)
    assert state.failures == [("t|u|b-bad", "ValueError")]
    assert effects.counts["fire_failures"] == 1
    assert "t|u|b-bad" in effects.dirty
    monkeypatch.setattr(PartitionState, "_fire_reminders", real)
    state.failures.clear()
    # The next ticks go on; a new version of the held task plans it again.
    state.apply(_upsert("b-bad", T0, version=2, reminders=[{"before_minutes": 10}]))
    later = _ticks(state, due - timedelta(minutes=29), due)
    assert [o.task_id for o in later if isinstance(o, ReminderFired)] == ["b-bad"]
    assert state.failures == []


def test_a_failing_key_is_held_even_mid_digest_and_the_others_fire() -> None:
    """A user whose digest raises (here: a zone that vanished from the tz database after it
    was validated) is held; the tasks due on the same tick fire."""
    state = _state()
    state.apply(_upsert("t", T0, reminders=[{"before_minutes": 0}],
                        due_at=T0 + timedelta(hours=8)))
    state.users["u"].settings.__dict__["timezone"] = "Not/AZone"
    effects = state.tick(T0 + timedelta(hours=8))
    assert [o.task_id for o in effects.outputs if isinstance(o, ReminderFired)] == ["t"]
    assert [o for o in effects.outputs if isinstance(o, DigestDaily)] == []
    assert state.failures == [("u|u", "InvalidSchedule")]
    assert state.watermark == T0 + timedelta(hours=8)
