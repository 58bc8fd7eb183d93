"""Archive interference: reminder lateness while a maintenance archive runs, next to the same
figure without it (issue 11 part 3, "maintenance never slows reminders", target ≤ 1.1).

Owns the suite's ``archive`` scenario and its child process. Against the local stack:

1. seed N completed tasks in PostgreSQL with ``generate_series`` (completed 3001+ days ago,
   so a job with ``older_than_days: 3000`` archives these and nothing else in the database);
2. time one archive of them alone (rows/s with no reminder load); the lateness
   window is ``--duration-s`` or that time if shorter, so the archive, slower under load
   than alone, is still running when the window ends (``--archive-window-s`` sets the
   window instead and skips this step);
3. per window a fresh worker and the live tick producer (1 s ticks) on topics of their own,
   measured as the suite's lateness scenario measures: reminders due at ``--rate``/s for
   the window, read ``read_committed``
   as they become readable, p50/p99/max of arrival - ``fire_at`` and p50/p99 of arrival -
   ``tick_at``; once without maintenance and once with an archive started at the window's
   first fire (``jobrunner.run_manual`` in a child process, as ``cronorch jobs run`` and the
   job runner run it: a process and a pool of their own); ``jobrunner.undo`` puts the
   rows back before each archive after the first (the last is simply deleted at the end). With
   ``--archive-repeats`` > 1 the pairs alternate (without/with, with/without, …) so a drift
   of the shared machine's load falls on both sides.

Each window also records what tells CPU contention from lock or IO contention: CPU seconds
of the worker, tick producer, broker, PostgreSQL and archive; the worker's and broker's
run-queue wait (``/proc/<pid>/task/*/schedstat``: time runnable but not running); the
machine's busy and iowait share (``/proc/stat``) and CPU/IO pressure (``/proc/pressure``).
The worker never touches PostgreSQL, so an archive can reach a reminder only through the
shared cores, disk and broker.

    python -m bench.archive_interference [suite flags: --archive-rows, --rate, …]   (alone)
    python -m bench.archive_interference child --job JSON   (the archive, driven by stdin)

The child prints ``ready`` once imported, waits for ``go`` on stdin, runs the job through
``run_manual`` and prints the run (``JobRun`` as JSON) with its CPU seconds on one line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import workload
from bench.harness import (
    Offsets,
    StackCpu,
    WorkerLog,
    cpu_seconds,
    load_average,
    pid_of,
    planned,
    poll_until,
    stable,
    stop,
)
from streams.jobs import registry
from streams.kafka import client as kafka
from streams.postgres.connector import Connector
from streams.processes import jobrunner
from streams.settings import Settings
from tests.support import ROOT, env_for, publish

if TYPE_CHECKING:  # the suite imports this module; the reverse is for types only
    from bench.suite import Run

ROLES = ("rekeyer", "timeline")
OLDER_THAN_DAYS = 3000  # seeded rows are older; rows of tests and demos are not
SMOKE_ROWS = 2000

FIGURES = (
    "archive.rows", "archive.archived_per_s",
    "archive.without.p99_s", "archive.with.p99_s", "archive.ratio", "archive.overlap",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--archive-rows", type=int, default=1_000_000,
                        help="archive: completed tasks seeded and archived (default 1000000)")
    parser.add_argument("--archive-batch", type=int, default=1000,
                        help="archive: the job's batch_size (default 1000, the registry's)")
    parser.add_argument("--archive-pause-s", type=float, default=0.0,
                        help="archive: the job's batch_pause_s (default 0, the registry's)")
    parser.add_argument("--archive-window-s", type=float, default=0.0,
                        help="archive: seconds of reminder load per window (default 0: "
                             "--duration-s, or the archive's time alone if shorter, at least "
                             "3; a value skips the run alone)")
    parser.add_argument("--archive-repeats", type=int, default=1,
                        help="archive: pairs of windows, without and with (default 1)")
    parser.add_argument("--ingest-per-s", type=float, default=2000.0,
                        help="archive run alone: the worker's ingest rate, which sets the "
                             "lead before a window (the suite measures it; default 2000)")


def smoke(args: argparse.Namespace) -> None:
    """Tiny sizes for ``--smoke``: proves the scenario runs (the run alone, its undo, both
    windows), measures nothing."""
    args.archive_rows, args.archive_repeats = SMOKE_ROWS, 1


# --- the child: one archive run, as `cronorch jobs run` does it ---------------------------------

def job_document(name: str, batch_size: int, batch_pause_s: float) -> dict[str, Any]:
    return {"name": name, "kind": "archive_completed", "schedule": "0 3 * * *",
            "params": {"older_than_days": OLDER_THAN_DAYS, "batch_size": batch_size},
            "timeout_s": 3600, "batch_pause_s": batch_pause_s,
            # One attempt: a failed archive fails the scenario instead of hiding in retries.
            "retries": {"max_attempts": 1, "base_delay_s": 1, "max_delay_s": 1}}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _child(job: dict[str, Any]) -> None:
    settings = Settings.from_env()
    jobs = registry.parse({"jobs": [job]})
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    go, cpu_go = time.time(), _cpu_s()
    run = await jobrunner.run_manual(settings, jobs, job["name"])
    doc = None if run is None else run.model_dump(mode="json")
    print(orjson.dumps({"go": go, "end": time.time(), "cpu_s": _cpu_s() - cpu_go,
                        "run": doc}).decode(), flush=True)


class Archive:
    """The child process of one archive run: started ahead, released with ``go``."""

    def __init__(self, settings: Settings, job: dict[str, Any], log: Path) -> None:
        with log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.archive_interference", "child", "--job",
                 orjson.dumps(job).decode()], cwd=ROOT, env=env_for(settings),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sink)
        self.log = log

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if line.strip() != b"ready":
            raise RuntimeError(f"the archive child did not start; see {self.log}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid)

    async def result(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout_s)
        self.proc.wait(30)
        if not line:
            raise RuntimeError(f"the archive child ended without a result; see {self.log}")
        doc: dict[str, Any] = orjson.loads(line)
        run = doc["run"]
        if run is None or run["status"] != "succeeded":
            raise RuntimeError(f"the archive did not succeed: {run}; see {self.log}")
        return doc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


# --- PostgreSQL: seed, undo, clean up -----------------------------------------------------------

async def seed(url: str, prefix: str, rows: int, now: datetime) -> None:
    """``rows`` completed tasks, oldest first by id, all past the job's cutoff."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("""
            INSERT INTO tasks (task_id, user_id, title, status, completed_at)
            SELECT $1 || g, 'bench-u' || (g % 100000), 'archived benchmark task ' || g,
                   'completed',
                   $2::timestamptz - ($3::int + 1) * interval '1 day' - g * interval '1 ms'
              FROM generate_series(1, $4::int) g""", prefix, now, OLDER_THAN_DAYS, rows)
        await conn.execute("VACUUM ANALYZE tasks")
    finally:
        await conn.close()


async def settle(url: str) -> None:
    """Vacuum what an archive and its undo left dead, so every window starts alike (instead
    of an autovacuum landing in the next one)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM ANALYZE tasks")
        await conn.execute("VACUUM ANALYZE tasks_archive")
    finally:
        await conn.close()


async def clean(url: str, prefix: str, job: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DELETE FROM tasks WHERE task_id LIKE $1 || '%'", prefix)
        await conn.execute("DELETE FROM tasks_archive WHERE task_id LIKE $1 || '%'", prefix)
        await conn.execute("DELETE FROM job_runs WHERE job = $1", job)
    finally:
        await conn.close()


async def undo(settings: Settings, job: dict[str, Any], run_id: str, rows: int) -> float:
    """Put the run's rows back (``jobrunner.undo``); seconds it took."""
    started = time.monotonic()
    done = await jobrunner.undo(settings, registry.parse({"jobs": [job]}), run_id)
    if done["status"] != "succeeded" or done["affected"] != rows:
        raise RuntimeError(f"undo of {run_id}: {done['status']}, {done['affected']} of {rows}"
                           " rows back")
    await settle(settings.database_url.get_secret_value())
    return time.monotonic() - started


# --- what each window records about the machine ------------------------------------------------

def _run_queue_wait_s(pid: int) -> float:
    """Seconds the threads of ``pid`` have been runnable but waiting for a core."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def _proc_stat() -> tuple[int, int, int]:
    """(busy, iowait, total) jiffies of every core."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle, iowait = values[3], values[4]
    total = sum(values[:8])  # guest time is counted in user already
    return total - idle - iowait, iowait, total


def _pressure_s(resource_name: str) -> float | None:
    """Seconds some task has stalled on ``cpu``/``io`` (PSI "some" total); None without PSI."""
    try:
        for line in Path(f"/proc/pressure/{resource_name}").read_text().splitlines():
            if line.startswith("some"):
                return int(line.rsplit("total=", 1)[1]) / 1e6
    except OSError:
        return None
    return None


@dataclass
class Gauges:
    """Counters read at a window's start and end; ``since`` gives the rates in between."""

    pids: dict[str, int]
    stack: StackCpu
    archive: Archive | None = None
    at: float = 0.0
    values: dict[str, float | None] = field(default_factory=dict)

    def read(self) -> Gauges:
        busy, iowait, total = _proc_stat()
        values: dict[str, float | None] = {
            "busy": busy, "iowait": iowait, "jiffies": total,
            "psi_cpu": _pressure_s("cpu"), "psi_io": _pressure_s("io"),
            "broker_cpu": self.stack.kafka(), "postgres_cpu": self.stack.postgres(),
            "broker_wait": _run_queue_wait_s(self.stack.kafka_pid),
            "archive_cpu": None if self.archive is None else self.archive.cpu_s()}
        for name, pid in self.pids.items():
            values[f"{name}_cpu"] = cpu_seconds(pid)
            values[f"{name}_wait"] = _run_queue_wait_s(pid)
        return Gauges(self.pids, self.stack, self.archive, time.time(), values)

    def since(self, start: Gauges) -> dict[str, Any]:
        seconds = max(self.at - start.at, 1e-3)

        def delta(key: str) -> float | None:
            a, b = start.values.get(key), self.values.get(key)
            return None if a is None or b is None else b - a

        jiffies = delta("jiffies") or 1.0
        out: dict[str, Any] = {
            "seconds": round(seconds, 2),
            "machine_busy": round((delta("busy") or 0) / jiffies, 3),
            "machine_iowait": round((delta("iowait") or 0) / jiffies, 3),
            "cores": os.cpu_count()}
        for key, label in (("psi_cpu", "cpu_pressure"), ("psi_io", "io_pressure")):
            d = delta(key)
            out[label] = None if d is None else round(d / seconds, 3)
        for name in (*self.pids, "broker", "postgres", "archive"):
            cpu = delta(f"{name}_cpu")
            if cpu is not None:
                out[f"{name}_cores"] = round(cpu / seconds, 3)
        for name in (*self.pids, "broker"):
            wait = delta(f"{name}_wait")
            if wait is not None:
                out[f"{name}_run_queue_wait"] = round(wait / seconds, 3)
        return out


# --- one window of reminder load ---------------------------------------------------------------

@dataclass
class Arrival:
    arrived: float
    fire_at: float
    tick_at: float


async def _read(consumer: AIOKafkaConsumer, fires: int, deadline_s: float) -> list[Arrival]:
    """Reminders as they become readable, as the suite's lateness reader takes them."""
    got: list[Arrival] = []
    deadline = time.monotonic() + deadline_s
    while len(got) < fires:
        if time.monotonic() > deadline:
            raise TimeoutError(f"archive: {len(got)} of {fires} reminders arrived")
        batches = await consumer.getmany(timeout_ms=100, max_records=5000)
        arrived = time.time()
        for msgs in batches.values():
            for msg in msgs:
                doc = orjson.loads(msg.value)
                if doc["type"] == "reminder.due":
                    got.append(Arrival(arrived, _epoch(doc["fire_at"]), _epoch(doc["tick_at"])))
    return got


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _q(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def lateness(arrivals: list[Arrival]) -> dict[str, Any]:
    """The suite's lateness figures of these reminders."""
    if not arrivals:
        return {"fires": 0}
    late = sorted(a.arrived - a.fire_at for a in arrivals)
    processing = sorted(a.arrived - a.tick_at for a in arrivals)
    return {"fires": len(late), "p50_s": _q(late, 0.5), "p99_s": _q(late, 0.99),
            "max_s": round(late[-1], 3), "after_tick_p50_s": _q(processing, 0.5),
            "after_tick_p99_s": _q(processing, 0.99)}


async def window(run: Run, name: str, rate: int, window_s: float, ingest_per_s: float,
                 archive: Archive | None) -> dict[str, Any]:
    """The suite's lateness scenario once: a fresh worker and the live tick producer on
    topics of their own, reminders at ``rate``/s for ``window_s``; ``archive`` (already
    started, waiting) is released at the first fire."""
    settings = run.settings(name, tick_interval_s=1)
    await kafka.ensure_topics(settings)
    log = WorkerLog(run.log(f"{name}-worker"))
    worker = run.start(settings, "worker", log=f"{name}-worker")
    ticker = run.start(settings, "tick", log=f"{name}-tick")
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                isolation_level="read_committed", fetch_max_wait_ms=20,
                                enable_auto_commit=False)
    offsets = Offsets(settings)
    try:
        await poll_until(_check(lambda: stable([log], ROLES, settings.timeline_partitions,
                                                restored=True)),
                         60, f"the {name} worker's assignment")
        fires = int(rate * window_s)
        lead_s = 5 + 2 * fires / max(ingest_per_s, 500)  # as the suite's lateness
        now = datetime.now(UTC)
        first = now + timedelta(seconds=lead_s)
        run.say(f"archive: {name}, {fires} fires at {rate}/s from {first:%H:%M:%S}"
                + (", the archive released at the first" if archive else ""))
        await publish(settings, workload.steady_events(rate, window_s, first, now))
        await consumer.start()
        tps = [TopicPartition(settings.topics.notifications, p)
               for p in range(settings.timeline_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        await offsets.start()
        planned_at = await planned(settings, offsets, fires, lead_s + 60)
        if archive is not None:
            await archive.ready()
        gauges = Gauges({"worker": pid_of(worker), "tick": pid_of(ticker)}, run.stack, archive)
        # The window opens at its first fire: waiting for that instant is the point here.
        await asyncio.sleep(max(0.0, first.timestamp() - time.time()))
        start = gauges.read()
        if archive is not None:
            archive.go()
        arrivals = await _read(consumer, fires, lead_s + window_s + 120)
        end = gauges.read()
    finally:
        await consumer.stop()
        await offsets.close()
        stop(ticker)
        stop(worker)
    return {**lateness(arrivals), "headroom_s": round(first.timestamp() - planned_at, 1),
            "window": [round(first.timestamp(), 3), round(first.timestamp() + window_s, 3)],
            "machine": end.since(start), "load_average": load_average(),
            "arrivals": arrivals}


def _check(condition: Any) -> Any:
    async def check() -> bool:
        return bool(condition())
    return check


# --- the scenario ------------------------------------------------------------------------------

async def measure(run: Run, args: argparse.Namespace, ingest_per_s: float) -> dict[str, Any]:
    """The scenario (see the module's docstring); the suite's ``archive`` section."""
    settings = run.settings("archive", tick_interval_s=1)
    await kafka.ensure_topics(settings)
    url = settings.database_url.get_secret_value()
    rows, pause_s = args.archive_rows, args.archive_pause_s
    name = f"bench-archive-{run.tag}"
    prefix = f"{name}-"
    job = job_document(name, args.archive_batch, pause_s)
    registry.parse({"jobs": [job]})  # a bad flag fails here, naming the field
    result: dict[str, Any] = {
        "rows": rows, "batch_size": args.archive_batch, "batch_pause_s": pause_s,
        "rate_per_s": args.rate, "tick_interval_s": 1, "repeats": args.archive_repeats,
        "job_db_pool_size": settings.job_db_pool_size, "load_average_start": load_average()}
    archives: list[Archive] = []

    def archive() -> Archive:
        archives.append(Archive(settings, job, run.log("archive-job")))
        return archives[-1]

    try:
        run.say(f"archive: seeding {rows:,} completed tasks")
        seeded = time.monotonic()
        connector = await Connector.connect(url)  # the schema as the job runner expects it
        try:
            await connector.migrate()
        finally:
            await connector.close()
        await seed(url, prefix, rows, datetime.now(UTC))
        result["seed_s"] = round(time.monotonic() - seeded, 1)

        result["undo_s"] = []
        archived: str | None = None  # the run whose rows are in the archive now
        window_s = args.archive_window_s
        if not window_s:  # a window given skips this (and its undo, the slowest step)
            alone = archive()
            await alone.ready()
            alone.go()
            done = await alone.result(3700)
            seconds = max(_epoch(done["run"]["finished_at"])
                          - _epoch(done["run"]["started_at"]), 1e-3)
            result["alone"] = {"seconds": round(seconds, 2), "per_s": round(rows / seconds),
                               "cpu_s": round(done["cpu_s"], 2)}
            run.say(f"archive: alone {rows / seconds:,.0f} rows/s ({seconds:.1f} s)")
            archived = done["run"]["run_id"]
            # No longer than the archive alone: slower under load, it then spans the window.
            window_s = min(args.duration_s, max(3.0, round(seconds)))
        result["window_s"] = window_s
        result["window_sized_by"] = (
            "--archive-window-s" if args.archive_window_s
            else "--duration-s" if window_s == args.duration_s else "the archive's time alone")
        windows: list[dict[str, Any]] = []
        for pair in range(args.archive_repeats):
            for with_archive in ((False, True) if pair % 2 == 0 else (True, False)):
                app = f"archive-{len(windows) + 1}-{'with' if with_archive else 'without'}"
                if not with_archive:
                    windows.append({"mode": "without", **await window(
                        run, app, args.rate, window_s, ingest_per_s, None)})
                    continue
                if archived is not None:  # the rows back for this archive (not after the last)
                    result["undo_s"].append(round(await undo(settings, job, archived, rows), 1))
                child = archive()
                entry = {"mode": "with", **await window(
                    run, app, args.rate, window_s, ingest_per_s, child)}
                done = await child.result(3700)
                entry["archive"] = _archive_figures(done, entry["window"], rows)
                windows.append(entry)
                run.say(f"archive: with it, p99 {entry['p99_s']} s; archive "
                        f"{entry['archive']['per_s']:,} rows/s, overlap "
                        f"{entry['archive']['overlap']:.0%}")
                archived = done["run"]["run_id"]
        result.update(_summary(windows))
    finally:
        for child in archives:
            child.kill()
        await clean(url, prefix, name)
    result["load_average"] = load_average()
    return result


def _archive_figures(done: dict[str, Any], window: list[float], rows: int) -> dict[str, Any]:
    started = _epoch(done["run"]["started_at"])
    finished = _epoch(done["run"]["finished_at"])
    seconds = max(finished - started, 1e-3)
    overlap = max(0.0, min(finished, window[1]) - max(started, window[0]))
    return {"rows": done["run"]["affected"], "seconds": round(seconds, 2),
            "per_s": round(rows / seconds), "cpu_s": round(done["cpu_s"], 2),
            "started_after_window_s": round(started - window[0], 2),
            "outlasted_window_s": round(finished - window[1], 2),
            "overlap": round(overlap / (window[1] - window[0]), 3),
            "started_at": started, "finished_at": finished}


def _summary(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled figures of each side, the ratios, and the machine's side by side."""
    arrivals = {id(w): w.pop("arrivals") for w in windows}
    without = [a for w in windows if w["mode"] == "without" for a in arrivals[id(w)]]
    with_ = [a for w in windows if w["mode"] == "with" for a in arrivals[id(w)]]
    during = [a for w in windows if w["mode"] == "with" for a in arrivals[id(w)]
              if w["archive"]["started_at"] <= a.fire_at <= w["archive"]["finished_at"]]
    archived = [w["archive"] for w in windows if w["mode"] == "with"]
    a, b, d = lateness(without), lateness(with_), lateness(during)

    def ratio(x: dict[str, Any], y: dict[str, Any], key: str) -> float | None:
        return None if not x.get(key) or not y.get(key) else round(x[key] / y[key], 3)

    def machine(mode: str) -> dict[str, Any]:
        parts = [w["machine"] for w in windows if w["mode"] == mode]
        keys = {k for p in parts for k, v in p.items() if isinstance(v, float | int)}
        return {k: round(sum(p.get(k) or 0 for p in parts) / len(parts), 3)
                for k in sorted(keys)}

    return {
        "without": a, "with": b,
        "during": {**d, "note": "reminders whose fire_at fell while the archive ran"},
        "ratio": ratio(b, a, "p99_s"), "ratio_during": ratio(d, a, "p99_s"),
        "ratio_after_tick": ratio(b, a, "after_tick_p99_s"), "target_ratio": 1.1,
        "archived_per_s": round(sum(x["rows"] for x in archived)
                                / sum(x["seconds"] for x in archived)),
        "overlap": min(x["overlap"] for x in archived),
        "archive_outlasted_window": all(x["outlasted_window_s"] >= 0 for x in archived),
        "machine": {"without": machine("without"), "with": machine("with")},
        "windows": windows,
    }


def table_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """The suite table's lines of this scenario."""
    r = doc.get("archive")
    if not r:
        return [("lateness during an archive", "-", "", "-", "")]
    w, wo, m = r["with"], r["without"], r["machine"]
    load = r.get("load_average")
    overlap = (f"archive ran {r['overlap']:.0%} of the window"
               + ("" if r["archive_outlasted_window"] else ", ended inside it"))
    return [
        (f"lateness during a {r['rows']:,}-row archive",
         f"p99 {w['p99_s']:.2f} s (without {wo['p99_s']:.2f} s)", "target ratio <= 1.1",
         f"{r['ratio']:.2f}x", f"{load[0]:.1f}" if load else ""),
        (f"  archive, batch {r['batch_size']}, pause {r['batch_pause_s']:g} s",
         f"{r['archived_per_s']:,} rows/s"
         + (f" (alone {r['alone']['per_s']:,})" if r.get("alone") else ""), overlap, "", ""),
        ("  machine without / with archive",
         f"busy {m['without'].get('machine_busy', 0):.0%} / {m['with'].get('machine_busy', 0):.0%},"
         f" worker waits {m['without'].get('worker_run_queue_wait', 0):.2f} / "
         f"{m['with'].get('worker_run_queue_wait', 0):.2f} s/s", "", "", ""),
    ]


def standalone(argv: list[str]) -> int:
    """This scenario alone, with the suite's flags, results folder and table."""
    from bench import suite  # here, not on top: the suite imports this module

    args = suite._parser().parse_args(argv)
    if args.smoke:
        args.rate, args.duration_s = 500, 3.0
        smoke(args)
    run = suite.Run(args)
    run.say(f"results in {run.out}")

    async def go() -> dict[str, Any]:
        await kafka.wait_ready(run.base, timeout_s=60)
        doc: dict[str, Any] = {"meta": {"run": run.id, "cpu_count": os.cpu_count(),
                                        "load_average_start": load_average()}}
        try:
            await suite.section(run, doc, "archive",
                                lambda: measure(run, args, args.ingest_per_s))
        finally:
            await run.drop_all()
        doc["meta"]["load_average_end"] = load_average()
        return doc

    doc = asyncio.run(go())
    (run.out / "results.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    for row in table_rows(doc):
        print("  ".join(c for c in row if c))
    for key, error in (doc.get("failures") or {}).items():
        print(f"FAILED {key}: {error[:300]}")
    print(f"results: {run.out / 'results.json'}")
    return 1 if doc.get("failures") else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        parser = argparse.ArgumentParser(prog="bench.archive_interference child")
        parser.add_argument("--job", required=True, help="the job, as a registry entry in JSON")
        asyncio.run(_child(orjson.loads(parser.parse_args(sys.argv[2:]).job)))
    else:
        sys.exit(standalone(sys.argv[1:]))
