"""Daily run windows in a zone: edges across midnight and across DST, containment, the next
windows (streams.timecore.window)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from streams.timecore.localtime import RFC5545, Ambiguous, DstPolicy, Nonexistent, zone
from streams.timecore.window import DailyWindow

BERLIN = zone("Europe/Berlin")


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_window_on_an_ordinary_day_and_across_midnight() -> None:
    w = DailyWindow(time(1), time(5))
    assert w.on(date(2026, 6, 1), BERLIN) == (_utc(2026, 5, 31, 23), _utc(2026, 6, 1, 3))
    night = DailyWindow(time(22), time(4))
    assert night.on(date(2026, 6, 1), BERLIN) == (_utc(2026, 6, 1, 20), _utc(2026, 6, 2, 2))
    # 01:00 local on June 2 belongs to the window that opened on June 1.
    assert night.containing(_utc(2026, 6, 1, 23), BERLIN) == (_utc(2026, 6, 1, 20),
                                                              _utc(2026, 6, 2, 2))
    assert night.containing(_utc(2026, 6, 2, 2), BERLIN) is None  # the end is excluded
    assert night.containing(_utc(2026, 6, 2, 19, 59), BERLIN) is None


def test_spring_forward_shortens_and_fall_back_lengthens_the_window() -> None:
    w = DailyWindow(time(1), time(5))
    opens, closes = w.on(date(2026, 3, 29), BERLIN)  # 02:00 → 03:00
    assert (closes - opens).total_seconds() == 3 * 3600
    opens, closes = w.on(date(2026, 10, 25), BERLIN)  # 03:00 → 02:00
    assert (closes - opens).total_seconds() == 5 * 3600


def test_edges_in_a_gap_or_fold_follow_the_policy() -> None:
    w = DailyWindow(time(2, 30), time(6))
    # The start 02:30 does not exist on March 29: shift_forward reads it as 03:30 CEST.
    assert w.on(date(2026, 3, 29), BERLIN, RFC5545)[0] == _utc(2026, 3, 29, 1, 30)
    # skip cannot skip an edge: it is read as gap_edge (03:00 CEST).
    skip = DstPolicy(Nonexistent.SKIP, Ambiguous.FIRST)
    assert w.on(date(2026, 3, 29), BERLIN, skip)[0] == _utc(2026, 3, 29, 1)
    # In the fold (02:30 twice on October 25) `both` opens at the first reading.
    both = DstPolicy(Nonexistent.SHIFT_FORWARD, Ambiguous.BOTH)
    assert w.on(date(2026, 10, 25), BERLIN, both)[0] == _utc(2026, 10, 25, 0, 30)
    closing = DailyWindow(time(1), time(2, 30))
    assert closing.on(date(2026, 10, 25), BERLIN, both)[1] == _utc(2026, 10, 25, 1, 30)


def test_next_windows_start_with_the_open_one() -> None:
    w = DailyWindow(time(1), time(5))
    it = w.windows(_utc(2026, 6, 1, 0), BERLIN)  # 02:00 local: inside the June 1 window
    assert next(it) == (_utc(2026, 5, 31, 23), _utc(2026, 6, 1, 3))
    assert next(it) == (_utc(2026, 6, 1, 23), _utc(2026, 6, 2, 3))
    later = w.windows(_utc(2026, 6, 1, 3), BERLIN)  # at the end: the next day's window
    assert next(later)[0] == _utc(2026, 6, 1, 23)
