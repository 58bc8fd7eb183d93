"""DST resolution: named examples for every policy in zones with different DST shapes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest

from streams.errors import InvalidSchedule
from streams.timecore.localtime import (
    Ambiguous,
    DstPolicy,
    Nonexistent,
    gap_length,
    local_date_of,
    local_day_bounds,
    resolve,
    zone,
)

SF, GE, SK = Nonexistent.SHIFT_FORWARD, Nonexistent.GAP_EDGE, Nonexistent.SKIP
FIRST, SECOND, BOTH = Ambiguous.FIRST, Ambiguous.SECOND, Ambiguous.BOTH


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# (zone, local date, local time, expected per nonexistent policy / per ambiguous policy)
GAPS = [
    # New York springs forward 02:00 EST -> 03:00 EDT
    ("America/New_York", "2026-03-08", "02:30", "2026-03-08T07:30", "2026-03-08T07:00"),
    # Lord Howe moves 30 minutes: 02:00 +10:30 -> 02:30 +11
    ("Australia/Lord_Howe", "2026-10-04", "02:15", "2026-10-03T15:45", "2026-10-03T15:30"),
    # Sydney (southern hemisphere) springs forward in October: 02:00 +10 -> 03:00 +11
    ("Australia/Sydney", "2026-10-04", "02:30", "2026-10-03T16:30", "2026-10-03T16:00"),
    # Santiago springs forward at midnight: 00:00 -04 -> 01:00 -03
    ("America/Santiago", "2026-09-06", "00:30", "2026-09-06T04:30", "2026-09-06T04:00"),
    # Berlin: 02:00 CET -> 03:00 CEST
    ("Europe/Berlin", "2026-03-29", "02:30", "2026-03-29T01:30", "2026-03-29T01:00"),
]
FOLDS = [
    # New York falls back 02:00 EDT -> 01:00 EST
    ("America/New_York", "2026-11-01", "01:30", "2026-11-01T05:30", "2026-11-01T06:30"),
    # Lord Howe falls back 02:00 +11 -> 01:30 +10:30: only 01:30-01:59 repeat
    ("Australia/Lord_Howe", "2026-04-05", "01:45", "2026-04-04T14:45", "2026-04-04T15:15"),
    # Sydney falls back in April: 03:00 +11 -> 02:00 +10
    ("Australia/Sydney", "2026-04-05", "02:30", "2026-04-04T15:30", "2026-04-04T16:30"),
    # Santiago falls back at midnight into the previous day: 00:00 -03 -> 23:00 -04
    ("America/Santiago", "2026-04-04", "23:30", "2026-04-05T02:30", "2026-04-05T03:30"),
    # Berlin: 03:00 CEST -> 02:00 CET
    ("Europe/Berlin", "2026-10-25", "02:30", "2026-10-25T00:30", "2026-10-25T01:30"),
]


@pytest.mark.parametrize(("tz", "day", "at", "shifted", "edge"), GAPS)
@pytest.mark.parametrize("ambiguous", list(Ambiguous))
def test_gap_follows_the_nonexistent_policy(
    tz: str, day: str, at: str, shifted: str, edge: str, ambiguous: Ambiguous
) -> None:
    args = (date.fromisoformat(day), time.fromisoformat(at), zone(tz))
    assert resolve(*args, DstPolicy(SF, ambiguous)) == (utc(shifted),)
    assert resolve(*args, DstPolicy(GE, ambiguous)) == (utc(edge),)
    assert resolve(*args, DstPolicy(SK, ambiguous)) == ()


@pytest.mark.parametrize(("tz", "day", "at", "first", "second"), FOLDS)
@pytest.mark.parametrize("nonexistent", list(Nonexistent))
def test_fold_follows_the_ambiguous_policy(
    tz: str, day: str, at: str, first: str, second: str, nonexistent: Nonexistent
) -> None:
    args = (date.fromisoformat(day), time.fromisoformat(at), zone(tz))
    assert resolve(*args, DstPolicy(nonexistent, FIRST)) == (utc(first),)
    assert resolve(*args, DstPolicy(nonexistent, SECOND)) == (utc(second),)
    assert resolve(*args, DstPolicy(nonexistent, BOTH)) == (utc(first), utc(second))


def test_default_policy_is_rfc5545() -> None:
    assert DstPolicy() == DstPolicy(SF, FIRST)
    ny = zone("America/New_York")
    assert resolve(date(2026, 3, 8), time(2, 30), ny) == (utc("2026-03-08T07:30"),)
    assert resolve(date(2026, 11, 1), time(1, 30), ny) == (utc("2026-11-01T05:30"),)


@pytest.mark.parametrize("policy", [DstPolicy(n, a) for n in Nonexistent for a in Ambiguous])
def test_kathmandu_has_no_dst_and_a_quarter_hour_offset(policy: DstPolicy) -> None:
    ktm = zone("Asia/Kathmandu")
    assert resolve(date(2026, 3, 8), time(2, 30), ktm, policy) == (utc("2026-03-07T20:45"),)
    assert resolve(date(2026, 11, 1), time(1, 30), ktm, policy) == (utc("2026-10-31T19:45"),)


def test_times_next_to_a_transition_exist_once() -> None:
    ny = zone("America/New_York")
    assert resolve(date(2026, 3, 8), time(1, 59), ny) == (utc("2026-03-08T06:59"),)
    assert resolve(date(2026, 3, 8), time(3, 0), ny) == (utc("2026-03-08T07:00"),)
    assert resolve(date(2026, 11, 1), time(0, 59), ny) == (utc("2026-11-01T04:59"),)
    assert resolve(date(2026, 11, 1), time(2, 0), ny) == (utc("2026-11-01T07:00"),)


def test_gap_length_is_read_from_the_zone() -> None:
    assert gap_length(date(2026, 3, 8), time(2, 30), zone("America/New_York")) == timedelta(hours=1)
    assert gap_length(date(2026, 10, 4), time(2, 15), zone("Australia/Lord_Howe")) == timedelta(
        minutes=30
    )
    assert gap_length(date(2026, 3, 8), time(12), zone("America/New_York")) == timedelta(0)
    # Samoa skipped 2011-12-30 entirely when it crossed the date line
    apia = zone("Pacific/Apia")
    assert gap_length(date(2011, 12, 30), time(12), apia) == timedelta(hours=24)
    assert resolve(date(2011, 12, 30), time(12), apia, DstPolicy(GE)) == (utc("2011-12-30T10:00"),)


def test_microseconds_survive_a_gap_edge() -> None:
    edge = resolve(date(2026, 3, 8), time(2, 30, 0, 500), zone("America/New_York"), DstPolicy(GE))
    assert edge == (utc("2026-03-08T07:00"),)


@pytest.mark.parametrize(
    ("tz", "day", "start", "end", "hours"),
    [
        ("America/New_York", "2026-03-08", "2026-03-08T05:00", "2026-03-09T04:00", 23),
        ("America/New_York", "2026-11-01", "2026-11-01T04:00", "2026-11-02T05:00", 25),
        ("Australia/Lord_Howe", "2026-10-04", "2026-10-03T13:30", "2026-10-04T13:00", 23.5),
        ("Australia/Lord_Howe", "2026-04-05", "2026-04-04T13:00", "2026-04-05T13:30", 24.5),
        ("Asia/Kathmandu", "2026-03-08", "2026-03-07T18:15", "2026-03-08T18:15", 24),
        # midnight does not exist: the day starts at 01:00 -03
        ("America/Santiago", "2026-09-06", "2026-09-06T04:00", "2026-09-07T03:00", 23),
        ("Asia/Beirut", "2026-03-29", "2026-03-28T22:00", "2026-03-29T21:00", 23),
    ],
)
def test_local_day_bounds(tz: str, day: str, start: str, end: str, hours: float) -> None:
    bounds = local_day_bounds(date.fromisoformat(day), zone(tz))
    assert bounds == (utc(start), utc(end))
    assert bounds[1] - bounds[0] == timedelta(hours=hours)


def test_local_date_of() -> None:
    ny = zone("America/New_York")
    assert local_date_of(utc("2026-03-08T04:59"), ny) == date(2026, 3, 7)
    assert local_date_of(utc("2026-03-08T05:00"), ny) == date(2026, 3, 8)
    assert local_date_of(utc("2026-03-07T18:15"), zone("Asia/Kathmandu")) == date(2026, 3, 8)
    with pytest.raises(ValueError, match="aware"):
        local_date_of(datetime(2026, 3, 8), ny)


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "America", "../etc/passwd", "utc"])
def test_unknown_zone_is_an_invalid_schedule(name: str) -> None:
    with pytest.raises(InvalidSchedule) as err:
        zone(name)
    assert err.value.field == "timezone"
    assert str(err.value) == f"timezone: unknown IANA zone {name!r}"


def test_zone_is_cached_and_instants_are_utc() -> None:
    assert zone("Europe/Berlin") is zone("Europe/Berlin")
    (instant,) = resolve(date(2026, 7, 1), time(9), zone("Europe/Berlin"))
    assert instant.tzinfo is UTC
    assert instant == utc("2026-07-01T07:00")
