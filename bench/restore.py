"""Benchmark: restoring a worker's timeline state, and the memory a pending task costs.

1. In process: the resident memory of one partition's restored state per pending task
   (each task open, timed, with two pending reminders), for N tasks.
2. Against the broker of the environment (KAFKA_BOOTSTRAP_SERVERS): PARTITIONS changelog
   partitions of N tasks each are written under a fresh app id, a `cronorch worker` is
   started on them, and its log says how long the restore of every timeline partition
   took, whether the group churned meanwhile (any revoke or second assignment of the
   timeline group after the first one: a restore that starved heartbeats would cost the
   member its session), the whole restore (from the timeline's "partitions assigned" to its
   last "partition restored"), the worker's CPU seconds over that span (sampled from
   /proc every 0.1 s: less noisy than wall time on a shared machine), the event-loop stalls
   it logged, and the worker's RSS once restored (and its peak).

    .venv/bin/python bench/restore.py                 # 6 partitions x 100k tasks
    .venv/bin/python bench/restore.py --tasks 20000   # quicker
    .venv/bin/python bench/restore.py --broker-only --tasks 166667   # issue 9: 1M tasks
    .venv/bin/python bench/restore.py --broker-only --tasks 166667 --reuse APP_ID
        # the same changelog again (the app id a run printed): no writing, e.g. to compare
        # two trees one after the other

Machines here are noisy and shared: read durations as orders of magnitude.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import datetime
from pathlib import Path

import orjson

from streams.kafka import client as kafka
from streams.settings import Settings, Topics
from streams.testing import changelog
from streams.timeline.changelog import restore
from streams.timeline.state import PartitionState

ROOT = Path(__file__).resolve().parent.parent


def rss_bytes(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def memory_per_task(tasks: int) -> tuple[float, float, float, int]:
    """(bytes per pending task live in the restored state, the same by RSS growth, restore
    seconds, pending reminders) for one partition.

    The live bytes (tracemalloc, counted after the restore's input is freed) are what the
    state holds; the RSS growth also keeps what the allocator did not give back.
    """
    entries = list(changelog.entries(0, tasks))
    gc.collect()
    before = rss_bytes()
    started = time.monotonic()
    state = PartitionState(0, reminder_catchup_s=900)
    restore(state, ((k.decode(), v) for k, v in entries))
    took_s = time.monotonic() - started
    del entries
    gc.collect()
    rss_growth = rss_bytes() - before
    # Live size: restore again under tracemalloc (slower, so not the one timed above).
    again = list(changelog.entries(0, tasks))
    del state
    gc.collect()
    tracemalloc.start()
    state = PartitionState(0, reminder_catchup_s=900)
    restore(state, ((k.decode(), v) for k, v in again))
    del again
    gc.collect()
    live, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    pending = sum(len(t.pending(state.watermark)) for t in state.tasks.values())
    return live / tasks, rss_growth / tasks, took_s, pending


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ts(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00")).timestamp()


def _settings(app_id: str) -> Settings:
    topics = Topics(**{f: f"{app_id}.{getattr(Topics(), f)}" for f in Topics.model_fields})
    return Settings.from_env().model_copy(update={"app_id": app_id, "topics": topics,
                                                  "metrics_port": 0})




def orjson_lines(log: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in log.read_bytes().splitlines()
            if line.startswith(b"{")]


def _timeline_events(log: Path) -> list[dict[str, object]]:
    return [doc for doc in orjson_lines(log) if doc.get("role") == "timeline"]


def restore_on_broker(partitions: int, tasks: int, timeout_s: float,
                      reuse: str | None = None) -> dict[str, object]:
    settings = _settings(reuse or f"bench-restore-{uuid.uuid4().hex[:6]}")
    settings = settings.model_copy(update={"timeline_partitions": partitions})

    async def seed() -> float:
        if reuse is not None:
            return 0.0
        await kafka.ensure_topics(settings)
        started = time.monotonic()
        for p in range(partitions):
            await changelog.write(settings, p, tasks)
        return time.monotonic() - started

    seed_s = asyncio.run(seed())
    log = Path(tempfile.mkdtemp(prefix="bench-restore-")) / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], cwd=ROOT,
                                env=settings.environ(), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    cpu_assigned = cpu_restored = 0.0
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            cpu = cpu_s(proc.pid)
            events = _timeline_events(log)
            if not cpu_assigned and any(e["event"] == "partitions assigned" for e in events):
                cpu_assigned = cpu
            restored = [e for e in events if e["event"] == "partition restored"]
            if len({e["partition"] for e in restored}) == partitions:
                cpu_restored = cpu
                break
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}: see {log}")
            time.sleep(0.1)
        else:
            raise RuntimeError(f"not restored within {timeout_s} s: see {log}")
        time.sleep(3 * settings.session_timeout_ms / 1000)  # a lost session shows up by now
        worker_rss = rss_bytes(proc.pid)
        worker_peak = peak_rss_bytes(proc.pid)
        events = _timeline_events(log)
        stalls = [e for e in orjson_lines(log) if e.get("event") == "event loop stalled"]
    finally:
        proc.terminate()
        proc.wait(60)
    assigned = [e for e in events if e["event"] == "partitions assigned"]
    revoked = [e for e in events if e["event"] == "partitions revoked" and e["partitions"]]
    restored = [e for e in events if e["event"] == "partition restored"]
    durations = [float(e["duration_s"]) for e in restored]  # type: ignore[arg-type]
    return {"seed_s": round(seed_s, 1), "assignments": len(assigned),
            "restore_s": round(max(map(_ts, restored)) - _ts(assigned[0]), 2),
            "restore_cpu_s": round(cpu_restored - cpu_assigned, 2),
            "stalls": len(stalls), "stall_s_max": max(
                (float(e["stall_s"]) for e in stalls), default=0.0),  # type: ignore[arg-type]
            "worker_peak_rss_mb": round(worker_peak / 2**20),
            "revokes": len(revoked), "restores": len(durations),
            "restore_s_max": max(durations), "restore_s_min": min(durations),
            "worker_rss_mb": round(worker_rss / 2**20),
            "worker_rss_per_task_bytes": round(worker_rss / (partitions * tasks)),
            "log": str(log), "app_id": settings.app_id}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--tasks", type=int, default=100_000, help="per partition")
    parser.add_argument("--timeout-s", type=float, default=900)
    parser.add_argument("--no-broker", action="store_true", help="only the in-process part")
    parser.add_argument("--broker-only", action="store_true", help="skip the in-process part")
    parser.add_argument("--reuse", metavar="APP_ID",
                        help="restart on the changelog an earlier run wrote (its app id, the "
                        "same --partitions and --tasks) instead of writing one")
    args = parser.parse_args()

    if not args.broker_only:
        in_process(args.tasks)
    if not args.no_broker:
        on_broker(args)


def on_broker(args: argparse.Namespace) -> None:
    result = restore_on_broker(args.partitions, args.tasks, args.timeout_s, args.reuse)
    print(f"app id: {result['app_id']}")
    churn = "no churn" if result["assignments"] == 1 and result["revokes"] == 0 else "CHURN"
    print(f"broker: {args.partitions} x {args.tasks:,} tasks written in {result['seed_s']} s; "
          f"restored {result['restores']} partitions in {result['restore_s_min']:.1f}-"
          f"{result['restore_s_max']:.1f} s each, all of them {result['restore_s']} s after "
          f"the assignment, {result['restore_cpu_s']} CPU s; {result['stalls']} event-loop "
          f"stall(s), longest {result['stall_s_max']} s; timeline group: "
          f"{result['assignments']} assignment(s), {result['revokes']} revoke(s): {churn}; "
          f"worker RSS {result['worker_rss_mb']} MiB = "
          f"{result['worker_rss_per_task_bytes']:,} bytes per pending task, all included "
          f"(peak {result['worker_peak_rss_mb']} MiB)")
    print(f"worker log: {result['log']}")


def in_process(tasks: int) -> None:
    live, rss, took_s, pending = memory_per_task(tasks)
    print(f"in process: {tasks:,} tasks ({pending:,} pending reminders) restored in "
          f"{took_s:.1f} s; memory per pending task: {live:,.0f} bytes live in the state "
          f"({live * tasks / 2**20:,.0f} MiB per partition), {rss:,.0f} bytes of RSS "
          "growth")


if __name__ == "__main__":
    main()
