"""Per-partition state of the timeline agent and its due index.

A ``PartitionState`` holds the users and tasks of one timeline partition, the watermark
(the last processed tick) and what has already fired (reminder instants per task, implied
by the watermark and the version's ``base`` (``TaskState``); the last digest per user; how
far each series has spawned). The due index is derived: it is rebuilt
from that state when a partition is restored, never persisted. Applying an event or a tick
mutates the state and returns ``Effects``: the records to emit, the changelog keys that
changed and the counts for the run summary. The bytes of each changelog key and recovery
from them are ``changelog``'s. No IO and no clock here.

State stays bounded (docs/contracts.md, "State retention"): a deleted or completed task
shrinks to a version marker that rejects stale upserts for ``retention_s`` of log time (the
watermark), then leaves the state and the changelog (a tombstone); fired reminder instants
older than the reminder catch-up window are dropped when a version is applied, since a tick
can no longer emit them.

Over 400 lines on purpose: applying events, the due index, firing and retention all
mutate the same per-partition structures under one invariant (what is pending is what the
plan holds minus what the watermark and ``fired`` imply); the changelog bytes and the
records' encoding already live apart (``changelog``, ``record``, ``outputs``).
"""

from __future__ import annotations

import heapq
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from schemas import (
    AtReminder,
    BeforeReminder,
    DigestDaily,
    Occurrence,
    SpawnTemplate,
    Task,
    TaskDeleted,
    TaskSpawn,
    TaskUpserted,
    UserSettings,
)
from streams.timecore.instants import format_instant, format_seconds
from streams.timecore.localtime import RFC5545, DstPolicy, zone
from streams.timeline.outputs import ReminderFired
from streams.timeline.planning import (
    DigestFire,
    ReminderFire,
    SpawnFire,
    Timeliness,
    completion_spawn,
    digest_content,
    digest_id,
    dst_policy_of,
    next_digest,
    next_spawn,
    notification_id,
    reminder_fires,
    reminder_instants,
    spawn_id,
    timeliness,
)
from streams.timeline.record import TaskRecord

BUCKET_S = 60
WATERMARK_KEY = "w"
_UTC = ZoneInfo("UTC")
_NOTHING: frozenset[datetime] = frozenset()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_BUCKET_US = BUCKET_S * 1_000_000


def _fire_at(item: tuple[datetime, BeforeReminder | AtReminder]) -> datetime:
    return item[0]


def _micros(at: datetime) -> int:
    """``at`` as whole microseconds since the epoch: exact, unlike ``timestamp()``."""
    return (at - _EPOCH) // _MICROSECOND


@dataclass(slots=True)
class TaskState:
    """One task's version and what of it has fired, relative to the watermark.

    What has fired is implied by the watermark rather than recorded per fire, so a tick
    writes no task to the changelog: ``base`` is the watermark when this version was
    applied, ``fired`` only the instants at or before ``base`` already handled (carried
    over from earlier versions). A planned instant X has been handled at watermark W iff
    X ≤ W and (X > base, or X in ``fired``, or W > base: the first tick after ``base``
    handles every planned instant up to it, late or missed).
    """

    user_id: str
    task_id: str
    version: int
    occurred_at: datetime
    task: TaskRecord | None  # None once deleted or completed: a marker rejecting stale upserts
    fired: frozenset[datetime] = _NOTHING
    spawned_through: datetime | None = None  # due instant of the last occurrence spawned
    # Pending completion spawns by occurrence key; None, not an empty dict, when there are
    # none (a million tasks hold none).
    completion_spawns: dict[str, SpawnFire] | None = None
    retired_at: datetime | None = None  # log time the marker was written; expires from it
    base: datetime | None = None  # the watermark when this version was applied
    key: str = ""  # t|<user>|<task>: pass the state's own string, so it is held once

    def __post_init__(self) -> None:
        if not self.key:
            self.key = f"t|{self.user_id}|{self.task_id}"

    def planned(self) -> dict[datetime, ReminderFire]:
        return {} if self.task is None else reminder_fires(self.task, self.occurred_at)

    def pending(self, watermark: datetime | None) -> dict[datetime, ReminderFire]:
        """The planned reminders not yet handled at ``watermark``."""
        planned = self.planned()
        if watermark is None or watermark == self.base:
            return {at: fire for at, fire in planned.items() if at not in self.fired}
        return {at: fire for at, fire in planned.items() if at > watermark}

    def due(self, watermark: datetime | None,
            tick_at: datetime) -> list[tuple[datetime, BeforeReminder | AtReminder]]:
        """``pending(watermark)`` up to ``tick_at`` as (instant, reminder), in fire order,
        in one pass: a burst asks this once per fire."""
        if self.task is None:
            return []
        planned = reminder_instants(self.task, self.occurred_at)
        if watermark is None or watermark == self.base:
            fired = self.fired
            due = [(at, reminder) for at, reminder in planned
                   if at <= tick_at and (not fired or at not in fired)]
        else:
            due = [(at, reminder) for at, reminder in planned if watermark < at <= tick_at]
        if len(due) > 1:
            due.sort(key=_fire_at)
        return due

    def handled(self, watermark: datetime | None) -> frozenset[datetime]:
        """Every instant handled at ``watermark``, this version's and earlier ones' (what a
        next version applied at ``watermark`` carries over as its ``fired``)."""
        if watermark is None or watermark == self.base:
            return self.fired
        past = [at for at in self.planned() if at <= watermark]
        return self.fired.union(past) if past else self.fired

    def next_spawn(self, tz: ZoneInfo, policy: DstPolicy,
                   horizon: datetime | None) -> SpawnFire | None:
        """The next occurrence to spawn, due after ``horizon`` too (the catch-up bound)."""
        task = self.task
        if task is None or task.recurrence is None:
            return None
        if task.recurrence.anchor == "completion" and self.spawned_through is not None:
            return None  # after the first instance, only completions spawn
        after = self.occurred_at
        for bound in (self.spawned_through, horizon):
            if bound is not None and bound > after:
                after = bound
        return next_spawn(task, tz, policy, after)

    def prune_fired(self, before: datetime) -> None:
        """Forget fired instants before ``before`` that the current version no longer plans.

        A tick after ``before`` could only count such an instant as missed, never emit it,
        should a later version plan it again; instants the current plan still holds stay,
        or the next tick would take them for pending. So the set is bounded by the plan
        plus the catch-up window, across any number of versions.
        """
        # Most tasks have fired nothing: no generator for them (one per applied event).
        if self.fired and any(at < before for at in self.fired):
            planned = self.planned()
            self.fired = frozenset(at for at in self.fired if at >= before or at in planned)


@dataclass
class UserState:
    settings: UserSettings
    digest_last: DigestFire | None = None


@dataclass
class Effects:
    """What applying one record decided: outputs to emit, changelog keys touched, counts."""

    outputs: list[ReminderFired | DigestDaily | TaskSpawn] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Effects) -> None:
        # Once per record: a plain loop, not Counter.update (its Mapping check is an ABC's).
        self.outputs.extend(other.outputs)
        self.dirty |= other.dirty
        counts = self.counts
        for name, n in other.counts.items():
            counts[name] += n


class DueIndex:
    """Pending fires bucketed by minute; a tick costs O(fires due), not O(tasks).

    A bucket maps each key to its fire instants in that minute as microseconds past the
    minute (one int, or a frozenset of them when a key has several): no tuple or datetime
    per entry, and the common whole-minute offset 0 is Python's shared small int.
    Entries are invalidated lazily: a re-plan adds new entries and leaves old ones, which
    are checked against the task's current plan when their bucket comes due. A task that is
    deleted or completed discards its current entries, so its memory goes with its marker.
    """

    def __init__(self) -> None:
        self._buckets: dict[int, dict[str, int | frozenset[int]]] = {}
        self._heap: list[int] = []
        self._count = 0  # entries held (re-planned ones included until their bucket is due)

    def add(self, key: str, fire_at: datetime) -> None:
        bucket, offset = divmod(_micros(fire_at), _BUCKET_US)
        entries = self._buckets.get(bucket)
        if entries is None:
            entries = self._buckets[bucket] = {}
            heapq.heappush(self._heap, bucket)
        held = entries.get(key)
        if held is None:
            entries[key] = offset
        elif isinstance(held, int):
            if held == offset:
                return
            entries[key] = frozenset((held, offset))
        elif offset in held:
            return
        else:
            entries[key] = held | {offset}
        self._count += 1

    def discard(self, key: str, fire_at: datetime) -> None:
        # An emptied bucket stays until its minute comes: the heap holds its number.
        bucket, offset = divmod(_micros(fire_at), _BUCKET_US)
        entries = self._buckets.get(bucket)
        held = None if entries is None else entries.get(key)
        if entries is None or held is None:
            return
        if isinstance(held, int):
            if held != offset:
                return
            del entries[key]
        elif offset not in held:
            return
        else:
            rest = held - {offset}
            entries[key] = next(iter(rest)) if len(rest) == 1 else rest
        self._count -= 1

    def pop_due(self, tick_at: datetime) -> Iterator[str]:
        """Remove the entries with ``fire_at <= tick_at``; yield their keys in (fire_at, key)
        order (a key once per entry)."""
        last, last_offset = divmod(_micros(tick_at), _BUCKET_US)
        due: list[tuple[int, str]] = []
        while self._heap and self._heap[0] <= last:
            bucket = heapq.heappop(self._heap)
            entries = self._buckets.pop(bucket)
            start = bucket * _BUCKET_US
            if bucket < last:
                for key, held in entries.items():
                    if isinstance(held, int):
                        due.append((start + held, key))
                    else:
                        due.extend((start + offset, key) for offset in held)
                continue
            later: dict[str, int | frozenset[int]] = {}
            for key, held in entries.items():
                if isinstance(held, int):
                    if held <= last_offset:
                        due.append((start + held, key))
                    else:
                        later[key] = held
                    continue
                kept = [offset for offset in held if offset > last_offset]
                due.extend((start + offset, key) for offset in held if offset <= last_offset)
                if kept:
                    later[key] = kept[0] if len(kept) == 1 else frozenset(kept)
            if later:
                self._buckets[bucket] = later
                heapq.heappush(self._heap, bucket)
            break
        self._count -= len(due)
        due.sort()
        for _, key in due:
            yield key

    def __len__(self) -> int:
        return self._count


class _Texts:
    """The instants of one tick as text, each formatted once: a burst fires many reminders
    on few distinct instants (fire instants, and the due instants of tasks due together)."""

    def __init__(self, tick_at: datetime) -> None:
        self.tick_at = tick_at
        self.tick_text = format_instant(tick_at)
        self._ids: dict[datetime, str] = {}
        self._wire: dict[datetime, str] = {}

    def wire(self, at: datetime) -> str:
        """``at``'s wire form (``format_instant``)."""
        text = self._wire.get(at)
        if text is None:
            text = self._wire[at] = format_instant(at)
        return text

    def key(self, at: datetime) -> str:
        """``at``'s form in ids (``planning.instant_key``)."""
        text = self._ids.get(at)
        if text is None:
            text = self._ids[at] = format_seconds(at)
        return text


SPAWN_CATCHUP_S = 7 * 24 * 3600
RETENTION_S = 7 * 24 * 3600


class PartitionState:
    def __init__(self, partition: int, *, reminder_catchup_s: int,
                 digest_catchup_s: int = 3 * 3600, spawn_catchup_s: int = SPAWN_CATCHUP_S,
                 retention_s: int = RETENTION_S) -> None:
        self.partition = partition
        self.reminder_catchup_s = reminder_catchup_s
        self.digest_catchup_s = digest_catchup_s
        self.spawn_catchup = timedelta(seconds=spawn_catchup_s)
        self.retention = timedelta(seconds=retention_s)
        self.watermark: datetime | None = None
        self.tasks: dict[str, TaskState] = {}
        self.users: dict[str, UserState] = {}
        self.user_tasks: dict[str, set[str]] = {}
        self.index = DueIndex()
        self._expiring: list[tuple[datetime, str]] = []  # (marker expiry, key), a heap
        # (key, error class) of keys whose firing raised: read and cleared by the caller.
        self.failures: list[tuple[str, str]] = []

    def _zone(self, user_id: str) -> tuple[ZoneInfo, DstPolicy]:
        user = self.users.get(user_id)
        if user is None:
            return _UTC, RFC5545
        return zone(user.settings.timezone), dst_policy_of(user.settings)

    # --- events ------------------------------------------------------------------------

    def apply(self, event: TaskUpserted | TaskDeleted | UserSettings) -> Effects:
        effects = Effects()
        if isinstance(event, UserSettings):
            current = self.users.get(event.user_id)
            if current is not None and event.version <= current.settings.version:
                effects.counts["stale"] += 1
                return effects
            self.users[event.user_id] = UserState(
                event, current.digest_last if current is not None else None)
            effects.dirty.add(f"u|{event.user_id}")
            effects.counts["applied"] += 1
            self._index_user(event.user_id, with_tasks=True)
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
        # One copy of each string per task (and of each user id per partition) however
        # many versions and index entries refer to it.
        if current_task is not None:
            key, user_id, task_id = current_task.key, current_task.user_id, current_task.task_id
        else:
            user_id = sys.intern(user_id)
        retired = task is None or task.status == "completed"
        if retired and current_task is not None:
            self._unindex_task(current_task)
        record = None if retired or task is None else TaskRecord.of(task, user_id=user_id,
                                                                     task_id=task_id)
        state = TaskState(user_id, task_id, version, event.occurred_at, record,
                          base=self.watermark, key=key)
        if current_task is not None:
            state.fired = current_task.handled(self.watermark)
            state.spawned_through = current_task.spawned_through
            if not retired:  # completing or deleting a series stops its spawns
                state.completion_spawns = current_task.completion_spawns
        if self.watermark is not None:
            state.prune_fired(self.watermark - timedelta(seconds=self.reminder_catchup_s))
        if retired:
            state.retired_at = self.watermark or event.occurred_at
            self._expire_later(state)
        self.tasks[key] = state
        self.user_tasks.setdefault(user_id, set()).add(key)
        self._index_task(state)
        effects.dirty.add(key)
        effects.counts["applied"] += 1
        was_open = current_task is None or (current_task.task is not None
                                            and current_task.task.status == "open")
        if task is not None and task.status == "completed" and was_open and task.series_id:
            self._completed_instance(task, event.occurred_at, effects)
        return effects

    def _completed_instance(self, instance: Task, occurred_at: datetime,
                            effects: Effects) -> None:
        """Anchor "completion": plan the next instance of the instance's series."""
        series = self.tasks.get(f"t|{instance.user_id}|{instance.series_id}")
        if series is None or series.task is None or series.task.recurrence is None:
            return
        if series.task.recurrence.anchor != "completion":
            return
        tz, policy = self._zone(instance.user_id)
        fire = completion_spawn(series.task, tz, policy, instance.completed_at or occurred_at)
        if fire is None or (series.spawned_through is not None
                            and fire.due_instant <= series.spawned_through):
            return
        if series.completion_spawns is None:
            series.completion_spawns = {}
        series.completion_spawns[fire.occurrence_key] = fire
        self.index.add(series.key, fire.fire_at)
        effects.dirty.add(series.key)

    def _expire_later(self, state: TaskState) -> None:
        assert state.retired_at is not None
        heapq.heappush(self._expiring, (state.retired_at + self.retention, state.key))

    def _spawn_horizon(self, now: datetime | None) -> datetime | None:
        return None if now is None else now - self.spawn_catchup

    def _index_task(self, state: TaskState) -> None:
        for fire_at in state.pending(self.watermark):
            self.index.add(state.key, fire_at)
        tz, policy = self._zone(state.user_id)
        # Early entries are harmless (checked when due); the horizon only ever moves later.
        spawn = state.next_spawn(tz, policy, self._spawn_horizon(self.watermark))
        if spawn is not None:
            self.index.add(state.key, spawn.fire_at)
        for fire in (state.completion_spawns or {}).values():
            self.index.add(state.key, fire.fire_at)

    def _unindex_task(self, state: TaskState) -> None:
        for fire_at in state.pending(self.watermark):
            self.index.discard(state.key, fire_at)
        tz, policy = self._zone(state.user_id)
        spawn = state.next_spawn(tz, policy, self._spawn_horizon(self.watermark))
        if spawn is not None:
            self.index.discard(state.key, spawn.fire_at)
        for fire in (state.completion_spawns or {}).values():
            self.index.discard(state.key, fire.fire_at)

    def _index_user(self, user_id: str, *, with_tasks: bool) -> None:
        user = self.users[user_id]
        fire = next_digest(user.settings, user.digest_last)
        if fire is not None:
            self.index.add(f"u|{user_id}", fire.fire_at)
        if with_tasks:  # a zone or DST policy change moves every local-time fire
            for key in self.user_tasks.get(user_id, ()):
                self._index_task(self.tasks[key])

    # --- ticks -------------------------------------------------------------------------

    def tick(self, tick_at: datetime) -> Effects:
        effects = Effects()
        if self.watermark is not None and tick_at <= self.watermark:
            effects.counts["ticks_ignored"] += 1
            return effects
        self._expire(tick_at, effects)
        seen: set[str] = set()
        texts = _Texts(tick_at)
        for key in self.index.pop_due(tick_at):
            if key in seen:
                continue
            seen.add(key)
            try:
                if key.startswith("u|"):
                    self._fire_digests(key[2:], tick_at, effects)
                else:
                    state = self.tasks.get(key)
                    if state is not None and state.task is not None:
                        self._fire_reminders(state, texts, effects)
                        if state.task.recurrence is not None or state.completion_spawns:
                            self._fire_spawns(state, tick_at, effects)
            except MemoryError:
                raise
            except Exception as exc:  # one key's failure, not the tick's
                self._held(key, exc, effects)
        self.watermark = tick_at
        effects.dirty.add(WATERMARK_KEY)
        effects.counts["ticks"] += 1
        return effects

    def _held(self, key: str, exc: Exception, effects: Effects) -> None:
        """A key whose firing raised (a planning bug, or a value no validation foresaw):
        what it decided before the error stands (its outputs and its changes, written to
        the changelog), its later fires are held until the task or user changes (it is not
        indexed again), and the other keys of the tick and the watermark go on. The failure
        is kept for the caller to log and count (``failures``): an error in one user's data
        never costs the others their fires."""
        effects.dirty.add(key)
        effects.counts["fire_failures"] += 1
        self.failures.append((key, type(exc).__name__))

    def _expire(self, tick_at: datetime, effects: Effects) -> None:
        """Markers past their retention leave the state; the changelog gets a tombstone."""
        while self._expiring and self._expiring[0][0] <= tick_at:
            expires_at, key = heapq.heappop(self._expiring)
            state = self.tasks.get(key)
            if state is None or state.task is not None or state.retired_at is None \
                    or state.retired_at + self.retention != expires_at:
                continue  # re-opened, or retired again later: that entry decides
            del self.tasks[key]
            keys = self.user_tasks.get(state.user_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.user_tasks[state.user_id]
            effects.dirty.add(key)
            effects.counts["tombstones"] += 1

    def _fire_reminders(self, state: TaskState, texts: _Texts, effects: Effects) -> None:
        # Nothing of the task changes: the watermark moving to the tick is the record that
        # these fired (``TaskState``), and it is written once for the whole tick.
        task = state.task
        assert task is not None
        tick_at = texts.tick_at
        for fire_at, reminder in state.due(self.watermark, tick_at):
            verdict = timeliness(fire_at, tick_at, self.reminder_catchup_s)
            if verdict is Timeliness.MISSED:
                effects.counts["missed"] += 1
                continue
            assert task.due_at is not None
            effects.outputs.append(ReminderFired(
                notification_id=notification_id(
                    "reminder.due", state.user_id, state.task_id, texts.key(fire_at)),
                user_id=state.user_id, task_id=state.task_id, task_version=task.version,
                title=task.title, due_at=task.due_at, reminder=reminder,
                fire_at=fire_at, tick_at=tick_at, late=verdict is Timeliness.LATE,
                fire_text=texts.wire(fire_at), tick_text=texts.tick_text,
                due_text=texts.wire(task.due_at),
                at_text=texts.wire(reminder.at) if isinstance(reminder, AtReminder) else None,
            ))
            effects.counts["notified"] += 1

    def _fire_spawns(self, state: TaskState, tick_at: datetime, effects: Effects) -> None:
        task = state.task
        assert task is not None
        tz, policy = self._zone(state.user_id)
        pending = state.completion_spawns or {}
        due: list[SpawnFire] = [f for f in pending.values() if f.fire_at <= tick_at]
        for fire in due:
            del pending[fire.occurrence_key]
        if not pending:
            state.completion_spawns = None
        # Catch-up is bounded: occurrences due before the horizon are never enumerated, and
        # one that starts its day more than spawn_catchup_s before the tick is missed.
        horizon = self._spawn_horizon(tick_at)
        while (nxt := state.next_spawn(tz, policy, horizon)) is not None \
                and nxt.fire_at <= tick_at:
            if timeliness(nxt.fire_at, tick_at, int(self.spawn_catchup.total_seconds())) \
                    is Timeliness.MISSED:
                effects.counts["missed_spawns"] += 1
                horizon = nxt.due_instant
                continue
            due.append(nxt)
            state.spawned_through = nxt.due_instant
        for fire in sorted(due, key=lambda f: f.due_instant):
            if state.spawned_through is None or fire.due_instant > state.spawned_through:
                state.spawned_through = fire.due_instant
            effects.outputs.append(TaskSpawn(
                type="task.spawn", spawn_id=spawn_id(state.user_id, state.task_id, fire),
                user_id=state.user_id, series_id=state.task_id,
                occurrence=Occurrence(due_at=fire.due_at, due_date=fire.due_date),
                fire_at=fire.fire_at, tick_at=tick_at, late=tick_at > fire.fire_at,
                template=SpawnTemplate(title=task.title, reminders=list(task.reminders)),
            ))
            effects.counts["spawned"] += 1
        if due:
            effects.dirty.add(state.key)
        upcoming = state.next_spawn(tz, policy, horizon)
        if upcoming is not None:
            self.index.add(state.key, upcoming.fire_at)

    def _fire_digests(self, user_id: str, tick_at: datetime, effects: Effects) -> None:
        user = self.users.get(user_id)
        if user is None:
            return
        tz = zone(user.settings.timezone)
        fired = False
        while (fire := next_digest(user.settings, user.digest_last)) is not None \
                and fire.fire_at <= tick_at:
            user.digest_last = fire
            fired = True
            verdict = timeliness(fire.fire_at, tick_at, self.digest_catchup_s)
            if verdict is Timeliness.MISSED:
                effects.counts["missed_digests"] += 1
                continue
            tasks = [self.tasks[k].task for k in self.user_tasks.get(user_id, ())]
            content = digest_content((t for t in tasks if t is not None), fire.local_date, tz)
            if not content.tasks and not content.omitted:
                effects.counts["digests_empty"] += 1
                continue
            effects.outputs.append(DigestDaily(
                type="digest.daily", notification_id=digest_id(user_id, fire),
                user_id=user_id, timezone=user.settings.timezone, local_date=fire.local_date,
                fire_at=fire.fire_at, tick_at=tick_at, late=verdict is Timeliness.LATE,
                tasks=content.tasks, overdue_count=content.overdue,
                omitted_count=content.omitted,
            ))
            effects.counts["digests"] += 1
        if fired:
            effects.dirty.add(f"u|{user_id}")
        if fire is not None:
            self.index.add(f"u|{user_id}", fire.fire_at)

    # --- recovery ----------------------------------------------------------------------

    def reindex(self) -> None:
        """Rebuild what is derived (the due index, the marker expiry queue) after the
        users, tasks and watermark were loaded from the changelog (``changelog.restore``)."""
        for user_id in self.users:
            self._index_user(user_id, with_tasks=False)
        for state in self.tasks.values():
            self.user_tasks.setdefault(state.user_id, set()).add(state.key)
            self._index_task(state)
            if state.task is None and state.retired_at is not None:
                self._expire_later(state)
