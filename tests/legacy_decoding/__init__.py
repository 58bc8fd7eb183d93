"""The input decoders as they were before issue 9's decoding work (commit 1e4ecda): the
reference the differential property test (tests/unit/test_decoding_differential.py) and
``bench/decode.py`` hold the current decoders to.

``values``, ``events``, ``ticks`` and ``wire`` are verbatim copies of ``schemas/`` at that
commit (imports pointed here); ``decode_task_event``/``decode_timeline`` are the codec's
decoders of that commit. Their models are other classes than ``schemas``' (compare decoded
values by type name and ``model_dump``). Test code only: nothing in ``streams`` or
``schemas`` may import it.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import TypeAdapter

from schemas.limits import MAX_RECORD_BYTES
from streams.errors import InvalidEvent
from tests.legacy_decoding.events import TASK_EVENT_ADAPTER
from tests.legacy_decoding.ticks import TIMELINE_ADAPTER
from tests.legacy_decoding.wire import WireError, loads

T = TypeVar("T")


def _decode(adapter: TypeAdapter[T], value: bytes | None) -> T:
    if value is None:
        raise InvalidEvent("empty record value")
    if len(value) > MAX_RECORD_BYTES:
        raise InvalidEvent(f"record of {len(value)} bytes is over the limit of "
                           f"{MAX_RECORD_BYTES} bytes")
    try:
        return loads(adapter, value)
    except WireError as exc:
        raise InvalidEvent(str(exc)) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise InvalidEvent(f"invalid record ({type(exc).__name__})") from None


def decode_task_event(value: bytes | None) -> Any:
    """A record of todo.task-events, decoded as before issue 9's decoding work."""
    return _decode(TASK_EVENT_ADAPTER, value)


def decode_timeline(value: bytes | None) -> Any:
    """A timeline record, decoded as before issue 9's decoding work."""
    return _decode(TIMELINE_ADAPTER, value)
