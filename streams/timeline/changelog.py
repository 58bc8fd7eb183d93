"""The state changelog of a timeline partition: the value of each key, and recovery.

Keys (owned by ``state``): ``t|<user>|<task>`` a task or its version marker, ``u|<user>``
a user's settings and last digest, ``w`` the watermark. Values are JSON documents; ``None``
is a tombstone (the key left the state). ``snapshot`` writes the value of one key,
``restore`` loads the values in log order (the latest of each key wins) into a fresh
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

# Distinct instants shared within a restore before the table starts over: bounds its size.
_SHARED_INSTANTS = 4096


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
    """Load each key's value in log order (``entries``, the changelog from its start), then
    rebuild the index.

    Each value is decoded as it comes, a later one replacing it, so that ``entries`` can be
    a stream read while this runs: no list of the partition's records is held meanwhile
    (it doubled the peak memory of a restore). A compacted changelog holds one value per
    key, so few values are decoded in vain.
    """
    without_base: set[str] = set()
    instants: dict[str, datetime] = {}
    for key, value in entries:
        if key == WATERMARK_KEY:
            state.watermark = None if value is None else _read_opt_instant(
                orjson.loads(value)["watermark"])
        elif key.startswith("u|"):
            if value is None:
                state.users.pop(key[2:], None)
            else:
                state.users[key[2:]] = _user_state(orjson.loads(value))
        elif key.startswith("t|"):
            if value is None:
                state.tasks.pop(key, None)
                without_base.discard(key)
                continue
            data = orjson.loads(value)
            state.tasks[key] = _task_state(key, data, instants)
            if "base" in data:
                without_base.discard(key)
            else:
                without_base.add(key)
            if len(instants) > _SHARED_INSTANTS:
                instants.clear()
    # A value written before ``base`` lists every instant handled so far in ``fired``:
    # taking the watermark as its base keeps exactly that meaning.
    for key in without_base:
        state.tasks[key].base = state.watermark
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


def _task_state(key: str, data: dict[str, Any],
                instants: dict[str, datetime] | None = None) -> TaskState:
    user_id = sys.intern(data["user_id"])
    task_id = data["task_id"]
    doc = data["task"]
    shared = {} if instants is None else instants
    base = data.get("base")
    task = TaskState(
        user_id, task_id, data["version"], _shared_instant(data["occurred_at"], shared),
        None if doc is None else TaskRecord.from_doc(doc, user_id=user_id, task_id=task_id),
        frozenset(_instant(at) for at in data["fired"]) if data["fired"] else frozenset(),
        _read_opt_instant(data["spawned_through"]),
        base=None if base is None else _shared_instant(base, shared), key=key,
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


def _shared_instant(text: str, shared: dict[str, datetime]) -> datetime:
    """``text`` parsed, one object per distinct text in ``shared``: a task's ``base`` is
    the watermark it was applied at, so thousands of tasks have the same one (48 bytes
    each, and a parse saved)."""
    at = shared.get(text)
    if at is None:
        at = shared[text] = parse_instant(text)
    return at
