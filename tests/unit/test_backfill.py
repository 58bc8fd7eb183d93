"""streams.processes.backfill.filled: gaps in the logged ticks are filled on the grid, inside
the window only, with events kept in place by their broker time."""

from __future__ import annotations

from datetime import timedelta

from streams import codec
from streams.kafka.client import Record
from streams.processes.backfill import filled
from tests.model import ts

STEP = timedelta(seconds=60)


def _tick(offset: int, at: str) -> Record:
    when = ts(at)
    return Record("tl", 0, offset, None, codec.encode_tick(when), int(when.timestamp() * 1000))


def _event(offset: int, at: str) -> Record:
    return Record("tl", 0, offset, b"u", b'{"type":"x"}', int(ts(at).timestamp() * 1000))


def _shape(records: list[Record]) -> list[str]:
    out = []
    for r in records:
        if r.key is not None:
            out.append(f"event@{r.offset}")
        else:
            tick = codec.decode_timeline(r.value)
            out.append(("" if r.offset >= 0 else "~") + tick.tick_at.strftime("%H:%M"))  # type: ignore[union-attr]
    return out


def test_a_log_without_gaps_is_unchanged() -> None:
    log = [_tick(0, "2026-07-01T10:00:00Z"), _event(1, "2026-07-01T10:00:30Z"),
           _tick(2, "2026-07-01T10:01:00Z")]
    assert list(filled(log, ts("2026-07-01T00:00:00Z"), ts("2026-07-02T00:00:00Z"), STEP)) == log


def test_a_gap_is_filled_on_the_grid_with_events_at_their_broker_time() -> None:
    log = [_tick(0, "2026-07-01T10:00:00Z"), _event(1, "2026-07-01T10:03:30Z"),
           _tick(2, "2026-07-01T10:06:00Z")]
    got = _shape(list(filled(log, ts("2026-07-01T09:00:00Z"), ts("2026-07-01T11:00:00Z"),
                             STEP)))
    assert got == ["10:00", "~10:01", "~10:02", "~10:03", "event@1", "~10:04", "~10:05",
                   "10:06"]


def test_only_the_window_is_filled() -> None:
    log = [_tick(0, "2026-07-01T10:00:00Z"), _tick(1, "2026-07-01T10:10:00Z")]
    got = _shape(list(filled(log, ts("2026-07-01T10:03:00Z"), ts("2026-07-01T10:05:00Z"),
                             STEP)))
    assert got == ["10:00", "~10:03", "~10:04", "~10:05", "10:10"]


def test_events_after_the_last_tick_stay_at_the_end() -> None:
    log = [_tick(0, "2026-07-01T10:00:00Z"), _event(1, "2026-07-01T10:00:10Z")]
    assert list(filled(log, ts("2026-07-01T09:00:00Z"), ts("2026-07-01T11:00:00Z"),
                       STEP)) == log
