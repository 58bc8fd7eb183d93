"""Planning: pure decisions about what fires when (DESIGN.md section 4).

Functions of (state, event or tick) → decisions. No IO, no clock: every instant is passed
in, and the identifiers of what fires are functions of what fires, never of when it was
processed, so a replay of the same log produces the same ids.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Protocol, cast
from zoneinfo import ZoneInfo

from schemas import AtReminder, BeforeReminder, DigestTask, Recurrence, UserSettings
from streams.timecore.instants import format_seconds
from streams.timecore.localtime import (
    RFC5545,
    Ambiguous,
    DstPolicy,
    Nonexistent,
    local_date_of,
    local_day_bounds,
    resolve,
    zone,
)
from streams.timecore.recurrence import Skip, next_after_completion, occurrences, parse_rrule

_NAMESPACE = uuid.UUID("6f1c1b8e-3d0a-5c55-9a8e-6d1f4c1e2a77")
_NAMESPACE_SHA1 = hashlib.sha1(_NAMESPACE.bytes, usedforsecurity=False)


class TaskFields(Protocol):
    """What planning reads of a task: ``schemas.Task`` or the state's ``TaskRecord``."""

    @property
    def task_id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def title(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def completed_at(self) -> datetime | None: ...
    @property
    def due_at(self) -> datetime | None: ...
    @property
    def due_date(self) -> date | None: ...
    @property
    def reminders(self) -> Sequence[BeforeReminder | AtReminder]: ...
    @property
    def recurrence(self) -> Recurrence | None: ...
    @property
    def series_id(self) -> str | None: ...


class Timeliness(StrEnum):
    ON_TIME = "on_time"
    LATE = "late"
    MISSED = "missed"


def timeliness(fire_at: datetime, tick_at: datetime, window_s: int | None) -> Timeliness:
    """A fire at ``fire_at`` seen at tick ``tick_at``; ``window_s`` None means unlimited."""
    late_s = (tick_at - fire_at).total_seconds()
    if late_s <= 0:
        return Timeliness.ON_TIME
    if window_s is None or late_s <= window_s:
        return Timeliness.LATE
    return Timeliness.MISSED


def notification_id(kind: str, *parts: str) -> str:
    """A deterministic id: UUIDv5 of the kind and what fires."""
    return _uuid5("|".join((kind, *parts)))


def _uuid5(name: str) -> str:
    # str(uuid.uuid5(_NAMESPACE, name)) without the UUID object, a burst derives one per
    # fire: SHA-1 of namespace and name, the first 16 bytes, version 5, RFC 4122 variant.
    sha = _NAMESPACE_SHA1.copy()
    sha.update(name.encode())
    value = int.from_bytes(sha.digest()[:16])
    value = (value & ~(0xF000 << 64) | (5 << 76)) & ~(0xC000 << 48) | (0x8000 << 48)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def instant_key(value: datetime) -> str:
    return format_seconds(value)


@dataclass(frozen=True, slots=True)
class ReminderFire:
    fire_at: datetime
    reminder: BeforeReminder | AtReminder


def reminder_fires(task: TaskFields, occurred_at: datetime) -> dict[datetime, ReminderFire]:
    """The reminders an open timed task plans, by fire instant.

    A reminder whose instant is at or before the event's ``occurred_at`` is never planned.
    Two reminders landing on the same instant fire once, as the first of them in list order.
    A series row is a template (contract v1.1): its reminders belong to its instances.
    """
    return {at: ReminderFire(at, reminder) for at, reminder in reminder_instants(task, occurred_at)}


def reminder_instants(task: TaskFields, occurred_at: datetime,
                      ) -> list[tuple[datetime, BeforeReminder | AtReminder]]:
    """``reminder_fires`` as (fire instant, reminder) pairs in list order: no dict and no
    ``ReminderFire``, for the burst, which asks once per fire. Hashing a computed aware
    datetime (a dict key) costs more than computing it, and a task mostly has one reminder.
    """
    if task.status != "open" or task.due_at is None or task.recurrence is not None:
        return []
    fires: list[tuple[datetime, BeforeReminder | AtReminder]] = []
    for reminder in task.reminders:
        # type(), not isinstance: pydantic's metaclass makes isinstance slow, and a burst
        # plans one task per fire.
        if type(reminder) is BeforeReminder:
            fire_at = task.due_at - timedelta(minutes=reminder.before_minutes)
        else:
            fire_at = cast(AtReminder, reminder).at
        if fire_at > occurred_at:
            fires.append((fire_at, reminder))
    if len(fires) > 1:  # one fire per instant: the first reminder on it
        unique: dict[datetime, BeforeReminder | AtReminder] = {}
        for at, reminder in fires:
            unique.setdefault(at, reminder)
        fires = list(unique.items())
    return fires


def reminder_id(user_id: str, task_id: str, fire_at: datetime) -> str:
    return notification_id("reminder.due", user_id, task_id, instant_key(fire_at))


# --- daily digests -----------------------------------------------------------------------

DEFAULT_DIGEST_TIME = time(9, 0)


def dst_policy_of(settings: UserSettings) -> DstPolicy:
    if settings.dst_policy is None:
        return RFC5545
    return DstPolicy(Nonexistent(settings.dst_policy.nonexistent),
                     Ambiguous(settings.dst_policy.ambiguous))


@dataclass(frozen=True, slots=True)
class DigestFire:
    local_date: date
    fire_at: datetime


def next_digest(settings: UserSettings, last: DigestFire | None) -> DigestFire | None:
    """The user's next digest: the first fire after the settings' ``occurred_at`` on a local
    date not yet fired (a second fold fire of the last date only with ``ambiguous: both``)."""
    tz = zone(settings.timezone)
    policy = dst_policy_of(settings)
    at = settings.digest_time or DEFAULT_DIGEST_TIME
    day = local_date_of(settings.occurred_at, tz) - timedelta(days=1)
    if last is not None:
        day = max(day, last.local_date)
    for _ in range(800):  # a policy of "skip" can drop a day, never two years of them
        for fire_at in resolve(day, at, tz, policy):
            if fire_at <= settings.occurred_at:
                continue
            if last is not None and (day < last.local_date or fire_at <= last.fire_at or (
                    day == last.local_date and policy.ambiguous is not Ambiguous.BOTH)):
                continue
            return DigestFire(day, fire_at)
        day += timedelta(days=1)
    return None


def digest_id(user_id: str, fire: DigestFire) -> str:
    return notification_id("digest.daily", user_id, fire.local_date.isoformat(),
                           instant_key(fire.fire_at))


def due_instant(task: TaskFields, tz: ZoneInfo) -> datetime | None:
    """When a task is due: ``due_at``, or the start of its local ``due_date``."""
    if task.due_at is not None:
        return task.due_at
    if task.due_date is not None:
        return local_day_bounds(task.due_date, tz)[0]
    return None


@dataclass(frozen=True, slots=True)
class DigestContent:
    """What one digest lists: at most ``DIGEST_MAX_TASKS`` tasks within ``DIGEST_MAX_BYTES``,
    how many more were due that day (``omitted``), and how many are overdue."""

    tasks: list[DigestTask]
    omitted: int
    overdue: int


# A digest stays far below Kafka's default max.message.bytes (1,048,588) and aiokafka's
# max_request_size (1 MiB) whatever the titles: the list stops at whichever cap comes first.
DIGEST_MAX_TASKS = 100
DIGEST_MAX_BYTES = 256 * 1024


def digest_content(tasks: Iterable[TaskFields], local_date: date, tz: ZoneInfo) -> DigestContent:
    """The open tasks due on ``local_date`` (by due instant, task_id), capped, and how many
    are overdue. Series rows are templates (contract v1.1): never listed, never overdue."""
    start, end = local_day_bounds(local_date, tz)
    today: list[tuple[datetime, str, TaskFields]] = []
    overdue = 0
    for task in tasks:
        if task.status != "open" or task.recurrence is not None:
            continue
        due = due_instant(task, tz)
        if due is None:
            continue
        on_day = task.due_date == local_date if task.due_date is not None else start <= due < end
        if on_day:
            today.append((due, task.task_id, task))
        elif due < start:
            overdue += 1
    today.sort(key=lambda item: (item[0], item[1]))
    listed: list[DigestTask] = []
    size = 0
    for _, _, t in today[:DIGEST_MAX_TASKS]:
        item = DigestTask(task_id=t.task_id, title=t.title, due_at=t.due_at,
                          due_date=t.due_date)
        # An upper bound of the item's JSON size: UTF-8 text escapes to at most 6 bytes a
        # character, and the rest (keys, instants, punctuation) stays under 128 bytes.
        size += 6 * (len(t.task_id) + len(t.title)) + 128
        if size > DIGEST_MAX_BYTES:
            break
        listed.append(item)
    return DigestContent(listed, len(today) - len(listed), overdue)


# --- recurrence spawns -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpawnFire:
    """One occurrence of a series to spawn: its due (instant or local date) and fire instant."""

    due_at: datetime | None
    due_date: date | None
    due_instant: datetime  # due_at, or the start of due_date's local day: orders occurrences
    fire_at: datetime

    @property
    def occurrence_key(self) -> str:
        return self.due_date.isoformat() if self.due_date else instant_key(self.due_instant)


def series_start(task: TaskFields, tz: ZoneInfo) -> datetime | None:
    """DTSTART as naive local wall time in ``tz`` (midnight for an all-day series)."""
    if task.due_at is not None:
        return task.due_at.astimezone(tz).replace(tzinfo=None)
    if task.due_date is not None:
        return datetime.combine(task.due_date, time())
    return None


_UTC_ZONE = ZoneInfo("UTC")


def next_spawn(task: TaskFields, tz: ZoneInfo, policy: DstPolicy,
               after: datetime) -> SpawnFire | None:
    """The first occurrence of series ``task`` due strictly after ``after``.

    A timed occurrence is due at its first resolved instant; an all-day one at the start of
    its local day. Either spawns at the start of its local day.
    """
    if task.recurrence is None or task.status != "open":
        return None
    start = series_start(task, tz)
    if start is None:
        return None
    rule = parse_rrule(task.recurrence.rrule)
    skip = Skip(task.recurrence.skip)
    if task.due_date is not None:
        # All-day: dates do not depend on the zone; expand on a fixed zone so ``after`` works.
        bound = local_date_of(after, tz)
        for occ in occurrences(rule, start, _UTC_ZONE, skip=skip,
                               after=datetime.combine(bound - timedelta(days=1), time(),
                                                      tzinfo=UTC)):
            day = occ.local.date()
            begin = local_day_bounds(day, tz)[0]
            if begin > after:
                return SpawnFire(None, day, begin, begin)
        return None
    for occ in occurrences(rule, start, tz, skip=skip, policy=policy, after=after):
        due = occ.instants[0]
        return SpawnFire(due, None, due, local_day_bounds(occ.local.date(), tz)[0])
    return None


def completion_spawn(series: TaskFields, tz: ZoneInfo, policy: DstPolicy,
                     completed_at: datetime) -> SpawnFire | None:
    """Anchor "completion": the instance after one completed at ``completed_at`` is due one
    rule interval after the completion's local date, at the series' time of day."""
    if series.recurrence is None or series.status != "open":
        return None
    start = series_start(series, tz)
    if start is None:
        return None
    rule = parse_rrule(series.recurrence.rrule)
    local = next_after_completion(rule, start, local_date_of(completed_at, tz))
    if rule.until is not None:
        until = rule.until if isinstance(rule.until, date) and not isinstance(
            rule.until, datetime) else rule.until.date()
        if local.date() > until:
            return None
    if series.due_date is not None:
        begin = local_day_bounds(local.date(), tz)[0]
        return SpawnFire(None, local.date(), begin, completed_at)
    instants = resolve(local.date(), local.time(), tz, policy)
    if not instants:
        return None
    return SpawnFire(instants[0], None, instants[0], completed_at)


def spawn_id(user_id: str, series_id: str, fire: SpawnFire) -> str:
    return notification_id("task.spawn", user_id, series_id, fire.occurrence_key)
