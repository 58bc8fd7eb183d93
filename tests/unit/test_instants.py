"""streams.timecore.instants: one format, one parse, clear errors at the edges of the range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.errors import InvalidInput
from streams.timecore.instants import format_instant, format_seconds, parse_instant


def test_wire_form_has_z_and_fraction_only_when_needed() -> None:
    at = datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    assert format_instant(at) == "2026-03-08T07:00:00Z"
    assert format_instant(at.replace(microsecond=250_000)) == "2026-03-08T07:00:00.25Z"
    assert format_seconds(at.replace(microsecond=250_000)) == "2026-03-08T07:00:00Z"


def test_other_offsets_are_converted_to_utc() -> None:
    at = datetime(2026, 3, 8, 2, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert format_instant(at) == "2026-03-08T07:00:00Z"
    assert parse_instant("2026-03-08T02:00:00-05:00") == datetime(2026, 3, 8, 7, tzinfo=UTC)


@pytest.mark.parametrize(("text", "reason"), [
    ("2026-03-08T07:00:00", "has no UTC offset"),
    ("yesterday", "is not an RFC 3339 instant"),
    ("0001-01-01T00:30:00+05:00", "out of range once converted to UTC"),
    ("9999-12-31T23:30:00-05:00", "out of range once converted to UTC"),
    ("x" * 10_000, "is not an RFC 3339 instant"),
])
def test_bad_text_is_a_clear_invalid_input(text: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason) as info:
        parse_instant(text)
    assert len(str(info.value)) < 200  # never echoes a huge input back


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.just(UTC)))
def test_round_trip(at: datetime) -> None:
    assert parse_instant(format_instant(at)) == at


def _formatted_by_fields(at: datetime) -> str:
    """The format written out field by field (the implementation before isoformat)."""
    at = at.astimezone(UTC)
    text = (f"{at.year:04d}-{at.month:02d}-{at.day:02d}"
            f"T{at.hour:02d}:{at.minute:02d}:{at.second:02d}")
    return (f"{text}.{at.microsecond:06d}".rstrip("0") if at.microsecond else text) + "Z"


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                               timezone(timedelta(hours=-8))])))
def test_the_wire_form_is_the_field_by_field_form(at: datetime) -> None:
    assert format_instant(at) == _formatted_by_fields(at)
    assert format_seconds(at) == _formatted_by_fields(at.replace(microsecond=0))
