"""Local wall time ↔ UTC instants across DST gaps and folds.

Owns the one rule for turning a local date and time in an IANA zone into instants
(``resolve``), the user-chosen policy for times that do not exist (a gap, spring forward)
or exist twice (a fold, fall back), and the bounds of a local day. Gap and fold lengths are
read from the zone, never assumed (Lord Howe moves 30 minutes, Samoa once skipped a day).

Must not read the clock, and imports only the standard library and ``streams.errors``.
Every instant it returns is an aware ``datetime`` in UTC.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streams.errors import InvalidSchedule


class Nonexistent(StrEnum):
    """What a local time inside a gap (spring forward) becomes."""

    SHIFT_FORWARD = "shift_forward"  # RFC 5545: read with the offset before the gap
    GAP_EDGE = "gap_edge"  # the first instant after the gap, as cron does
    SKIP = "skip"  # no instant at all


class Ambiguous(StrEnum):
    """Which reading of a local time inside a fold (fall back) counts."""

    FIRST = "first"  # RFC 5545: the earlier instant
    SECOND = "second"
    BOTH = "both"


@dataclass(frozen=True, slots=True)
class DstPolicy:
    """A user's or job's choice for gaps and folds; the defaults follow RFC 5545."""

    nonexistent: Nonexistent = Nonexistent.SHIFT_FORWARD
    ambiguous: Ambiguous = Ambiguous.FIRST


RFC5545 = DstPolicy()
_DAY_START = DstPolicy(Nonexistent.GAP_EDGE, Ambiguous.FIRST)


@functools.lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """The IANA zone called ``name``; raises ``InvalidSchedule("timezone", …)`` if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidSchedule("timezone", f"unknown IANA zone {name!r}") from None


def resolve(
    local_date: date, local_time: time, tz: ZoneInfo, policy: DstPolicy = RFC5545
) -> tuple[datetime, ...]:
    """The UTC instants (0, 1 or 2, increasing) at which ``local_time`` on ``local_date`` occurs.

    A time that exists once gives that instant. In a gap, ``shift_forward`` reads the time with
    the offset in force before the gap (02:30 → 03:30 after a one-hour jump), ``gap_edge`` gives
    the first instant after the gap and ``skip`` gives ``()``. In a fold ``first``/``second``
    give the earlier/later reading and ``both`` gives both.
    """
    wall = datetime.combine(local_date, local_time.replace(tzinfo=None, fold=0))
    before = _offset(wall, tz, 0)  # PEP 495: fold=0 reads with the offset before a transition
    after = _offset(wall, tz, 1)
    if before == after:
        return (_utc(wall - before),)
    if before > after:  # fold: the wall clock was set back, this reading happens twice
        first, second = _utc(wall - before), _utc(wall - after)
        if policy.ambiguous is Ambiguous.FIRST:
            return (first,)
        if policy.ambiguous is Ambiguous.SECOND:
            return (second,)
        return (first, second)
    if policy.nonexistent is Nonexistent.SKIP:
        return ()
    shifted = _utc(wall - before)
    if policy.nonexistent is Nonexistent.SHIFT_FORWARD:
        return (shifted,)
    return (_gap_end(_utc(wall - after), shifted, tz, before),)


def gap_length(local_date: date, local_time: time, tz: ZoneInfo) -> timedelta:
    """How far the clock jumps at the gap containing this local time; zero outside a gap."""
    wall = datetime.combine(local_date, local_time.replace(tzinfo=None, fold=0))
    return max(_offset(wall, tz, 1) - _offset(wall, tz, 0), timedelta(0))


def local_day_bounds(d: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """UTC instants ``[start of local day d, start of local day d+1)``.

    A day starts at the first instant whose local date is ``d``: midnight, or the end of the
    gap when midnight does not exist (zones that spring forward at 00:00).
    """
    return _day_start(d, tz), _day_start(d + timedelta(days=1), tz)


def local_date_of(instant: datetime, tz: ZoneInfo) -> date:
    """The local date in ``tz`` at an aware instant."""
    if instant.tzinfo is None:
        raise ValueError("local_date_of needs an aware datetime")
    return instant.astimezone(tz).date()


def _day_start(d: date, tz: ZoneInfo) -> datetime:
    return resolve(d, time(0), tz, _DAY_START)[0]


def _offset(wall: datetime, tz: ZoneInfo, fold: int) -> timedelta:
    offset = tz.utcoffset(wall.replace(fold=fold))
    assert offset is not None  # a ZoneInfo always has an offset
    return offset


def _utc(naive_utc: datetime) -> datetime:
    return naive_utc.replace(tzinfo=UTC)


def _gap_end(lo: datetime, hi: datetime, tz: ZoneInfo, old: timedelta) -> datetime:
    """The transition instant in ``(lo, hi]``: the offset is ``old`` at ``lo``, new at ``hi``.

    Bisects on whole seconds (tzdata transitions fall on whole seconds): about 12 steps for a
    one-hour gap, and only ever run for a time inside a gap.
    """
    lo_s, hi_s = math.floor(lo.timestamp()), math.ceil(hi.timestamp())
    while hi_s - lo_s > 1:
        mid_s = (lo_s + hi_s) // 2
        if tz.utcoffset(datetime.fromtimestamp(mid_s, tz)) == old:
            lo_s = mid_s
        else:
            hi_s = mid_s
    return datetime.fromtimestamp(hi_s, UTC)
