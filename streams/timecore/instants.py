"""Instants as text: the one format and the one parse every layer uses.

Instants are aware datetimes; as text they are RFC 3339 in UTC with ``Z`` (DESIGN.md §3).
``format_instant`` is the wire form (fractional seconds only when non-zero);
``format_seconds`` truncates to the second, for deterministic ids and human output.
``parse_instant`` accepts RFC 3339 / ISO 8601 with an offset and returns UTC; a naive or
malformed text, or one that leaves the representable range once converted to UTC (year 1
with a positive offset, say), is an ``InvalidInput`` whose message names the problem.
Pure: never reads the clock.
"""

from __future__ import annotations

from datetime import UTC, datetime

from streams.errors import InvalidInput

__all__ = ["format_instant", "format_seconds", "parse_instant"]


def format_instant(at: datetime) -> str:
    """``at`` in UTC as RFC 3339 with ``Z``; fractional seconds only when non-zero."""
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    # isoformat (C) pads years to four digits, as strftime's %Y does not; its "+00:00" goes.
    text = at.isoformat()[:-6]
    if at.microsecond:
        return text.rstrip("0") + "Z"
    return text + "Z"


def format_seconds(at: datetime) -> str:
    """``at`` in UTC as RFC 3339 with ``Z``, truncated to the whole second."""
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    return at.isoformat(timespec="seconds")[:-6] + "Z"


def parse_instant(text: str) -> datetime:
    """An aware UTC datetime from RFC 3339 text with an offset (``Z`` or ``±HH:MM``)."""
    try:
        value = datetime.fromisoformat(text if text[-1:] != "z" else text[:-1] + "Z")
    except ValueError:
        raise InvalidInput(f"{text[:40]!r} is not an RFC 3339 instant "
                           "(write it as 2026-03-08T07:00:00Z)") from None
    if value.tzinfo is UTC:  # "Z": the common case, no conversion (restores parse millions)
        return value
    if value.tzinfo is None:
        raise InvalidInput(f"{text[:40]!r} has no UTC offset "
                           "(write it as 2026-03-08T07:00:00Z)")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(f"{text[:40]!r} is out of range once converted to UTC") from None
