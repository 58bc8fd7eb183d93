"""Benchmark: memory per pending task, restore time, and that deleted state goes away.

For one partition holding N open tasks (each with two reminders in the future, so pending
in the due index), print the Python heap per pending task (tracemalloc) and the resident
set growth per task, the changelog bytes per task and the time to restore the partition
from its changelog. Then delete every task and print the heap per version marker, tick past
the retention and print what is left: the state is bounded by what is live.

    .venv/bin/python bench/state_memory.py            # N = 10k and 100k
    .venv/bin/python bench/state_memory.py 1000000    # one N of your choice
"""

from __future__ import annotations

import gc
import os
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

from schemas import Task, TaskDeleted, TaskUpserted
from streams.timeline.changelog import restore, snapshot
from streams.timeline.state import PartitionState

T0 = datetime(2026, 3, 1, tzinfo=UTC)
RETENTION_S = 3600


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _upsert(i: int) -> TaskUpserted:
    due = T0 + timedelta(days=30, seconds=i)
    return TaskUpserted.model_validate({
        "type": "task.upserted", "event_id": f"e{i}", "occurred_at": T0,
        "task": Task.model_validate({
            "task_id": f"task-{i:07d}", "user_id": f"user-{i % 5000:05d}", "version": 1,
            "title": f"Call the plumber about the kitchen sink #{i}", "status": "open",
            "due_at": due, "reminders": [{"before_minutes": 15}, {"before_minutes": 1440}]})})


def _delete(i: int) -> TaskDeleted:
    return TaskDeleted.model_validate({
        "type": "task.deleted", "event_id": f"d{i}", "occurred_at": T0,
        "task_id": f"task-{i:07d}", "user_id": f"user-{i % 5000:05d}", "version": 2})


def _heap() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def measure(n: int) -> dict[str, float]:
    gc.collect()
    rss0 = _rss_bytes()
    state = PartitionState(0, reminder_catchup_s=900, retention_s=RETENTION_S)
    for i in range(n):
        state.apply(_upsert(i))
    rss_per_task = (_rss_bytes() - rss0) / n
    changelog = [(key, snapshot(state, key)) for key in state.tasks]
    changelog_bytes = sum(len(v or b"") for _, v in changelog)
    del state
    start = time.perf_counter()
    restored = PartitionState(0, reminder_catchup_s=900, retention_s=RETENTION_S)
    restore(restored, changelog)
    restore_s = time.perf_counter() - start
    assert len(restored.tasks) == n
    del restored, changelog

    tracemalloc.start()
    heap0 = _heap()
    state = PartitionState(0, reminder_catchup_s=900, retention_s=RETENTION_S)
    state.tick(T0)
    for i in range(n):
        state.apply(_upsert(i))
    heap_pending, pending = _heap() - heap0, len(state.index)
    for i in range(n):
        state.apply(_delete(i))
    heap_markers = _heap() - heap0
    tombstones = state.tick(T0 + timedelta(seconds=RETENTION_S)).counts["tombstones"]
    heap_left = _heap() - heap0
    tracemalloc.stop()
    return {"n": n, "pending": pending, "heap_per_task": heap_pending / n,
            "rss_per_task": rss_per_task, "changelog_per_task": changelog_bytes / n,
            "restore_s": restore_s, "heap_per_marker": heap_markers / n,
            "tombstones": tombstones, "left_after_expiry": heap_left / n,
            "tasks_left": len(state.tasks)}


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000]
    print(f"{'tasks':>8} {'index':>8} {'heap B/task':>12} {'RSS B/task':>11} "
          f"{'changelog B/task':>17} {'restore s':>10} {'heap B/deleted':>15} "
          f"{'tombstones':>11} {'left B/task':>12}")
    for n in sizes:
        r = measure(n)
        print(f"{r['n']:>8} {r['pending']:>8} {r['heap_per_task']:>12.0f} "
              f"{r['rss_per_task']:>11.0f} {r['changelog_per_task']:>17.0f} "
              f"{r['restore_s']:>10.2f} {r['heap_per_marker']:>15.0f} {r['tombstones']:>11} "
              f"{r['left_after_expiry']:>12.0f}")
        assert r["tasks_left"] == 0


if __name__ == "__main__":
    main()
