"""Daily local-time windows: ``[start, end)`` on the wall clock of a zone, instants in UTC.

Owns when a window such as 22:00-04:00 Europe/Berlin opens and closes on each local date
(a window whose end is not after its start crosses midnight and closes the next local day),
whether an instant is inside one, and the next windows after an instant. Edges are resolved
with the job's DST policy, read for edges: a start or end in a spring-forward gap follows
``nonexistent`` (``skip`` is read as ``gap_edge``: an edge cannot be skipped, the window
still opens); an edge in a fall-back fold takes the first reading for the start and the
second for the end when ``ambiguous`` is ``both`` (the wider window), otherwise the reading
the policy names. So on DST days a window is an hour shorter or longer than its wall-clock
length.

Must not read the clock: every function takes the instant it is about.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from streams.timecore.localtime import (
    RFC5545,
    Ambiguous,
    DstPolicy,
    Nonexistent,
    local_date_of,
    resolve,
)


@dataclass(frozen=True, slots=True)
class DailyWindow:
    """A wall-clock window repeated every local day; ``end <= start`` crosses midnight."""

    start: time
    end: time

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    @property
    def length_s(self) -> int:
        """The nominal length on a day without a DST transition."""
        s = self.start.hour * 3600 + self.start.minute * 60
        e = self.end.hour * 3600 + self.end.minute * 60
        return (e - s) % 86400 or 86400

    def text(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def on(self, local_date: date, tz: ZoneInfo,
           policy: DstPolicy = RFC5545) -> tuple[datetime, datetime]:
        """The window opening on ``local_date``: (opens_at, closes_at) in UTC."""
        end_date = local_date + timedelta(days=1) if self.crosses_midnight else local_date
        opens = _edge(local_date, self.start, tz, policy, last=False)
        closes = _edge(end_date, self.end, tz, policy, last=True)
        return opens, max(closes, opens)

    def containing(self, at: datetime, tz: ZoneInfo,
                   policy: DstPolicy = RFC5545) -> tuple[datetime, datetime] | None:
        """The window ``at`` falls in, or None when it is outside every window."""
        day = local_date_of(at, tz)
        for d in (day - timedelta(days=1), day):
            opens, closes = self.on(d, tz, policy)
            if opens <= at < closes:
                return opens, closes
        return None

    def windows(self, after: datetime, tz: ZoneInfo,
                policy: DstPolicy = RFC5545) -> Iterator[tuple[datetime, datetime]]:
        """The windows that have not closed at ``after`` (the current one first), in order."""
        d = local_date_of(after, tz) - timedelta(days=1)
        while True:
            opens, closes = self.on(d, tz, policy)
            if closes > after and closes > opens:
                yield opens, closes
            d += timedelta(days=1)


def _edge(d: date, t: time, tz: ZoneInfo, policy: DstPolicy, *, last: bool) -> datetime:
    nonexistent = (Nonexistent.GAP_EDGE if policy.nonexistent is Nonexistent.SKIP
                   else policy.nonexistent)
    ambiguous = policy.ambiguous
    if ambiguous is Ambiguous.BOTH:
        ambiguous = Ambiguous.SECOND if last else Ambiguous.FIRST
    instants = resolve(d, t, tz, DstPolicy(nonexistent, ambiguous))
    return instants[0].astimezone(UTC)


def parse_hhmm(text: object) -> time:
    """``HH:MM`` (00:00-23:59) as a time; ValueError with the reason otherwise."""
    if not isinstance(text, str) or len(text) != 5 or text[2] != ":" \
            or not (text[:2] + text[3:]).isdigit():
        raise ValueError(f"{text!r} is not a local time HH:MM")
    hour, minute = int(text[:2]), int(text[3:])
    if hour > 23 or minute > 59:
        raise ValueError(f"{text!r} is out of range 00:00-23:59")
    return time(hour, minute)
