"""Properties of the timeline state against the tests' independent reminder model
(tests/model.py): for any log of upserts (edits moving reminders into the past, away and
back), deletions, re-opens and ticks, cut into any batches, with the partition restored
from its changelog after any batch, the reminders emitted are exactly the model's, each
once, and a tick writes no task to the changelog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas import TaskDeleted, TaskUpserted
from streams import codec
from streams.timeline.changelog import restore, snapshot
from streams.timeline.outputs import ReminderFired
from streams.timeline.state import WATERMARK_KEY, DueIndex, PartitionState
from tests.model import ReminderModel


def _wire(out: Any) -> bytes:
    return out.wire() if isinstance(out, ReminderFired) else codec.dumps(out)


T0 = datetime(2026, 3, 9, 8, 0, tzinfo=UTC)
M = timedelta(minutes=1)
TASKS = ("a", "b")


def _z(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


# A coarse grid of instants, so that versions, ticks and reminders collide often.
reminder = st.one_of(
    st.builds(lambda m: {"before_minutes": m}, st.sampled_from([0, 10])),
    st.builds(lambda m: {"at": _z(T0 + m * M)}, st.sampled_from([15, 30, 45])),
)
occurred = st.sampled_from([-20, -10, -5, -5, 0, 0, 5])  # minutes from the watermark
upsert = st.tuples(st.just("upsert"), st.sampled_from(TASKS), occurred,
                   st.sampled_from([30, 45]),  # due_at, minutes after T0
                   st.lists(reminder, min_size=1, max_size=3), st.booleans())
delete = st.tuples(st.just("delete"), st.sampled_from(TASKS), occurred)
tick = st.tuples(st.just("tick"), st.sampled_from([-5, 0, 1, 5, 5, 10, 15, 20]))
step = st.tuples(st.one_of(upsert, upsert, upsert, delete, tick, tick, tick, tick),
                 st.booleans(),   # a batch (transaction) ends after this step
                 st.booleans())   # ... and the partition is restored from its changelog


def _events(steps: list[Any]) -> list[dict[str, Any] | datetime]:
    """The log: event documents and ticks, with versions and instants made concrete."""
    versions = dict.fromkeys(TASKS, 0)
    now = T0
    log: list[dict[str, Any] | datetime] = []
    for (op, *args), _, _ in steps:
        if op == "tick":
            at = now + args[0] * M
            now = max(now, at)
            log.append(at)
            continue
        task_id, occurred = args[0], _z(now + args[1] * M)
        versions[task_id] += 1
        if op == "delete":
            log.append({"type": "task.deleted", "event_id": f"e{len(log)}",
                        "occurred_at": occurred, "task_id": task_id, "user_id": "u",
                        "version": versions[task_id]})
            continue
        due, reminders, completed = args[2], args[3], args[4] and len(args[3]) == 3
        log.append({"type": "task.upserted", "event_id": f"e{len(log)}",
                    "occurred_at": occurred, "task": {
                        "task_id": task_id, "user_id": "u", "version": versions[task_id],
                        "title": f"{task_id}{versions[task_id]}",
                        "status": "completed" if completed else "open",
                        "completed_at": occurred if completed else None,
                        "due_at": _z(T0 + due * M), "reminders": reminders}})
    return log


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=12, max_size=50))
# An edit arriving after its reminder fired, whose event occurred before that instant.
@example([(("upsert", "a", 0, 30, [{"before_minutes": 0}], False), False, False),
          (("tick", 30), False, False),
          (("upsert", "a", -10, 30, [{"before_minutes": 0}], False), True, True),
          (("tick", 1), True, False)])
def test_reminders_equal_the_model_across_batches_and_restores(steps: list[Any]) -> None:
    model = ReminderModel()
    state = PartitionState(0, reminder_catchup_s=900)
    changelog: list[tuple[str, bytes | None]] = []
    dirty: set[str] = set()
    emitted: list[dict[str, Any]] = []
    for item, (_, end_batch, crash) in zip(_events(steps), steps, strict=True):
        if isinstance(item, datetime):
            model.tick(item)
            effects = state.tick(item)
            assert effects.dirty <= {WATERMARK_KEY}  # no task rewritten by a tick
        else:
            model.event(item)
            event = (TaskUpserted if item["type"] == "task.upserted" else TaskDeleted)
            effects = state.apply(event.model_validate(item))
        emitted += [orjson.loads(_wire(o)) for o in effects.outputs]
        dirty |= effects.dirty
        if end_batch:
            changelog += [(k, snapshot(state, k)) for k in sorted(dirty)]
            dirty = set()
            if crash:
                state = PartitionState(0, reminder_catchup_s=900)
                restore(state, changelog)
    by_id = {o["notification_id"]: orjson.loads(orjson.dumps(o)) for o in emitted}
    assert len(by_id) == len(emitted), "a reminder fired twice"
    assert by_id == model.expected


index_op = st.tuples(st.sampled_from(["add", "add", "discard", "pop"]), st.sampled_from("pqr"),
                     st.integers(0, 3 * 60 * 1000))  # milliseconds after T0


@settings(max_examples=300, deadline=None)
@given(st.lists(index_op, max_size=60))
def test_the_due_index_holds_what_a_plain_set_holds(ops: list[tuple[str, str, int]]) -> None:
    index, plain = DueIndex(), set()
    for op, key, ms in ops:
        at = T0 + timedelta(milliseconds=ms)
        if op == "add":
            index.add(key, at)
            plain.add((at, key))
        elif op == "discard":
            index.discard(key, at)
            plain.discard((at, key))
        else:
            due = sorted(entry for entry in plain if entry[0] <= at)
            assert list(index.pop_due(at)) == [k for _, k in due]
            plain -= set(due)
        assert len(index) == len(plain)
