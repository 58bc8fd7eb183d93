"""Benchmark: decoding a task event, in-process — issue 9's decoding share of the ingest.

N encoded ``task.upserted`` (the suite's workload: ``bench.workload.task_event``, plus a
share with two reminders, one ``at``, and a recurrence) go through each path; µs of CPU
per event (``time.process_time``, so other processes on a shared machine stretch it
less than wall time), the best of R interleaved rounds, and the median:

- **re-keyer**: before, the full validation of ``todo.task-events``
  (``tests/legacy_decoding``, the decoders of commit 1e4ecda); now ``codec.route_task_event``,
  which reads the user only.
- **timeline**: before, the old full validation of a timeline record; now
  ``codec.decode_timeline`` (limits as field constraints, instants shaped in Rust).
- **both hops**: the sum, per event that goes through the worker.
- two alternatives for the timeline, measured so the choice is on record: the adapter's
  ``validate_json`` on the bytes, and ``validate_python`` after ``orjson.loads``.

    .venv/bin/python -m bench.decode [--n 20000] [--rounds 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from bench.workload import task_event
from schemas import TIMELINE_ADAPTER
from streams import codec
from tests import legacy_decoding as legacy

FIRE_AT = datetime(2026, 3, 2, 9, tzinfo=UTC)
OCCURRED_AT = FIRE_AT - timedelta(days=1)


def events(n: int) -> list[bytes]:
    """n encoded events; every fifth with two reminders (one ``at``, with an offset) and a
    weekly rule, the shape a real client sends next to the suite's minimal one."""
    out = []
    for i in range(n):
        doc = task_event(i, FIRE_AT, OCCURRED_AT)
        if i % 5 == 4:
            doc["task"]["reminders"] = [{"before_minutes": 15}, {"at": "2026-03-02T10:00:00+01:00"}]
            doc["task"]["recurrence"] = {"rrule": "FREQ=WEEKLY;BYDAY=MO", "anchor": "due",
                                         "skip": "omit"}
        out.append(orjson.dumps(doc))
    return out


def _validate_json(value: bytes | None) -> Any:
    return TIMELINE_ADAPTER.validate_json(codec.checked_size(value))


def _validate_python(value: bytes | None) -> Any:
    return TIMELINE_ADAPTER.validate_python(orjson.loads(codec.checked_size(value)))


PATHS: dict[str, Callable[[bytes | None], Any]] = {
    "re-keyer, before": legacy.decode_task_event,
    "re-keyer, now": codec.route_task_event,
    "timeline, before": legacy.decode_timeline,
    "timeline, now": codec.decode_timeline,
    "timeline, validate_json": _validate_json,
    "timeline, orjson + validate_python": _validate_python,
}


def _round(decode: Callable[[bytes | None], Any], values: list[bytes]) -> float:
    gc.collect()
    start = time.process_time_ns()
    for value in values:
        decode(value)
    return (time.process_time_ns() - start) / 1_000 / len(values)


def measure(n: int, rounds: int) -> dict[str, dict[str, float]]:
    values = events(n)
    for decode in PATHS.values():  # warm caches (the RRULE cache, pydantic's first call)
        for value in values[:100]:
            decode(value)
    samples: dict[str, list[float]] = {name: [] for name in PATHS}
    for _ in range(rounds):
        for name, decode in PATHS.items():
            samples[name].append(_round(decode, values))
    return {name: {"best_us": min(s), "median_us": statistics.median(s)}
            for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="events (default 20000)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = measure(args.n, args.rounds)
    print(f"{'path':<36} {'best µs/event':>14} {'median':>8}   (CPU time, {args.n} events, "
          f"{args.rounds} rounds)")
    for name, f in figures.items():
        print(f"{name:<36} {f['best_us']:>14.2f} {f['median_us']:>8.2f}")
    both = {when: figures[f"re-keyer, {when}"]["best_us"] + figures[f"timeline, {when}"]["best_us"]
            for when in ("before", "now")}
    print(f"{'both hops, before':<36} {both['before']:>14.2f}")
    print(f"{'both hops, now':<36} {both['now']:>14.2f}   "
          f"({both['before'] / both['now']:.1f}x less CPU per event)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"n": args.n, "rounds": args.rounds, "paths": figures,
                       "both_hops_us": both}, out, indent=2)


if __name__ == "__main__":
    main()
