"""Recurrence rules on local wall time: parsing, month ends, leap days, ordinals, DST."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime

import pytest

from streams.errors import InvalidSchedule
from streams.timecore.localtime import Ambiguous, DstPolicy, Nonexistent, zone
from streams.timecore.recurrence import (
    Freq,
    Occurrence,
    RecurrenceRule,
    Skip,
    local_occurrences,
    next_after_completion,
    occurrences,
    parse_rrule,
)

NY = zone("America/New_York")


def local(text: str) -> datetime:
    return datetime.fromisoformat(text)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def dates(rule: str, start: str, n: int = 100, skip: Skip = Skip.OMIT) -> list[str]:
    it = local_occurrences(parse_rrule(rule), local(start), skip=skip)
    return [o.date().isoformat() for o in itertools.islice(it, n)]


# --- parsing ---------------------------------------------------------------------------


def test_parse_full_rule() -> None:
    rule = parse_rrule(
        "RRULE:FREQ=YEARLY;INTERVAL=2;BYMONTH=3,1;BYDAY=-1FR,MO;BYMONTHDAY=-1,5;"
        "BYSETPOS=1,-1;COUNT=4;WKST=SU"
    )
    assert rule == RecurrenceRule(
        freq=Freq.YEARLY,
        interval=2,
        count=4,
        byday=((0, 0), (4, -1)),
        bymonthday=(-1, 5),
        bymonth=(1, 3),
        bysetpos=(-1, 1),
        wkst=6,
    )
    assert parse_rrule("freq=daily") == RecurrenceRule(Freq.DAILY)


@pytest.mark.parametrize(
    ("text", "until"),
    [
        ("FREQ=DAILY;UNTIL=20261231", date(2026, 12, 31)),
        ("FREQ=DAILY;UNTIL=20261231T235959Z", datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("FREQ=DAILY;UNTIL=20261231T090000", datetime(2026, 12, 31, 9)),
    ],
)
def test_parse_until(text: str, until: date) -> None:
    assert parse_rrule(text).until == until


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "RRULE: is empty"),
        ("INTERVAL=2", "FREQ: is required"),
        ("FREQ=HOURLY", "FREQ: HOURLY is not supported; use DAILY, WEEKLY, MONTHLY or YEARLY"),
        ("FREQ=MINUTELY", "FREQ: MINUTELY is not supported; use DAILY, WEEKLY, MONTHLY or YEARLY"),
        ("FREQ=SECONDLY", "FREQ: SECONDLY is not supported; use DAILY, WEEKLY, MONTHLY or YEARLY"),
        ("FREQ=DAILY;BYHOUR=9", "BYHOUR: is not supported; the time of day comes from DTSTART"),
        ("FREQ=YEARLY;BYWEEKNO=1", "BYWEEKNO: is not supported; use BYMONTH with BYDAY"),
        ("FREQ=DAILY;FOO=1", "FOO: is not a known RRULE part"),
        ("FREQ=DAILY;COUNT", "RRULE: 'COUNT' is not NAME=VALUE"),
        ("FREQ=DAILY;FREQ=WEEKLY", "FREQ: appears more than once"),
        ("FREQ=DAILY;COUNT=3;UNTIL=20260101", "UNTIL: cannot be combined with COUNT"),
        ("FREQ=DAILY;INTERVAL=0", "INTERVAL: 0 is out of range 1..1000"),
        ("FREQ=DAILY;INTERVAL=-1", "INTERVAL: '-1' is not a whole number"),
        ("FREQ=DAILY;COUNT=0", "COUNT: 0 is out of range 1..100000"),
        ("FREQ=MONTHLY;BYMONTHDAY=0", "BYMONTHDAY: 0 is not allowed; use 1..31 or -31..-1"),
        ("FREQ=MONTHLY;BYMONTHDAY=32", "BYMONTHDAY: 32 is out of range; use 1..31 or -31..-1"),
        ("FREQ=MONTHLY;BYMONTHDAY=x", "BYMONTHDAY: 'X' is not a number; use 1..31 or -31..-1"),
        ("FREQ=YEARLY;BYMONTH=13", "BYMONTH: 13 is out of range; use 1..12"),
        ("FREQ=YEARLY;BYMONTH=-1", "BYMONTH: -1 is out of range; use 1..12"),
        ("FREQ=MONTHLY;BYDAY=XX", "BYDAY: 'XX' is not a weekday like MO, 2TU or -1FR"),
        ("FREQ=MONTHLY;BYDAY=0FR", "BYDAY: '0FR': the ordinal cannot be 0"),
        ("FREQ=MONTHLY;BYDAY=6FR", "BYDAY: '6FR': the ordinal is out of range 1..5"),
        ("FREQ=YEARLY;BYDAY=54FR", "BYDAY: '54FR': the ordinal is out of range 1..53"),
        ("FREQ=WEEKLY;BYDAY=1FR", "BYDAY: '1FR': ordinals need FREQ=MONTHLY or YEARLY"),
        ("FREQ=WEEKLY;BYMONTHDAY=1", "BYMONTHDAY: cannot be used with FREQ=WEEKLY"),
        ("FREQ=MONTHLY;BYSETPOS=1", "BYSETPOS: needs BYDAY, BYMONTHDAY or BYMONTH"),
        ("FREQ=MONTHLY;BYDAY=FR;BYSETPOS=367",
         "BYSETPOS: 367 is out of range; use 1..366 or -366..-1"),
        ("FREQ=DAILY;WKST=XY", "WKST: 'XY' is not a weekday (MO..SU)"),
        ("FREQ=DAILY;UNTIL=2026",
         "UNTIL: '2026' is not YYYYMMDD, YYYYMMDDTHHMMSSZ or floating time"),
        ("FREQ=DAILY;SKIP=BACKWARD",
         "SKIP: is not supported; set the recurrence's skip field instead"),
    ],
)  # fmt: skip
def test_parse_errors_name_the_part(text: str, message: str) -> None:
    with pytest.raises(InvalidSchedule) as err:
        parse_rrule(text)
    assert str(err.value) == message
    assert err.value.field == message.split(":")[0]


# --- month ends and leap days ------------------------------------------------------------

MONTH_31 = {
    Skip.OMIT: ["2026-01-31", "2026-03-31", "2026-05-31", "2026-07-31", "2026-08-31",
                "2026-10-31", "2026-12-31", "2027-01-31"],
    Skip.BACKWARD: ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31",
                    "2026-06-30", "2026-07-31", "2026-08-31", "2026-09-30", "2026-10-31",
                    "2026-11-30", "2026-12-31", "2027-01-31", "2027-02-28"],
    Skip.FORWARD: ["2026-01-31", "2026-03-01", "2026-03-31", "2026-05-01", "2026-05-31",
                   "2026-07-01", "2026-07-31", "2026-08-31", "2026-10-01", "2026-10-31",
                   "2026-12-01", "2026-12-31", "2027-01-31", "2027-03-01"],
}  # fmt: skip


@pytest.mark.parametrize("skip", list(Skip))
def test_bymonthday_31_over_14_months(skip: Skip) -> None:
    got = dates("FREQ=MONTHLY;BYMONTHDAY=31;UNTIL=20270301", "2026-01-31T09:00", skip=skip)
    assert got == MONTH_31[skip]


@pytest.mark.parametrize("skip", list(Skip))
def test_dtstart_day_31_is_skipped_like_bymonthday_31(skip: Skip) -> None:
    got = dates("FREQ=MONTHLY;UNTIL=20270301", "2026-01-31T09:00", skip=skip)
    assert got == MONTH_31[skip]


@pytest.mark.parametrize("skip", list(Skip))
def test_last_day_of_month_needs_no_skip(skip: Skip) -> None:
    got = dates("FREQ=MONTHLY;BYMONTHDAY=-1;COUNT=14", "2026-01-01T09:00", skip=skip)
    assert got == ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31",
                   "2026-06-30", "2026-07-31", "2026-08-31", "2026-09-30", "2026-10-31",
                   "2026-11-30", "2026-12-31", "2027-01-31", "2027-02-28"]  # fmt: skip


LEAP = {
    Skip.OMIT: ["2024-02-29", "2028-02-29", "2032-02-29"],
    Skip.BACKWARD: ["2024-02-29", "2025-02-28", "2026-02-28", "2027-02-28", "2028-02-29",
                    "2029-02-28", "2030-02-28", "2031-02-28", "2032-02-29"],
    Skip.FORWARD: ["2024-02-29", "2025-03-01", "2026-03-01", "2027-03-01", "2028-02-29",
                   "2029-03-01", "2030-03-01", "2031-03-01", "2032-02-29"],
}  # fmt: skip


@pytest.mark.parametrize("skip", list(Skip))
@pytest.mark.parametrize("rule", ["FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29", "FREQ=YEARLY"])
def test_feb_29_over_nine_years(rule: str, skip: Skip) -> None:
    assert dates(f"{rule};UNTIL=20320301", "2024-02-29T08:00", skip=skip) == LEAP[skip]


def test_a_day_no_month_has_never_fires_with_omit() -> None:
    assert dates("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", "2024-01-01T08:00") == []
    assert dates("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", "2024-01-01T08:00", 2, Skip.BACKWARD) == [
        "2024-02-29",
        "2025-02-28",
    ]


def test_forward_collapsing_onto_a_real_date_fires_once() -> None:
    got = dates("FREQ=MONTHLY;BYMONTHDAY=1,31;COUNT=5", "2026-04-01T09:00", skip=Skip.FORWARD)
    assert got == ["2026-04-01", "2026-05-01", "2026-05-31", "2026-06-01", "2026-07-01"]
    got = dates("FREQ=MONTHLY;BYMONTHDAY=30,31;COUNT=3", "2026-04-01T09:00", skip=Skip.BACKWARD)
    assert got == ["2026-04-30", "2026-05-30", "2026-05-31"]


# --- ordinals and BYSETPOS -------------------------------------------------------------


def test_last_friday_and_third_friday() -> None:
    assert dates("FREQ=MONTHLY;BYDAY=-1FR;COUNT=4", "2026-01-01T09:00") == [
        "2026-01-30", "2026-02-27", "2026-03-27", "2026-04-24",
    ]  # fmt: skip
    assert dates("FREQ=MONTHLY;BYDAY=3FR;COUNT=4", "2026-01-01T09:00") == [
        "2026-01-16", "2026-02-20", "2026-03-20", "2026-04-17",
    ]  # fmt: skip
    # US Thanksgiving: 4th Thursday of November
    assert dates("FREQ=YEARLY;BYMONTH=11;BYDAY=4TH;COUNT=3", "2026-01-01T12:00") == [
        "2026-11-26", "2027-11-25", "2028-11-23",
    ]  # fmt: skip


def test_bysetpos_last_workday_and_second_to_last() -> None:
    rule = "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1;COUNT=4"
    assert dates(rule, "2026-01-01T09:00") == ["2026-01-30", "2026-02-27", "2026-03-31",
                                               "2026-04-30"]  # fmt: skip
    rule = "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=1,-2;COUNT=4"
    assert dates(rule, "2026-01-01T09:00") == ["2026-01-01", "2026-01-29", "2026-02-02",
                                               "2026-02-26"]  # fmt: skip


def test_weekly_with_interval_and_wkst() -> None:
    # RFC 5545 example: WKST changes which weeks are "every other"
    assert dates("FREQ=WEEKLY;INTERVAL=2;COUNT=4;BYDAY=TU,SU;WKST=MO", "1997-08-05T09:00") == [
        "1997-08-05", "1997-08-10", "1997-08-19", "1997-08-24",
    ]  # fmt: skip
    assert dates("FREQ=WEEKLY;INTERVAL=2;COUNT=4;BYDAY=TU,SU;WKST=SU", "1997-08-05T09:00") == [
        "1997-08-05", "1997-08-17", "1997-08-19", "1997-08-31",
    ]  # fmt: skip


# --- DTSTART, COUNT, UNTIL, EXDATE ------------------------------------------------------


def test_dtstart_counts_only_if_it_matches() -> None:
    # 2026-01-01 is a Thursday; the rule wants Mondays
    assert dates("FREQ=WEEKLY;BYDAY=MO;COUNT=2", "2026-01-01T09:00") == ["2026-01-05", "2026-01-12"]


def test_exdates_are_removed_but_count_toward_count() -> None:
    rule = parse_rrule("FREQ=DAILY;COUNT=4")
    got = list(local_occurrences(rule, local("2026-01-01T09:00"),
                                 exdates=frozenset({local("2026-01-02T09:00")})))  # fmt: skip
    assert got == [local("2026-01-01T09:00"), local("2026-01-03T09:00"), local("2026-01-04T09:00")]


def test_until_is_inclusive_in_each_form() -> None:
    start = "2026-01-01T09:00"
    assert dates("FREQ=DAILY;UNTIL=20260103", start) == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert dates("FREQ=DAILY;UNTIL=20260103T090000", start)[-1] == "2026-01-03"
    assert dates("FREQ=DAILY;UNTIL=20260103T085959", start)[-1] == "2026-01-02"
    utc_rule = parse_rrule("FREQ=DAILY;UNTIL=20260103T140000Z")  # 09:00 EST
    with pytest.raises(ValueError, match="zone"):
        list(local_occurrences(utc_rule, local(start)))
    got = list(local_occurrences(utc_rule, local(start), tz=NY))
    assert got[-1] == local("2026-01-03T09:00")
    assert [o.local for o in occurrences(utc_rule, local(start), NY)][-1] == got[-1]


# --- resolution to instants ---------------------------------------------------------------


def _around_spring_forward(policy: DstPolicy) -> list[Occurrence]:
    rule = parse_rrule("FREQ=DAILY;COUNT=3")
    return list(occurrences(rule, local("2026-03-07T02:30"), NY, policy=policy))


def test_daily_0230_over_spring_forward_per_policy() -> None:
    sf = _around_spring_forward(DstPolicy(Nonexistent.SHIFT_FORWARD))
    assert [o.instants for o in sf] == [
        (utc("2026-03-07T07:30"),), (utc("2026-03-08T07:30"),), (utc("2026-03-09T06:30"),),
    ]  # fmt: skip
    edge = _around_spring_forward(DstPolicy(Nonexistent.GAP_EDGE))
    assert edge[1] == Occurrence(local("2026-03-08T02:30"), (utc("2026-03-08T07:00"),))
    skipped = _around_spring_forward(DstPolicy(Nonexistent.SKIP))
    assert [o.local.day for o in skipped] == [7, 9]


def test_daily_0130_over_fall_back_per_policy() -> None:
    rule = parse_rrule("FREQ=DAILY;COUNT=2")
    start = local("2026-10-31T01:30")
    by = {a: list(occurrences(rule, start, NY, policy=DstPolicy(ambiguous=a))) for a in Ambiguous}
    assert by[Ambiguous.FIRST][1].instants == (utc("2026-11-01T05:30"),)
    assert by[Ambiguous.SECOND][1].instants == (utc("2026-11-01T06:30"),)
    assert by[Ambiguous.BOTH][1].instants == (utc("2026-11-01T05:30"), utc("2026-11-01T06:30"))


def test_after_jumps_into_an_old_series() -> None:
    rule = parse_rrule("FREQ=DAILY")
    start, after = local("2016-05-01T09:00"), utc("2026-03-08T13:00")  # 09:00 EDT
    got = list(itertools.islice(occurrences(rule, start, NY, after=after), 2))
    assert got == [
        Occurrence(local("2026-03-09T09:00"), (utc("2026-03-09T13:00"),)),
        Occurrence(local("2026-03-10T09:00"), (utc("2026-03-10T13:00"),)),
    ]
    slow = (o for o in occurrences(rule, start, NY) if o.instants[0] > after)
    assert list(itertools.islice(slow, 2)) == got


def test_after_drops_only_the_passed_reading_of_a_fold() -> None:
    rule = parse_rrule("FREQ=DAILY")
    both = DstPolicy(ambiguous=Ambiguous.BOTH)
    got = next(occurrences(rule, local("2026-10-01T01:30"), NY, policy=both,
                           after=utc("2026-11-01T05:30")))  # fmt: skip
    assert got == Occurrence(local("2026-11-01T01:30"), (utc("2026-11-01T06:30"),))


def test_utc_until_is_exact_on_instants() -> None:
    rule = parse_rrule("FREQ=DAILY;UNTIL=20261101T060000Z")  # 01:00 EST, inside the fold
    both = DstPolicy(ambiguous=Ambiguous.BOTH)
    got = list(occurrences(rule, local("2026-10-31T01:30"), NY, policy=both))
    assert [o.instants for o in got] == [(utc("2026-10-31T05:30"),), (utc("2026-11-01T05:30"),)]


# --- anchor completion --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "completed", "expected"),
    [
        ("FREQ=DAILY", "2026-03-07", "2026-03-08T02:30"),
        ("FREQ=DAILY;INTERVAL=3", "2026-12-30", "2027-01-02T02:30"),
        ("FREQ=WEEKLY;BYDAY=MO", "2026-03-05", "2026-03-12T02:30"),
        ("FREQ=MONTHLY", "2026-01-31", "2026-02-28T02:30"),
        ("FREQ=MONTHLY;INTERVAL=13", "2026-01-31", "2027-02-28T02:30"),
        ("FREQ=YEARLY", "2024-02-29", "2025-02-28T02:30"),
        ("FREQ=YEARLY;INTERVAL=4", "2024-02-29", "2028-02-29T02:30"),
    ],
)
def test_next_after_completion(rule: str, completed: str, expected: str) -> None:
    got = next_after_completion(
        parse_rrule(rule), local("2026-01-01T02:30"), date.fromisoformat(completed)
    )
    assert got == local(expected)
