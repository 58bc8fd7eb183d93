"""Per-partition state of the timeline agent, its due index, and its changelog form.

A ``PartitionState`` holds the users and tasks of one timeline partition, the watermark
(the last processed tick) and what has already fired. The due index is derived: it is
rebuilt from the tasks when a partition is restored, never persisted. Applying an event or
a tick mutates the state and returns ``Effects``: the records to emit, the changelog keys
that changed and the counts for the run summary. No IO and no clock here.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from pydantic import BaseModel

from schemas import ReminderDue, Task, TaskDeleted, TaskUpserted, UserSettings
from schemas.values import format_instant
from streams.planning import (
    ReminderFire,
    Timeliness,
    reminder_fires,
    reminder_id,
    timeliness,
)

BUCKET_S = 60
WATERMARK_KEY = "w"


@dataclass
class TaskState:
    user_id: str
    task_id: str
    version: int
    occurred_at: datetime
    task: Task | None  # None once deleted: the version stays to reject stale upserts
    fired: set[datetime] = field(default_factory=set)

    @property
    def key(self) -> str:
        return f"t|{self.user_id}|{self.task_id}"

    def pending(self) -> dict[datetime, ReminderFire]:
        if self.task is None:
            return {}
        planned = reminder_fires(self.task, self.occurred_at)
        return {at: fire for at, fire in planned.items() if at not in self.fired}


@dataclass
class Effects:
    """What applying one record decided: outputs to emit, changelog keys touched, counts."""

    outputs: list[BaseModel] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Effects) -> None:
        self.outputs.extend(other.outputs)
        self.dirty |= other.dirty
        self.counts.update(other.counts)


class DueIndex:
    """Pending fires bucketed by minute; a tick costs O(fires due), not O(tasks).

    Entries are invalidated lazily: a re-plan adds new entries and leaves old ones, which
    are checked against the task's current plan when their bucket comes due.
    """

    def __init__(self) -> None:
        self._buckets: dict[int, set[tuple[str, datetime]]] = {}
        self._heap: list[int] = []

    def add(self, key: str, fire_at: datetime) -> None:
        bucket = int(fire_at.timestamp()) // BUCKET_S
        entries = self._buckets.get(bucket)
        if entries is None:
            entries = self._buckets[bucket] = set()
            heapq.heappush(self._heap, bucket)
        entries.add((key, fire_at))

    def pop_due(self, tick_at: datetime) -> Iterator[tuple[str, datetime]]:
        """Remove and yield entries with ``fire_at <= tick_at``, in (fire_at, key) order."""
        last = int(tick_at.timestamp()) // BUCKET_S
        due: list[tuple[datetime, str]] = []
        while self._heap and self._heap[0] <= last:
            bucket = heapq.heappop(self._heap)
            entries = self._buckets.pop(bucket)
            later = {(k, at) for k, at in entries if at > tick_at}
            due.extend((at, k) for k, at in entries if at <= tick_at)
            if later:
                self._buckets[bucket] = later
                heapq.heappush(self._heap, bucket)
                break
        for at, key in sorted(due):
            yield key, at

    def __len__(self) -> int:
        return sum(len(v) for v in self._buckets.values())


class PartitionState:
    def __init__(self, partition: int, *, reminder_catchup_s: int) -> None:
        self.partition = partition
        self.reminder_catchup_s = reminder_catchup_s
        self.watermark: datetime | None = None
        self.tasks: dict[str, TaskState] = {}
        self.users: dict[str, UserSettings] = {}
        self.index = DueIndex()

    # --- events ------------------------------------------------------------------------

    def apply(self, event: TaskUpserted | TaskDeleted | UserSettings) -> Effects:
        effects = Effects()
        if isinstance(event, UserSettings):
            current = self.users.get(event.user_id)
            if current is not None and event.version <= current.version:
                effects.counts["stale"] += 1
                return effects
            self.users[event.user_id] = event
            effects.dirty.add(f"u|{event.user_id}")
            effects.counts["applied"] += 1
            return effects
        if isinstance(event, TaskUpserted):
            user_id, task_id, version = event.task.user_id, event.task.task_id, event.task.version
            task: Task | None = event.task
        else:
            user_id, task_id, version, task = event.user_id, event.task_id, event.version, None
        key = f"t|{user_id}|{task_id}"
        current_task = self.tasks.get(key)
        if current_task is not None and version <= current_task.version:
            effects.counts["stale"] += 1
            return effects
        state = TaskState(user_id, task_id, version, event.occurred_at, task,
                          fired=current_task.fired if current_task else set())
        self.tasks[key] = state
        self._index(state)
        effects.dirty.add(key)
        effects.counts["applied"] += 1
        return effects

    def _index(self, state: TaskState) -> None:
        for fire_at in state.pending():
            self.index.add(state.key, fire_at)

    # --- ticks -------------------------------------------------------------------------

    def tick(self, tick_at: datetime) -> Effects:
        effects = Effects()
        if self.watermark is not None and tick_at <= self.watermark:
            effects.counts["ticks_ignored"] += 1
            return effects
        for key, fire_at in self.index.pop_due(tick_at):
            state = self.tasks.get(key)
            if state is None or state.task is None:
                continue
            fire = state.pending().get(fire_at)
            if fire is None:
                continue  # re-planned, completed, deleted or already fired
            state.fired.add(fire_at)
            effects.dirty.add(key)
            verdict = timeliness(fire_at, tick_at, self.reminder_catchup_s)
            if verdict is Timeliness.MISSED:
                effects.counts["missed"] += 1
                continue
            task = state.task
            assert task.due_at is not None
            effects.outputs.append(ReminderDue(
                type="reminder.due",
                notification_id=reminder_id(state.user_id, state.task_id, fire_at),
                user_id=state.user_id, task_id=state.task_id, task_version=task.version,
                title=task.title, due_at=task.due_at, reminder=fire.reminder,
                fire_at=fire_at, tick_at=tick_at, late=verdict is Timeliness.LATE,
            ))
            effects.counts["notified"] += 1
        self.watermark = tick_at
        effects.dirty.add(WATERMARK_KEY)
        effects.counts["ticks"] += 1
        return effects

    # --- changelog ---------------------------------------------------------------------

    def snapshot(self, key: str) -> bytes | None:
        """The changelog value of ``key``, or None for a tombstone."""
        if key == WATERMARK_KEY:
            wm = None if self.watermark is None else format_instant(self.watermark)
            return orjson.dumps({"watermark": wm})
        if key.startswith("u|"):
            user = self.users.get(key[2:])
            return None if user is None else orjson.dumps(user.model_dump(mode="json"))
        state = self.tasks.get(key)
        if state is None:
            return None
        return orjson.dumps({
            "user_id": state.user_id, "task_id": state.task_id, "version": state.version,
            "occurred_at": format_instant(state.occurred_at),
            "task": None if state.task is None else state.task.model_dump(mode="json"),
            "fired": sorted(format_instant(at) for at in state.fired),
        })

    def restore(self, entries: Iterable[tuple[str, bytes | None]]) -> None:
        """Load the latest value of each changelog key (in log order), then rebuild the index."""
        latest: dict[str, bytes | None] = {}
        for key, value in entries:
            latest[key] = value
        for key, value in latest.items():
            if value is None:
                continue
            data = orjson.loads(value)
            if key == WATERMARK_KEY:
                wm = data["watermark"]
                self.watermark = None if wm is None else _instant(wm)
            elif key.startswith("u|"):
                self.users[key[2:]] = UserSettings.model_validate(data)
            elif key.startswith("t|"):
                self.tasks[key] = TaskState(
                    data["user_id"], data["task_id"], data["version"],
                    _instant(data["occurred_at"]),
                    None if data["task"] is None else Task.model_validate(data["task"]),
                    {_instant(at) for at in data["fired"]},
                )
        for state in self.tasks.values():
            self._index(state)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
