"""Benchmark: a tick costs O(fires due), not O(tasks) — the due index at work.

For partitions holding N = 10k, 100k and 300k open tasks (every task with a reminder in
the far future, plus 100 reminders due at each measured tick), time the ticks and print
µs per tick and the ratio to the smallest N. A scan over tasks would grow the ratio with
N (30 times from 10k to 300k); the index keeps it near 1. Also prints the resident memory per
task. Machines here are noisy: read the ratios of one run, not absolute figures.

    .venv/bin/python bench/tick_cost.py
"""

from __future__ import annotations

import resource
import time
from datetime import UTC, datetime, timedelta

from schemas import Task, TaskUpserted
from streams.timeline.state import PartitionState

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DUE_PER_TICK = 100
TICKS = 200


def task(i: int, fire: datetime) -> TaskUpserted:
    return TaskUpserted.model_validate({
        "type": "task.upserted", "event_id": f"e{i}", "occurred_at": T0,
        "task": Task.model_validate({
            "task_id": f"t{i}", "user_id": f"u{i % 500}", "version": 1, "title": "x",
            "status": "open", "due_at": fire + timedelta(hours=1),
            "reminders": [{"at": fire}]})})


def measure(n: int) -> tuple[float, float]:
    state = PartitionState(0, reminder_catchup_s=900)
    far = T0 + timedelta(days=365)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(n):
        state.apply(task(i, far + timedelta(seconds=i)))
    for k in range(TICKS * DUE_PER_TICK):
        state.apply(task(n + k, T0 + timedelta(seconds=60 * (k // DUE_PER_TICK + 1))))
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    notified = 0
    for t in range(1, TICKS + 1):
        notified += state.tick(T0 + timedelta(seconds=60 * t)).counts["notified"]
    elapsed = time.perf_counter() - start
    assert notified == TICKS * DUE_PER_TICK, notified
    return elapsed / TICKS * 1e6, max(0, rss_after - rss_before) * 1024 / max(n, 1)


def main() -> None:
    base = None
    print(f"{'tasks':>8} {'us/tick':>10} {'ratio':>7} {'bytes/task':>11}"
          f"  ({DUE_PER_TICK} due per tick)")
    for n in (10_000, 100_000, 300_000):
        us, per_task = measure(n)
        base = base or us
        print(f"{n:>8} {us:>10.0f} {us / base:>7.2f} {per_task:>11.0f}")


if __name__ == "__main__":
    main()
