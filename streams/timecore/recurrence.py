"""RFC 5545 recurrence rules evaluated on local wall time, with RFC 7529 month-end skipping.

Owns parsing an RRULE (the subset in DESIGN.md §4: FREQ DAILY..YEARLY, INTERVAL, BYDAY with
ordinals, BYMONTHDAY, BYMONTH, BYSETPOS, COUNT, UNTIL, WKST), expanding it into naive local
occurrences, resolving those to UTC instants through ``localtime.resolve``, and the
"completion" anchor. Must not read the clock; imports only the standard library and
``streams`` modules below it (errors, localtime).

The expansion is our own code rather than ``dateutil.rrule``: we need RFC 7529 ``skip``
(backward/forward), which dateutil lacks; a cheap jump to the period containing ``after``;
EXDATEs that still count toward COUNT; and dateutil stays an independent reference in the
property tests instead of testing itself.

Choices, in RFC terms:
- DTSTART is the first occurrence only if it matches the rule (as dateutil does; RFC 5545 says
  it SHOULD match). Occurrences are never before DTSTART.
- Every occurrence takes DTSTART's time of day (BYHOUR/BYMINUTE/BYSECOND are not supported).
- Order of evaluation per period: BYxxx expansion/limits → ``skip`` moves the dates a month
  lacks (a moved date is not re-checked against BYDAY) → BYSETPOS → dedupe → DTSTART, COUNT,
  UNTIL → EXDATE. EXDATEs count toward COUNT (RFC 5545 removes them from the set).
- ``skip``: a day a month lacks (BYMONTHDAY=31 in April, -31 in April, Feb 29 in 2027, or
  DTSTART's day 31 in a MONTHLY rule) is dropped (``omit``), moved to the last day of that
  month (``backward``) or to the first day of the next month (``forward``).
- UNTIL is inclusive. A date UNTIL bounds the local date; a floating date-time bounds the
  local wall time; a UTC (``Z``) UNTIL bounds the instant: ``occurrences`` compares resolved
  instants exactly, ``local_occurrences`` compares wall times in the ``tz`` it is given.

Over 400 lines on purpose: the parser's limits (which BYxxx a FREQ allows, ordinal ranges)
and the expansion's period arithmetic are one reading of RFC 5545/7529 and change together;
split apart, a rule accepted by one half would not be one the other half was written for.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from streams.errors import InvalidSchedule
from streams.timecore.localtime import RFC5545, DstPolicy, resolve

WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")


class Freq(StrEnum):
    DAILY = "DAILY"
    WEEKLY = "WEEKLY"
    MONTHLY = "MONTHLY"
    YEARLY = "YEARLY"


class Skip(StrEnum):
    """RFC 7529 handling of a day that a month lacks."""

    OMIT = "omit"
    BACKWARD = "backward"
    FORWARD = "forward"


@dataclass(frozen=True, slots=True)
class RecurrenceRule:
    """A parsed RRULE. ``byday`` holds ``(weekday 0=MO..6=SU, ordinal or 0)`` pairs."""

    freq: Freq
    interval: int = 1
    count: int | None = None
    until: date | datetime | None = None  # date, naive local datetime or aware UTC datetime
    byday: tuple[tuple[int, int], ...] = ()
    bymonthday: tuple[int, ...] = ()
    bymonth: tuple[int, ...] = ()
    bysetpos: tuple[int, ...] = ()
    wkst: int = 0


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One occurrence: its local wall time and the UTC instants it resolves to (1 or 2)."""

    local: datetime
    instants: tuple[datetime, ...]


# --- parsing -----------------------------------------------------------------------------

_KNOWN = {
    "FREQ",
    "INTERVAL",
    "COUNT",
    "UNTIL",
    "BYDAY",
    "BYMONTHDAY",
    "BYMONTH",
    "BYSETPOS",
    "WKST",
}
_UNSUPPORTED = {
    "BYHOUR": "the time of day comes from DTSTART",
    "BYMINUTE": "the time of day comes from DTSTART",
    "BYSECOND": "the time of day comes from DTSTART",
    "BYYEARDAY": "use BYMONTH with BYMONTHDAY",
    "BYWEEKNO": "use BYMONTH with BYDAY",
    "RSCALE": "only the Gregorian calendar is supported",
    "SKIP": "set the recurrence's skip field instead",
}
_BYDAY = re.compile(r"([+-]?)([0-9]{1,2})?(MO|TU|WE|TH|FR|SA|SU)")
_INT = re.compile(r"[+-]?[0-9]{1,4}")


def parse_rrule(text: str) -> RecurrenceRule:
    """Parse an RRULE value (``"RRULE:"`` prefix optional); raise ``InvalidSchedule`` naming
    the rule part at fault."""
    body = text.strip()
    if body.upper().startswith("RRULE:"):
        body = body[6:]
    if not body:
        raise InvalidSchedule("RRULE", "is empty")
    parts: dict[str, str] = {}
    for item in body.split(";"):
        key, sep, value = item.partition("=")
        key, value = key.strip().upper(), value.strip().upper()
        if not sep or not key:
            raise InvalidSchedule("RRULE", f"{item!r} is not NAME=VALUE")
        if key in _UNSUPPORTED:
            raise InvalidSchedule(key, f"is not supported; {_UNSUPPORTED[key]}")
        if key not in _KNOWN:
            raise InvalidSchedule(key, "is not a known RRULE part")
        if key in parts:
            raise InvalidSchedule(key, "appears more than once")
        if not value:
            raise InvalidSchedule(key, "has no value")
        parts[key] = value

    if "FREQ" not in parts:
        raise InvalidSchedule("FREQ", "is required")
    try:
        freq = Freq(parts["FREQ"])
    except ValueError:
        raise InvalidSchedule(
            "FREQ", f"{parts['FREQ']} is not supported; use DAILY, WEEKLY, MONTHLY or YEARLY"
        ) from None
    interval = _positive(parts, "INTERVAL", 1, 1000) or 1
    count = _positive(parts, "COUNT", 1, 100_000)
    if count is not None and "UNTIL" in parts:
        raise InvalidSchedule("UNTIL", "cannot be combined with COUNT")
    until = _until(parts["UNTIL"]) if "UNTIL" in parts else None
    bymonth = _ints(parts, "BYMONTH", 1, 12, negative=False)
    bymonthday = _ints(parts, "BYMONTHDAY", 1, 31, negative=True)
    bysetpos = _ints(parts, "BYSETPOS", 1, 366, negative=True)
    byday = _byday(parts.get("BYDAY"), freq, bool(bymonth))
    wkst = _weekday("WKST", parts["WKST"]) if "WKST" in parts else 0
    if bymonthday and freq is Freq.WEEKLY:
        raise InvalidSchedule("BYMONTHDAY", "cannot be used with FREQ=WEEKLY")
    if bysetpos and not (byday or bymonthday or bymonth):
        raise InvalidSchedule("BYSETPOS", "needs BYDAY, BYMONTHDAY or BYMONTH")
    return RecurrenceRule(freq, interval, count, until, byday, bymonthday, bymonth, bysetpos, wkst)


def _positive(parts: dict[str, str], key: str, lo: int, hi: int) -> int | None:
    if key not in parts:
        return None
    value = parts[key]
    if not (value.isascii() and value.isdigit()):
        raise InvalidSchedule(key, f"{value!r} is not a whole number")
    n = int(value)
    if not lo <= n <= hi:
        raise InvalidSchedule(key, f"{n} is out of range {lo}..{hi}")
    return n


def _ints(parts: dict[str, str], key: str, lo: int, hi: int, *, negative: bool) -> tuple[int, ...]:
    if key not in parts:
        return ()
    allowed = f"{lo}..{hi} or -{hi}..-{lo}" if negative else f"{lo}..{hi}"
    values: set[int] = set()
    for item in parts[key].split(","):
        if not _INT.fullmatch(item):
            raise InvalidSchedule(key, f"{item!r} is not a number; use {allowed}")
        n = int(item)
        if n == 0:
            raise InvalidSchedule(key, f"0 is not allowed; use {allowed}")
        if not (lo <= n <= hi or (negative and -hi <= n <= -lo)):
            raise InvalidSchedule(key, f"{n} is out of range; use {allowed}")
        values.add(n)
    return tuple(sorted(values))


def _weekday(key: str, value: str) -> int:
    if value not in WEEKDAYS:
        raise InvalidSchedule(key, f"{value!r} is not a weekday (MO..SU)")
    return WEEKDAYS.index(value)


def _byday(value: str | None, freq: Freq, has_bymonth: bool) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    limit = 5 if freq is Freq.MONTHLY or has_bymonth else 53
    days: set[tuple[int, int]] = set()
    for item in value.split(","):
        m = _BYDAY.fullmatch(item)
        if m is None:
            raise InvalidSchedule("BYDAY", f"{item!r} is not a weekday like MO, 2TU or -1FR")
        sign, digits, name = m.groups()
        n = int(digits) if digits else 0
        if digits and n == 0:
            raise InvalidSchedule("BYDAY", f"{item!r}: the ordinal cannot be 0")
        if n and freq not in (Freq.MONTHLY, Freq.YEARLY):
            raise InvalidSchedule("BYDAY", f"{item!r}: ordinals need FREQ=MONTHLY or YEARLY")
        if n > limit:
            raise InvalidSchedule("BYDAY", f"{item!r}: the ordinal is out of range 1..{limit}")
        days.add((WEEKDAYS.index(name), -n if sign == "-" else n))
    return tuple(sorted(days))


def _until(value: str) -> date | datetime:
    try:
        if len(value) == 8:
            return datetime.strptime(value, "%Y%m%d").date()  # noqa: DTZ007 - a date
        if len(value) == 16 and value.endswith("Z"):
            return datetime.strptime(value[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        if len(value) == 15:
            return datetime.strptime(value, "%Y%m%dT%H%M%S")  # noqa: DTZ007 - local wall time
    except ValueError:
        pass
    raise InvalidSchedule("UNTIL", f"{value!r} is not YYYYMMDD, YYYYMMDDTHHMMSSZ or floating time")


# --- expansion -----------------------------------------------------------------------------

# Periods in 60 years (two 28-year weekday/date cycles and a non-leap century year); a rule
# silent for that long (and for at least 8 periods) is taken never to fire again.
_SILENT = {Freq.DAILY: 21_915, Freq.WEEKLY: 3_131, Freq.MONTHLY: 720, Freq.YEARLY: 60}


def local_occurrences(
    rule: RecurrenceRule,
    dtstart: datetime,
    *,
    skip: Skip = Skip.OMIT,
    exdates: frozenset[datetime] = frozenset(),
    tz: ZoneInfo | None = None,
) -> Iterator[datetime]:
    """Naive local wall times of the series, strictly increasing, from DTSTART on.

    Respects COUNT and UNTIL, drops EXDATEs (they still count toward COUNT). ``tz`` is needed
    only for a UTC UNTIL, which is then compared as a wall time in ``tz``.
    """
    until = rule.until
    if isinstance(until, datetime) and until.tzinfo is not None:
        if tz is None:
            raise ValueError("a UTC UNTIL needs the series' zone (tz=...)")
        until = until.astimezone(tz).replace(tzinfo=None)
    expanded = _expand(rule, dtstart, skip, 0, _until_day(rule, tz))
    for emitted, local in enumerate(expanded, start=1):
        if _past(local, until):
            return
        if local not in exdates:
            yield local
        if rule.count is not None and emitted >= rule.count:
            return


def occurrences(
    rule: RecurrenceRule,
    dtstart_local: datetime,
    tz: ZoneInfo,
    *,
    skip: Skip = Skip.OMIT,
    policy: DstPolicy = RFC5545,
    exdates: frozenset[datetime] = frozenset(),
    after: datetime | None = None,
) -> Iterator[Occurrence]:
    """Occurrences resolved to UTC instants with ``policy``; those with no instant (skipped
    gap) are left out, and with ``after`` only instants later than it are kept.

    Without COUNT, the expansion starts at the period containing ``after`` rather than at
    DTSTART, so a call costs O(occurrences read), not O(age of the series).
    """
    utc_until = rule.until if isinstance(rule.until, datetime) and rule.until.tzinfo else None
    stream: Iterator[datetime]
    if rule.count is None:
        first = 0
        if after is not None:
            target = after.astimezone(tz).replace(tzinfo=None) - timedelta(days=2)
            first = _period_of(rule, dtstart_local, target)
        expanded = _expand(rule, dtstart_local, skip, first, _until_day(rule, tz))
        stream = _bounded(expanded, rule, exdates, tz)
    else:
        stream = local_occurrences(rule, dtstart_local, skip=skip, exdates=exdates, tz=tz)
    for local in stream:
        instants = resolve(local.date(), local.time(), tz, policy)
        if after is not None:
            instants = tuple(i for i in instants if i > after)
        if utc_until is not None:
            instants = tuple(i for i in instants if i <= utc_until)
        if instants:
            yield Occurrence(local, instants)


def next_after_completion(
    rule: RecurrenceRule, dtstart_local: datetime, completed_on: date
) -> datetime:
    """The next instance's local due for anchor "completion": one rule interval (INTERVAL times
    the FREQ unit) after the completion's local date, at the series' time of day.

    Month and year steps clamp to the month's end (Jan 31 + 1 month = Feb 28/29). BYxxx parts
    are not applied, and COUNT/UNTIL bookkeeping is the caller's.
    """
    n = rule.interval
    if rule.freq is Freq.DAILY:
        day = completed_on + timedelta(days=n)
    elif rule.freq is Freq.WEEKLY:
        day = completed_on + timedelta(weeks=n)
    else:
        months = n if rule.freq is Freq.MONTHLY else 12 * n
        index = completed_on.year * 12 + completed_on.month - 1 + months
        year, month = divmod(index, 12)
        month += 1
        day = date(year, month, min(completed_on.day, calendar.monthrange(year, month)[1]))
    return datetime.combine(day, dtstart_local.time())


def _past(local: datetime, until: date | datetime | None) -> bool:
    if until is None:
        return False
    if isinstance(until, datetime):
        return local > until
    return local.date() > until


def _bounded(
    stream: Iterator[datetime], rule: RecurrenceRule, exdates: frozenset[datetime], tz: ZoneInfo
) -> Iterator[datetime]:
    """UNTIL and EXDATE for a stream started mid-series (no COUNT). A UTC UNTIL is checked
    exactly on instants by the caller; here it only stops the stream two days past it."""
    until = rule.until
    if isinstance(until, datetime) and until.tzinfo is not None:
        until = until.astimezone(tz).replace(tzinfo=None) + timedelta(days=2)
    for local in stream:
        if _past(local, until):
            return
        if local not in exdates:
            yield local


def _period_of(rule: RecurrenceRule, dtstart: datetime, target: datetime) -> int:
    """Index of the period (a multiple of INTERVAL) just before the one containing ``target``."""
    d0, t = dtstart.date(), target.date()
    if rule.freq is Freq.DAILY:
        units = (t - d0).days
    elif rule.freq is Freq.WEEKLY:
        units = ((t - d0).days + (d0.weekday() - rule.wkst) % 7) // 7
    elif rule.freq is Freq.MONTHLY:
        units = (t.year - d0.year) * 12 + t.month - d0.month
    else:
        units = t.year - d0.year
    # one period of slack: skip=forward can carry a date into the next period
    return max(0, units // rule.interval - 1)


def _expand(
    rule: RecurrenceRule,
    dtstart: datetime,
    skip: Skip,
    first_period: int,
    until_day: date | None,
) -> Iterator[datetime]:
    """Candidates from period ``first_period`` on: increasing, deduplicated, >= DTSTART, and
    stopping at the first period that starts after ``until_day``."""
    if _never_fires(rule, skip):
        return
    start_day, at = dtstart.date(), dtstart.time()
    last: date | None = None
    empty = 0
    limit = max(_SILENT[rule.freq] // rule.interval, 8)
    k = first_period
    while empty < limit:
        if until_day is not None and _period_start(rule, start_day, k) > until_day:
            return
        days = _period_days(rule, start_day, k, skip)
        if days is None:  # past year 9999
            return
        empty += 1
        for day in days:
            if day >= start_day and (last is None or day > last):
                last, empty = day, 0
                yield datetime.combine(day, at)
        k += 1


def _never_fires(rule: RecurrenceRule, skip: Skip) -> bool:
    """BYMONTHDAY days that no month in BYMONTH has, with nothing to move them (omit)."""
    if skip is not Skip.OMIT or not rule.bymonthday:
        return False
    longest = max(calendar.monthrange(2000, m)[1] for m in rule.bymonth or range(1, 13))
    return min(abs(v) for v in rule.bymonthday) > longest


def _period_start(rule: RecurrenceRule, start_day: date, k: int) -> date:
    step = k * rule.interval
    try:
        if rule.freq is Freq.DAILY:
            return start_day + timedelta(days=step)
        if rule.freq is Freq.WEEKLY:
            week = start_day - timedelta(days=(start_day.weekday() - rule.wkst) % 7)
            return week + timedelta(weeks=step)
        if rule.freq is Freq.MONTHLY:
            year, month = divmod(start_day.year * 12 + start_day.month - 1 + step, 12)
            return date(year, month + 1, 1)
        return date(start_day.year + step, 1, 1)
    except (OverflowError, ValueError):
        return date.max


def _until_day(rule: RecurrenceRule, tz: ZoneInfo | None) -> date | None:
    """The last local date UNTIL can allow (two days of slack for a UTC UNTIL)."""
    until = rule.until
    if until is None or not isinstance(until, datetime):
        return until
    if until.tzinfo is None:
        return until.date()
    return (until.astimezone(tz) if tz else until).date() + timedelta(days=2)


def _period_days(rule: RecurrenceRule, start_day: date, k: int, skip: Skip) -> list[date] | None:
    step = k * rule.interval
    try:
        if rule.freq is Freq.DAILY:
            day = start_day + timedelta(days=step)
            days = [day] if _daily_match(rule, day) else []
        elif rule.freq is Freq.WEEKLY:
            week = start_day - timedelta(days=(start_day.weekday() - rule.wkst) % 7)
            week += timedelta(weeks=step)
            wanted = {w for w, _ in rule.byday} or {start_day.weekday()}
            days = [
                d
                for d in (week + timedelta(days=i) for i in range(7))
                if d.weekday() in wanted and (not rule.bymonth or d.month in rule.bymonth)
            ]
        elif rule.freq is Freq.MONTHLY:
            year, month = divmod(start_day.year * 12 + start_day.month - 1 + step, 12)
            month += 1
            if year > 9999:
                return None
            days = (
                []
                if rule.bymonth and month not in rule.bymonth
                else _month_days(rule, year, month, start_day.day, skip, month_scope=True)
            )
        else:
            year = start_day.year + step
            if year > 9999:
                return None
            days = _year_days(rule, year, start_day, skip)
    except OverflowError:
        return None
    days = sorted(set(days))
    return _setpos(days, rule.bysetpos) if rule.bysetpos else days


def _daily_match(rule: RecurrenceRule, day: date) -> bool:
    if rule.bymonth and day.month not in rule.bymonth:
        return False
    if rule.byday and day.weekday() not in {w for w, _ in rule.byday}:
        return False
    if rule.bymonthday:
        length = calendar.monthrange(day.year, day.month)[1]
        return day.day in rule.bymonthday or day.day - length - 1 in rule.bymonthday
    return True


def _year_days(rule: RecurrenceRule, year: int, start_day: date, skip: Skip) -> list[date]:
    if rule.bymonth:
        months: tuple[int, ...] | range = rule.bymonth
    elif rule.bymonthday or rule.byday:
        months = range(1, 13)
    else:
        months = (start_day.month,)
    if rule.byday and not rule.bymonth:
        # ordinals count within the year (20MO = the 20th Monday of the year)
        in_year = _weekdays_in(date(year, 1, 1), date(year, 12, 31), rule.byday)
        if not rule.bymonthday:
            return sorted(in_year)
        days = [
            d
            for m in months
            for d in _month_days(rule, year, m, start_day.day, skip, month_scope=False)
        ]
        return [d for d in days if d in in_year]
    return [
        d for m in months for d in _month_days(rule, year, m, start_day.day, skip, month_scope=True)
    ]


def _month_days(
    rule: RecurrenceRule, year: int, month: int, default_day: int, skip: Skip, *, month_scope: bool
) -> list[date]:
    """Days of one month from BYMONTHDAY (or DTSTART's day) and BYDAY; a day the month lacks
    is handled by ``skip``. With ``month_scope`` BYDAY ordinals count within the month."""
    length = calendar.monthrange(year, month)[1]
    if rule.byday and not rule.bymonthday:
        return sorted(_weekdays_in(date(year, month, 1), date(year, month, length), rule.byday))
    valid: list[date] = []
    moved: list[date] = []
    for v in rule.bymonthday or (default_day,):
        d = v if v > 0 else length + v + 1
        if 1 <= d <= length:
            valid.append(date(year, month, d))
        elif skip is Skip.BACKWARD:
            moved.append(date(year, month, length))
        elif skip is Skip.FORWARD:
            moved.append(date(year, month, length) + timedelta(days=1))
    if rule.byday and month_scope:
        allowed = _weekdays_in(date(year, month, 1), date(year, month, length), rule.byday)
        valid = [d for d in valid if d in allowed]
    return valid + moved


def _weekdays_in(first: date, last: date, byday: tuple[tuple[int, int], ...]) -> set[date]:
    """Days in [first, last] matching BYDAY, ordinals counted within that span."""
    found: set[date] = set()
    for weekday, n in byday:
        day = first + timedelta(days=(weekday - first.weekday()) % 7)
        span = [day + timedelta(weeks=i) for i in range((last - day).days // 7 + 1)]
        if n == 0:
            found.update(span)
        elif -len(span) <= (n - 1 if n > 0 else n) < len(span):
            found.add(span[n - 1 if n > 0 else n])
    return found


def _setpos(days: list[date], positions: tuple[int, ...]) -> list[date]:
    n = len(days)
    return sorted(
        {days[p - 1 if p > 0 else p] for p in positions if -n <= (p - 1 if p > 0 else p) < n}
    )
