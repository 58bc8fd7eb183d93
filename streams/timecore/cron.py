"""Five-field cron expressions for maintenance jobs, fired on local wall time in a zone.

Owns parsing (``minute hour day-of-month month day-of-week``; lists, ranges, steps, month
and weekday names, 7 = Sunday, the ``@daily``-style macros), the Vixie rule for days (when
both day fields are restricted a day matches if either does) and the fire instants of an
expression after a given instant. Every local wall time is turned into instants by
``localtime.resolve`` with the job's DST policy, so cron follows the same gap/fold rules as
digests and recurrences:

- Gap: a time that does not exist becomes what the policy says; a result that equals a real
  fire (``0 * * * *`` at 02:00 shifted to 03:00 next to the real 03:00) fires once.
- Fold: times in the repeated hour follow ``ambiguous``; for an hourly or every-minute job
  ``first`` fires only on the first pass through the fold and ``both`` on both passes.
  (Vixie cron and cronsim run wildcard jobs on both passes and fixed-time jobs once.)

Must not read the clock; imports only the standard library and ``streams`` modules below it.
"""

from __future__ import annotations

import calendar
import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from streams.errors import InvalidSchedule
from streams.timecore.localtime import RFC5545, DstPolicy, local_date_of, local_day_bounds, resolve

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {n.upper(): i for i, n in enumerate(calendar.month_abbr) if n}
_DAYS = {n: i for i, n in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    lo: int
    hi: int
    names: dict[str, int]


_FIELDS = (
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day-of-month", 1, 31, {}),
    _Field("month", 1, 12, _MONTHS),
    _Field("day-of-week", 0, 7, _DAYS),
)


@dataclass(frozen=True, slots=True)
class CronExpression:
    """A parsed expression. ``weekdays`` use cron numbering: 0 = Sunday .. 6 = Saturday."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_or: bool  # both day fields restricted: a day matches if either does (Vixie cron)

    def matches_day(self, d: date) -> bool:
        """Whether the expression fires on local date ``d`` (at some time of day)."""
        if d.month not in self.months:
            return False
        in_days = d.day in self.days
        in_weekdays = (d.weekday() + 1) % 7 in self.weekdays
        return in_days or in_weekdays if self.days_or else in_days and in_weekdays

    def times(self) -> list[time]:
        """The local times of day it fires at, increasing."""
        return [time(h, m) for h in self.hours for m in self.minutes]

    def fires(
        self, after: datetime, tz: ZoneInfo, policy: DstPolicy = RFC5545
    ) -> Iterator[datetime]:
        """UTC instants strictly after ``after`` (aware), increasing, without duplicates."""
        if after.tzinfo is None:
            raise ValueError("fires needs an aware 'after'")
        # A time on day d resolves to an instant >= the start of d, but shift_forward can push
        # it past the end of d; start a day early and hold back instants beyond the day's end.
        day = local_date_of(after, tz) - timedelta(days=1)
        times = self.times()
        pending: list[datetime] = []
        last = after
        while day.year < 9999:
            if self.matches_day(day):
                for t in times:
                    for instant in resolve(day, t, tz, policy):
                        if instant > last:
                            heapq.heappush(pending, instant)
            end = local_day_bounds(day, tz)[1]
            while pending and pending[0] < end:
                instant = heapq.heappop(pending)
                if instant > last:
                    last = instant
                    yield instant
            day += timedelta(days=1)

    def next_fire(self, after: datetime, tz: ZoneInfo, policy: DstPolicy = RFC5545) -> datetime:
        """The first instant of ``fires``."""
        return next(self.fires(after, tz, policy))

    def min_interval_s(self) -> int:
        """Smallest gap in seconds between consecutive fires on plain days (no DST change).

        Scans one 28-year weekday/date cycle (2001-2028), which holds every pairing of a
        date, a weekday and Feb 29.
        """
        minutes = [h * 60 + m for h in self.hours for m in self.minutes]
        best = min((b - a for a, b in itertools.pairwise(minutes)), default=None)
        overnight = minutes[0] + 1440 - minutes[-1]  # last fire of a day to the first of the next
        previous: date | None = None
        day = date(2001, 1, 1)
        while day.year < 2029:
            if self.matches_day(day):
                if previous is not None:
                    gap = overnight + 1440 * ((day - previous).days - 1)
                    best = gap if best is None else min(best, gap)
                previous = day
            day += timedelta(days=1)
        assert best is not None  # parse_cron rejects expressions that never fire
        return best * 60


def parse_cron(expr: str) -> CronExpression:
    """Parse a 5-field expression or macro; raise ``InvalidSchedule`` naming the field."""
    text = " ".join(expr.split())
    source = MACROS.get(text.lower(), text)
    if source.startswith("@"):
        raise InvalidSchedule("schedule", f"unknown macro {text!r}; use one of {', '.join(MACROS)}")
    parts = source.split()
    if len(parts) != 5:
        raise InvalidSchedule(
            "schedule",
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}",
        )
    minutes, hours, days, months, weekdays = (
        _parse_field(part, spec) for part, spec in zip(parts, _FIELDS, strict=True)
    )
    weekdays = {d % 7 for d in weekdays}
    days_star, weekdays_star = parts[2].startswith("*"), parts[4].startswith("*")
    days_or = not days_star and not weekdays_star
    if not days_or:
        longest = max(calendar.monthrange(2000, m)[1] for m in months)
        if min(days) > longest:
            month_names = ", ".join(calendar.month_name[m] for m in sorted(months))
            raise InvalidSchedule(
                "day-of-month",
                f"day {min(days)} never occurs in {month_names}; the schedule would never fire",
            )
    return CronExpression(
        text=text,
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=frozenset(days),
        months=frozenset(months),
        weekdays=frozenset(weekdays),
        days_or=days_or,
    )


def _parse_field(part: str, spec: _Field) -> set[int]:
    values: set[int] = set()
    for item in part.split(","):
        if not item:
            raise InvalidSchedule(spec.name, f"{part!r} has an empty list item")
        span, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _digits(step_text) or int(step_text) == 0:
                raise InvalidSchedule(
                    spec.name, f"step {step_text!r} in {item!r} must be 1 or more"
                )
            step = int(step_text)
        if span == "*":
            lo, hi = spec.lo, spec.hi
        elif "-" in span:
            first, _, last = span.partition("-")
            lo, hi = _value(first, spec), _value(last, spec)
            if lo > hi:
                raise InvalidSchedule(spec.name, f"{item!r}: a range must go from low to high")
        else:
            lo = _value(span, spec)
            hi = spec.hi if slash else lo  # "5/15" means 5-59/15
        values.update(range(lo, hi + 1, step))
    return values


def _value(token: str, spec: _Field) -> int:
    if token.upper() in spec.names:
        return spec.names[token.upper()]
    if not _digits(token):
        raise InvalidSchedule(
            spec.name,
            f"{token!r} is not a number"
            + (f" or a name ({', '.join(spec.names)})" if spec.names else ""),
        )
    n = int(token)
    if not spec.lo <= n <= spec.hi:
        raise InvalidSchedule(spec.name, f"{n} is out of range {spec.lo}-{spec.hi}")
    return n


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()
