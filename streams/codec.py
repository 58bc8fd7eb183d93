"""Bytes ↔ models for the records the worker reads and writes.

Decoding never raises anything but ``InvalidEvent`` (whose reason is safe to log: it holds
field paths, never user text); every invalid record becomes a ``DeadLetter`` carrying the
original bytes (a bounded prefix of them past ``schemas.limits.DEAD_LETTER_VALUE_BYTES``).
A record larger than ``schemas.limits.MAX_RECORD_BYTES`` is refused before it is parsed.
A task event is validated once, where it is applied (``decode_timeline``); re-keying reads
only the user it belongs to (``route_task_event``). No Kafka or PostgreSQL client here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeVar

import orjson
from pydantic import TypeAdapter

from schemas import (
    TASK_EVENT_ADAPTER,
    TIMELINE_ADAPTER,
    DeadLetter,
    Tick,
    TimelineRecord,
    user_id_of,
)
from schemas.events import TaskEvent
from schemas.limits import MAX_ID_CHARS, MAX_RECORD_BYTES
from schemas.wire import WireError, dumps, loads
from streams.errors import InvalidEvent
from streams.timecore.instants import format_instant

__all__ = ["dead_letter", "decode_task_event", "decode_timeline", "dumps", "route_task_event"]

T = TypeVar("T")


def checked_size(value: bytes | None) -> bytes:
    """``value``, or ``InvalidEvent`` when it is missing or over ``MAX_RECORD_BYTES`` (checked
    before any parsing, so a huge record costs nothing)."""
    if value is None:
        raise InvalidEvent("empty record value")
    if len(value) > MAX_RECORD_BYTES:
        raise InvalidEvent(f"record of {len(value)} bytes is over the limit of "
                           f"{MAX_RECORD_BYTES} bytes")
    return value


def _decode(adapter: TypeAdapter[T], value: bytes | None) -> T:
    value = checked_size(value)
    try:
        return loads(adapter, value)
    except WireError as exc:
        raise InvalidEvent(str(exc)) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # A validator that fails in an unplanned way is still this record's fault.
        raise InvalidEvent(f"invalid record ({type(exc).__name__})") from None


def decode_timeline(value: bytes | None) -> TimelineRecord:
    """A timeline record: a tick or a re-keyed task event."""
    return _decode(TIMELINE_ADAPTER, value)


def decode_task_event(value: bytes | None) -> TaskEvent:
    """A record of todo.task-events."""
    return _decode(TASK_EVENT_ADAPTER, value)


_USER_AT_TOP = frozenset({"task.deleted", "user.settings"})


def route_task_event(value: bytes | None) -> bytes:
    """The key a record of todo.task-events is re-keyed by: its ``user_id`` as UTF-8.

    Only what routing needs is read (size, a JSON object, a known ``type``, a ``user_id``
    string of 1 to ``MAX_ID_CHARS`` characters); the rest is validated once, by the timeline
    agent (``decode_timeline``), which dead-letters what fails there. A record that cannot
    be routed is refused with the reason ``decode_task_event`` gives it."""
    value = checked_size(value)
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        document = None
    if type(document) is dict:
        kind = document.get("type")
        holder = (document.get("task") if kind == "task.upserted"
                  else document if kind in _USER_AT_TOP else None)
        if type(holder) is dict:
            user = holder.get("user_id")
            # orjson refuses lone surrogates, so the id always encodes.
            if type(user) is str and 0 < len(user) <= MAX_ID_CHARS:
                return user.encode()
    return user_id_of(decode_task_event(value)).encode()


def encode_tick(tick_at: datetime, *, source: str = "live") -> bytes:
    """A tick record; ``source="range"`` marks an operator's explicit window."""
    return dumps(Tick.model_validate({"type": "tick", "tick_at": tick_at, "source": source}))


def dead_letter(reason: str, *, topic: str, partition: int, offset: int, key: bytes | None,
                value: bytes | None, failed_at: datetime) -> DeadLetter:
    """A dead letter for a record that failed; ``failed_at`` is the record's broker time."""
    return DeadLetter.of(reason=reason, topic=topic, partition=partition, offset=offset,
                         key=key, value=value or b"", failed_at=failed_at)


def tick_refusal(tick: Tick, broker_timestamp_ms: int, max_ahead_s: float) -> str | None:
    """Why a live tick is refused, or None: one wrong clock reading puts it further than
    ``max_ahead_s`` ahead of its record's broker timestamp. Range ticks are an operator's
    explicit choice of time and always pass (docs/contracts.md, time sanity)."""
    if tick.source != "live" or broker_timestamp_ms < 0:
        return None
    broker_at = datetime.fromtimestamp(broker_timestamp_ms / 1000, UTC)
    ahead_s = (tick.tick_at - broker_at).total_seconds()
    if ahead_s <= max_ahead_s:
        return None
    return (f"tick_at: live tick is {ahead_s:.0f} s ahead of the broker time "
            f"{format_instant(broker_at)} (limit {max_ahead_s:.0f} s); "
            "refused: publish a range tick to move time on purpose")

