"""The state changelog of a timeline partition: the value of each key, and recovery.

Keys (owned by ``state``): ``t|<user>|<task>`` a task or its version marker, ``u|<user>``
a user's settings and last digest, ``w`` the watermark. Values are JSON documents; ``None``
is a tombstone (the key left the state). ``snapshot`` writes the value of one key,
``restore`` loads the latest value of each key in log order into a fresh
``PartitionState`` and has it rebuild what is derived. Values written by earlier versions
still load: a completed task becomes a marker, a marker without ``retired_at`` expires
from its event's ``occurred_at``, a task without ``base`` (its ``fired`` then lists every
instant handled) takes the restored watermark as its base. No IO and no clock here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import orjson

from schemas import UserSettings
from streams.timecore.instants import format_instant, parse_instant
from streams.timeline.planning import DigestFire, SpawnFire
from streams.timeline.record import TaskRecord
from streams.timeline.state import WATERMARK_KEY, PartitionState, TaskState, UserState

__all__ = ["WATERMARK_KEY", "restore", "snapshot"]


def snapshot(state: PartitionState, key: str) -> bytes | None:
    """The changelog value of ``key`` in ``state``, or None for a tombstone."""
    if key == WATERMARK_KEY:
        return orjson.dumps({"watermark": _opt_instant(state.watermark)})
    if key.startswith("u|"):
        user = state.users.get(key[2:])
        return None if user is None else _user_value(user)
    task = state.tasks.get(key)
    return None if task is None else _task_value(task)


def restore(state: PartitionState, entries: Iterable[tuple[str, bytes | None]]) -> None:
    """Load the latest value of each key (``entries`` in log order), then rebuild the index."""
    latest: dict[str, bytes | None] = {}
    for key, value in entries:
        latest[key] = value
    without_base: list[TaskState] = []
    for key, value in latest.items():
        if value is None:
            continue
        data = orjson.loads(value)
        if key == WATERMARK_KEY:
            state.watermark = _read_opt_instant(data["watermark"])
        elif key.startswith("u|"):
            state.users[key[2:]] = _user_state(data)
        elif key.startswith("t|"):
            task = state.tasks[key] = _task_state(key, data)
            if "base" not in data:
                without_base.append(task)
    # A value written before ``base`` lists every instant handled so far in ``fired``:
    # taking the watermark as its base keeps exactly that meaning.
    for task in without_base:
        task.base = state.watermark
    state.reindex()


def _user_value(user: UserState) -> bytes:
    last = user.digest_last
    return orjson.dumps({
        "settings": user.settings.model_dump(mode="json"),
        "digest_last": None if last is None else [last.local_date.isoformat(),
                                                  format_instant(last.fire_at)],
    })


def _user_state(data: dict[str, Any]) -> UserState:
    last = data["digest_last"]
    return UserState(UserSettings.model_validate(data["settings"]),
                     None if last is None else DigestFire(date.fromisoformat(last[0]),
                                                          _instant(last[1])))


def _task_value(task: TaskState) -> bytes:
    return orjson.dumps({
        "user_id": task.user_id, "task_id": task.task_id, "version": task.version,
        "occurred_at": format_instant(task.occurred_at),
        "task": None if task.task is None else task.task.doc(),
        # Written per applied event, and most tasks have neither: no generator for them.
        "fired": sorted(map(format_instant, task.fired)) if task.fired else [],
        "spawned_through": _opt_instant(task.spawned_through),
        "completion_spawns": [_spawn_doc(f) for f in task.completion_spawns.values()]
        if task.completion_spawns else [],
        "retired_at": _opt_instant(task.retired_at),
        "base": _opt_instant(task.base),
    })


def _task_state(key: str, data: dict[str, Any]) -> TaskState:
    user_id = sys.intern(data["user_id"])
    task_id = data["task_id"]
    doc = data["task"]
    task = TaskState(
        user_id, task_id, data["version"], _instant(data["occurred_at"]),
        None if doc is None else TaskRecord.from_doc(doc, user_id=user_id, task_id=task_id),
        frozenset(_instant(at) for at in data["fired"]) if data["fired"] else frozenset(),
        _read_opt_instant(data["spawned_through"]),
        base=_read_opt_instant(data.get("base")), key=key,
    )
    for spawn in data["completion_spawns"]:
        fire = _spawn_fire(spawn)
        if task.completion_spawns is None:
            task.completion_spawns = {}
        task.completion_spawns[fire.occurrence_key] = fire
    if task.task is not None and task.task.status == "completed":
        task.task = None  # written before completed tasks became markers
    if task.task is None:
        task.retired_at = _read_opt_instant(data.get("retired_at")) or task.occurred_at
    return task


def _spawn_doc(fire: SpawnFire) -> dict[str, Any]:
    return {"due_at": _opt_instant(fire.due_at),
            "due_date": None if fire.due_date is None else fire.due_date.isoformat(),
            "due_instant": format_instant(fire.due_instant),
            "fire_at": format_instant(fire.fire_at)}


def _spawn_fire(doc: dict[str, Any]) -> SpawnFire:
    return SpawnFire(_read_opt_instant(doc["due_at"]),
                     None if doc["due_date"] is None else date.fromisoformat(doc["due_date"]),
                     _instant(doc["due_instant"]), _instant(doc["fire_at"]))


def _opt_instant(value: datetime | None) -> str | None:
    return None if value is None else format_instant(value)


def _read_opt_instant(text: str | None) -> datetime | None:
    return None if text is None else _instant(text)


def _instant(text: str) -> datetime:
    return parse_instant(text)
