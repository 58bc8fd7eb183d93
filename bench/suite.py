"""The benchmark suite: every figure of issue 9 side by side in one run, as ratios.

    ./scripts/bench [--n 100000] [--smoke] [--out DIR] …   (see --help)

Scenarios, each on its own topics (a fresh app id), against the local stack:

- **pipeline** (one worker): N ``task.upserted`` pre-published, then the worker started:
  ingest rate (re-keyed and planned); resident memory with N pending tasks; a clean
  restart and its restore time; one tick making all N reminders due, timed from the tick's
  publication until the worker has committed it (its outputs are then readable
  read_committed; every one is then read back and counted).
- **ceiling**: the same N events through ``bench.ceiling`` (bare two-hop loop).
- **peer**: the same N fires as rows drained by ``bench.peer`` (SKIP LOCKED pollers).
- **lateness**: a worker and the live tick producer (1 s ticks, then ``--fine-tick-s``,
  0.25 s by default: the project's default ``TICK_INTERVAL_S``)
  under a steady load of ``--rate`` fires/s for ``--duration-s``; commit-to-reader time
  minus ``fire_at``; and what the ticks alone cost the idle worker.
- **archive**: lateness as above without and with a 1M-row archive job running against the
  same PostgreSQL and broker (``bench.archive_interference``), as a ratio (target <= 1.1).
- **scale**: the pipeline's ingest and burst again with 2, 3… workers on the same partitions.
- **memory**: optionally again at larger sizes (``--memory-n 1000000``).
- **profile**: py-spy attached to a worker during ingest and during the burst (separate
  run, so sampling does not touch the figures above): flame graphs and ranked functions.
- **faust**: the pipeline (ingest, burst, memory) and the lateness again on ``worker
  --runtime faust``, each as a ratio to the default runtime's figure of the same run.

Results go to ``<dir>/results.json`` (default ``$CRONORCH_STATE_DIR/bench/<UTC time>``)
with the logs and profiles beside it. The machine is shared and has two cores: read the
ratios of one run, with the load average printed next to them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import NewTopic

from bench import archive_interference, flame, workload
from bench.harness import (
    Flow,
    FlowResult,
    Offsets,
    Profile,
    StackCpu,
    WorkerLog,
    caught_up,
    cpu_seconds,
    load_average,
    measure_flow,
    pid_of,
    planned,
    poll_until,
    rss_bytes,
    settled_at,
    stable,
    stop,
)
from streams.cli import devstack
from streams.kafka import client as kafka
from streams.processes.tickproducer import TickPublisher
from streams.settings import Settings
from tests.support import ROOT, Proc, env_for, publish, settings_for

BURST_AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # "09:00": every reminder falls due here
WORKER_FLOW = Flow("rekeyer", "task_events", "timeline", "timeline")
CEILING_FLOW = Flow("ceiling-rekey", "task_events", "ceiling-plan", "timeline")
ROLES = ("rekeyer", "timeline")
IDLE_S = 5.0  # lateness: the idle window that prices the ticks alone

# The figures on main (one worker, 6 partitions, this machine, 2026-11).
REFERENCE_MAIN = {
    "ingest_per_s": 6500, "burst_per_s": 8300, "peer_per_s": [40000, 43000],
    "bytes_per_task": 4300, "rss_100k_bytes": 429_000_000,
    "lateness_p50_s": 0.70, "lateness_p99_s": 1.30, "lateness_max_s": 2.0,
}

# Every figure a run must produce (dotted paths into results.json; ``*`` = each list item).
FIGURES = (
    "meta.load_average_start", "meta.load_average_end",
    "burst.project.per_s", "burst.peer.per_s", "burst.ratio",
    "burst.project.per_cpu_s", "burst.peer.per_cpu_s", "burst.cpu_ratio",
    "ingest.project.per_s", "ingest.ceiling.per_s", "ingest.ratio",
    "ingest.project.per_cpu_s", "ingest.ceiling.per_cpu_s", "ingest.cpu_ratio",
    "lateness.p50_s", "lateness.p99_s", "lateness.max_s", "lateness.fires",
    "lateness_fine.p50_s", "lateness_fine.p99_s", "lateness_fine.max_s", "lateness_fine.fires",
    "memory.*.bytes_per_task", "memory.*.restore_s", "memory.*.rss_bytes",
    "scale.*.workers", "scale.*.ingest_per_s", "scale.*.burst_per_s",
    "scale.*.ingest_ratio", "scale.*.burst_ratio",
    "profile.ingest.svg", "profile.burst.svg", "profile.ingest.self", "profile.burst.self",
    "faust.available", "faust.ingest_per_s", "faust.burst_per_s", "faust.ingest_ratio",
    "faust.burst_ratio", "faust.lateness.p99_s",
)
FIGURES += archive_interference.FIGURES


# ``--only``: the scenarios, and the sections of results.json each one's figures are in.
SECTIONS = ("pipeline", "lateness", "archive", "memory", "scale", "profile", "faust")
_FIGURES_OF = {"burst": "pipeline", "ingest": "pipeline", "lateness": "lateness",
               "lateness_fine": "lateness", "archive": "archive", "memory": "memory",
               "scale": "scale", "profile": "profile", "faust": "faust"}


def _sections(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [part for part in chosen if part not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or '(none)'}; choose from {', '.join(SECTIONS)}")
    return chosen


def required_figures(only: Iterable[str], profile: bool = True) -> list[str]:
    """The figures a run of the scenarios ``only`` must produce."""
    wanted = set(only) - ({"profile"} if not profile else set())
    return [f for f in FIGURES
            if _FIGURES_OF.get(f.split(".")[0], "meta") in wanted | {"meta"}]


def missing_figures(doc: Any, paths: Iterable[str] = FIGURES) -> list[str]:
    """The figures of ``paths`` that ``doc`` lacks (or holds as null)."""

    def present(value: Any, parts: list[str]) -> bool:
        if not parts:
            return value is not None
        head, rest = parts[0], parts[1:]
        if head == "*":
            return isinstance(value, list) and bool(value) and all(present(v, rest)
                                                                    for v in value)
        return isinstance(value, dict) and head in value and present(value[head], rest)

    return [p for p in paths if not present(doc, p.split("."))]


def fmt(value: float | None, spec: str = ",.0f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 3)


class Run:
    """One run of the suite: options, output folder, the apps it made (dropped at the end)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        default = devstack.Stack.from_env().state_dir / "bench" / self.id
        self.out: Path = args.out or default
        self.out.mkdir(parents=True, exist_ok=True)
        self.base = Settings.from_env()
        self.stack = StackCpu(devstack.Stack.from_env().state_dir)
        self.tag = uuid.uuid4().hex[:6]
        self.apps: list[Settings] = []
        self.topics: list[str] = []  # made outside the apps' settings (the peer's)
        self.procs: list[Proc] = []

    def settings(self, name: str, **overrides: Any) -> Settings:
        settings = settings_for(f"bench-{self.tag}-{name}", **overrides)
        self.apps.append(settings)
        return settings

    def log(self, name: str) -> Path:
        return self.out / f"{name}.log"

    def start(self, settings: Settings, *args: str, log: str) -> Proc:
        proc = Proc(settings, *args, log=self.log(log)).start()
        self.procs.append(proc)
        return proc

    def say(self, text: str) -> None:
        print(f"bench {datetime.now(UTC):%H:%M:%S} load {load_average()[0]:.2f}: {text}",
              file=sys.stderr, flush=True)

    async def drop_all(self) -> None:
        """Stop what is still running and delete the topics this run made."""
        for proc in self.procs:
            if proc.alive():
                stop(proc)
        names = [getattr(s.topics, f) for s in self.apps
                 for f in type(s.topics).model_fields] + self.topics
        if names and not self.args.keep_topics:
            async with kafka.admin(self.base) as client:
                existing = set(await client.list_topics())
                doomed = [n for n in names if n in existing]
                if doomed:
                    await client.delete_topics(doomed)


# --- pipeline: ingest, memory, restore, burst on the worker -----------------------------------

async def pipeline(run: Run, name: str, n: int, *, workers: int = 1, restore: bool = True,
                   burst: bool = True, profile: bool = False,
                   worker_args: tuple[str, ...] = ("worker",)) -> dict[str, Any]:
    """N reminders due on one tick through ``workers`` worker processes."""
    settings = run.settings(name)
    await kafka.ensure_topics(settings)
    result: dict[str, Any] = {"n": n, "workers": workers, "load_average": load_average()}
    # The faust runtime restores a partition on its first event, not after its assignment.
    native = "faust" not in worker_args
    run.say(f"{name}: publishing {n} task events")
    await publish(settings, workload.burst_events(n, BURST_AT))
    offsets = Offsets(settings)
    await offsets.start()
    procs: list[Proc] = []
    try:
        logs = [WorkerLog(run.log(f"{name}-worker{i}")) for i in range(workers)]
        procs = [run.start(settings, *worker_args, log=f"{name}-worker{i}")
                 for i in range(workers)]
        spy = None
        if profile:  # attach once the interpreter is up, before the group is joined
            await poll_until(_async(lambda: logs[0].read().started_at is not None), 60,
                             "the worker to start")
            spy = Profile(pid_of(procs[0]), run.out / "profile-ingest.txt")
        flow = _flow(settings, WORKER_FLOW)
        ingest = await measure_flow(
            # The faust runtime ingests one event per call: 300-1,000/s here, under load.
            offsets, flow, n, timeout_s=60 + n / (500 if native else 100),
            settled_at=lambda: settled_at(logs, ROLES, settings.timeline_partitions,
                                          restored=native),
            pids=[pid_of(p) for p in procs], stack=run.stack)
        if spy is not None:
            result["profile_raw"] = str(spy.finish())
        result["ingest"] = _flow_figures(ingest)
        run.say(f"{name}: ingest {ingest.per_s:,.0f}/s over {ingest.records:,.0f} events "
                f"({ingest.window})")
        if workers == 1:
            result["rss_planned_bytes"] = rss_bytes(pid_of(procs[0]))
            result["startup"] = _startup(logs[0])
        if restore:
            stop(procs[0])
            logs[0] = WorkerLog(run.log(f"{name}-restored"))
            procs[0] = run.start(settings, *worker_args, log=f"{name}-restored")
            # Until the timeline has restored each partition (after its assignment, off the
            # rebalance listener), that partition is paused: a tick then would time the
            # restore too.
            await poll_until(_async(lambda: stable(logs, ROLES, settings.timeline_partitions,
                                                   restored=native)),
                             60 + n / 2000, "the restarted worker's restore")
            result["rss_restored_bytes"] = rss_bytes(pid_of(procs[0]))
            result["startup_restored"] = _startup(logs[0])
            result["restore"] = _restore(logs[0])
            run.say(f"{name}: restarted, startup {result['startup_restored']}")
        if burst:
            spy = Profile(pid_of(procs[0]), run.out / "profile-burst.txt") if profile else None
            if spy is not None:
                await asyncio.sleep(0.5)  # lets py-spy attach before the tick
            drained, cpu_s, broker_cpu_s = await _burst(
                run, settings, offsets, [pid_of(p) for p in procs], timeout_s=60 + n / 500)
            if spy is not None:
                result["profile_burst_raw"] = str(spy.finish())
            result["burst"] = {"seconds": round(drained, 3), "per_s": round(n / drained),
                               "cores_busy": round(cpu_s / drained, 2),
                               "cpu_s": round(cpu_s, 2), "stack_cpu_s": round(broker_cpu_s, 2),
                               "per_cpu_s": round(n / max(cpu_s + broker_cpu_s, 1e-3))}
            run.say(f"{name}: burst {n / drained:,.0f}/s")
            result["burst"]["verified"] = await _count_reminders(settings, n)
        result["errors_logged"] = sum(sum(log.read().errors.values()) for log in logs)
        result["load_average_end"] = load_average()
        return result
    finally:
        for proc in procs:
            stop(proc)
        await offsets.close()


def _flow(settings: Settings, flow: Flow) -> Flow:
    t = settings.topics
    return Flow(flow.first, getattr(t, flow.source), flow.second, getattr(t, flow.middle))


def _startup(log: WorkerLog) -> float | None:
    """Seconds from "worker started" to the timeline's last partition restored (or, with
    nothing restored, its assignment)."""
    doc = log.read()
    at = doc.restored_at.get("timeline", doc.assigned_at.get("timeline"))
    return None if at is None or doc.started_at is None else round(at - doc.started_at, 3)


def _restore(log: WorkerLog) -> float | None:
    """Seconds from the timeline's joining the group to its last partition restored: the
    join, six producer inits (fast for known transactional ids) and every partition's
    restore (which runs after the assignment, off the rebalance listener)."""
    doc = log.read()
    at = doc.restored_at.get("timeline", doc.assigned_at.get("timeline"))
    joining = doc.joining_at.get("timeline")
    return None if at is None or joining is None else round(at - joining, 3)


def _async(check: Callable[[], bool]) -> Callable[[], Any]:
    async def wrapped() -> bool:
        return check()
    return wrapped


def _flow_figures(flow: FlowResult) -> dict[str, Any]:
    return {"records": round(flow.records), "seconds": round(flow.seconds, 3),
            "per_s": round(flow.per_s), "window": flow.window, "cpu_s": round(flow.cpu_s, 2),
            "stack_cpu_s": round(flow.broker_cpu_s, 2),
            "per_cpu_s": round(flow.records / max(flow.cpu_s + flow.broker_cpu_s, 1e-3))}


async def _burst(run: Run, settings: Settings, offsets: Offsets, pids: list[int],
                 timeout_s: float) -> tuple[float, float, float]:
    """Publish one tick at BURST_AT; (seconds until the timeline group has committed it,
    CPU seconds of the workers and of the broker meanwhile)."""
    publisher = TickPublisher(settings, "tick-range")
    await publisher.start()
    cpu0 = sum(cpu_seconds(pid) for pid in pids)
    broker0 = run.stack.kafka()
    try:
        started = time.time()
        await publisher.publish([BURST_AT])
    finally:
        await publisher.stop()
    topic = settings.topics.timeline
    ends = await offsets.end(topic)

    async def drained() -> bool:
        return caught_up(ends, await offsets.committed("timeline", topic), True)

    seconds = await poll_until(drained, timeout_s, "the burst to drain") - started
    return (seconds, sum(cpu_seconds(pid) for pid in pids) - cpu0,
            run.stack.kafka() - broker0)


async def _count_reminders(settings: Settings, n: int) -> bool:
    """Every one of the n reminders is readable read_committed, each id once. Read again
    while short: a commit's markers reach the partitions just after the commit returns."""
    deadline = time.monotonic() + 30
    while True:
        records = await kafka.read_all(settings, [settings.topics.notifications],
                                       timeout_s=60 + n / 2000)
        if len(records) >= n or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    ids = {orjson.loads(r.value)["notification_id"] for r in records if r.value is not None}
    if len(records) != n or len(ids) != n:
        raise AssertionError(f"burst: {len(records)} notifications, {len(ids)} ids, expected {n}")
    return True


# --- the peers ------------------------------------------------------------------------------

async def ceiling(run: Run, n: int) -> dict[str, Any]:
    settings = run.settings("ceiling")
    await kafka.ensure_topics(settings)
    run.say(f"ceiling: publishing {n} task events")
    await publish(settings, workload.burst_events(n, BURST_AT))
    offsets = Offsets(settings)
    await offsets.start()
    proc = _spawn(["bench.ceiling"], settings, run.log("ceiling"))
    try:
        log = WorkerLog(run.log("ceiling"))
        flow = await measure_flow(
            offsets, _flow(settings, CEILING_FLOW), n, timeout_s=60 + n / 1000,
            settled_at=lambda: settled_at([log], (CEILING_FLOW.first, CEILING_FLOW.second),
                                          settings.timeline_partitions),
            pids=[proc.pid], stack=run.stack)
    finally:
        proc.terminate()
        proc.wait(30)
        await offsets.close()
    run.say(f"ceiling: {flow.per_s:,.0f}/s")
    return {**_flow_figures(flow), "load_average": load_average()}


def _spawn(module_args: list[str], settings: Settings, log: Path,
           talk: bool = False) -> subprocess.Popen[bytes]:
    """``python -m`` a peer with ``settings``; ``talk`` pipes its stdin and stdout to us."""
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", *module_args], cwd=ROOT, env=env_for(settings),
            stdin=subprocess.PIPE if talk else subprocess.DEVNULL,
            stdout=subprocess.PIPE if talk else sink, stderr=sink)


async def peer(run: Run, n: int) -> dict[str, Any]:
    """The same N fires as PostgreSQL rows, drained by bench.peer into a topic of its own."""
    settings = run.settings("peer")
    topic = f"{settings.app_id}.peer-notifications"
    run.topics.append(topic)
    async with kafka.admin(settings) as client:
        await client.create_topics([NewTopic(topic, settings.timeline_partitions,
                                             settings.replication_factor)])
    table = f"bench_fires_{run.tag}"
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        await conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, user_id text NOT NULL,"
                           f" fire_at timestamptz NOT NULL, payload bytea NOT NULL,"
                           f" published_at timestamptz)")
        await conn.execute(f"CREATE INDEX ON {table} (fire_at, id) WHERE published_at IS NULL")
        run.say(f"peer: inserting {n} rows")
        await conn.copy_records_to_table(
            table, records=(workload.peer_row(i, BURST_AT) for i in range(n)),
            columns=["id", "user_id", "fire_at", "payload"])
        await conn.execute(f"ANALYZE {table}")
        proc = _spawn(["bench.peer", "--table", table, "--topic", topic,
                       "--fire-at", BURST_AT.isoformat(), "--pollers", str(run.args.pollers),
                       "--batch", str(run.args.batch)], settings, run.log("peer"), talk=True)
        assert proc.stdin is not None and proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"bench.peer did not start; see {run.log('peer')}")
        broker0, pg0 = run.stack.kafka(), run.stack.postgres()
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60 + n / 1000)
        stack_cpu_s = run.stack.kafka() - broker0 + run.stack.postgres() - pg0
        proc.communicate(timeout=30)
        doc = orjson.loads(line)
        published = await conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE published_at IS NOT NULL")
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
    offsets = Offsets(settings)
    await offsets.start()
    try:
        in_topic = sum(await offsets.end(topic))
    finally:
        await offsets.close()
    if doc["rows"] != n or published != n or in_topic != n:
        raise AssertionError(f"peer: {doc['rows']} sent, {published} marked, {in_topic} in "
                             f"the topic, expected {n}")
    seconds = doc["last_commit"] - doc["go"]
    run.say(f"peer: {n / seconds:,.0f}/s")
    return {"seconds": round(seconds, 3), "per_s": round(n / seconds),
            "cpu_s": round(doc["cpu_s"], 2), "stack_cpu_s": round(stack_cpu_s, 2),
            "per_cpu_s": round(n / max(doc["cpu_s"] + stack_cpu_s, 1e-3)),
            "pollers": doc["pollers"], "batch": doc["batch"], "verified": True,
            "load_average": load_average()}


# --- lateness under live ticks ----------------------------------------------------------------

async def lateness(run: Run, rate: int, duration_s: float, ingest_per_s: float,
                   tick_interval_s: float = 1.0, name: str = "lateness", *,
                   worker_args: tuple[str, ...] = ("worker",),
                   min_ingest_per_s: float = 500) -> dict[str, Any]:
    settings = run.settings(name, tick_interval_s=tick_interval_s)
    await kafka.ensure_topics(settings)
    log = WorkerLog(run.log(f"{name}-worker"))
    worker = run.start(settings, *worker_args, log=f"{name}-worker")
    ticker = run.start(settings, "tick", log=f"{name}-tick")
    try:
        await poll_until(_async(lambda: stable([log], ROLES, settings.timeline_partitions,
                                               restored="faust" not in worker_args)),
                         60, f"the {name} worker's assignment")
        empty = {"rss_bytes": rss_bytes(pid_of(worker)), "startup": _startup(log)}
        # What the ticks alone cost an empty worker (a transaction per timeline partition
        # per tick): its CPU over a few idle seconds.
        idle_from, idle_cpu = time.monotonic(), cpu_seconds(pid_of(worker))
        await asyncio.sleep(IDLE_S)
        idle_cores = ((cpu_seconds(pid_of(worker)) - idle_cpu)
                      / (time.monotonic() - idle_from))
        fires = int(rate * duration_s)
        # Fires start once the events are surely planned (twice the measured ingest time).
        lead_s = 5 + 2 * fires / max(ingest_per_s, min_ingest_per_s)
        now = datetime.now(UTC)
        first = now + timedelta(seconds=lead_s)
        run.say(f"{name}: {fires} fires at {rate}/s, {tick_interval_s} s ticks, "
                f"from {first:%H:%M:%S}")
        await publish(settings, workload.steady_events(rate, duration_s, first, now))
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                    isolation_level="read_committed", fetch_max_wait_ms=20,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(settings.topics.notifications, p)
                   for p in range(settings.timeline_partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            offsets = Offsets(settings)
            await offsets.start()
            try:
                planned_at = await planned(settings, offsets, fires, lead_s + 60)
            finally:
                await offsets.close()
            headroom_s = first.timestamp() - planned_at
            late, processing = await _collect(consumer, fires, deadline_s=lead_s + duration_s
                                              + 60)
        finally:
            await consumer.stop()
    finally:
        stop(ticker)
        stop(worker)
    late.sort()
    processing.sort()
    return {"rate_per_s": rate, "duration_s": duration_s, "fires": len(late),
            "p50_s": _q(late, 0.5), "p99_s": _q(late, 0.99), "max_s": round(late[-1], 3),
            "after_tick_p50_s": _q(processing, 0.5), "after_tick_p99_s": _q(processing, 0.99),
            "headroom_s": round(headroom_s, 1), "tick_interval_s": tick_interval_s,
            "idle_worker_cores": round(idle_cores, 3),
            "empty_worker": empty, "load_average": load_average()}


async def _collect(consumer: AIOKafkaConsumer, fires: int,
                   deadline_s: float) -> tuple[list[float], list[float]]:
    """Read reminders as they become readable: (arrival - fire_at, arrival - tick_at) each."""
    late: list[float] = []
    processing: list[float] = []
    deadline = time.monotonic() + deadline_s
    while len(late) < fires:
        if time.monotonic() > deadline:
            raise TimeoutError(f"lateness: {len(late)} of {fires} reminders arrived")
        batches = await consumer.getmany(timeout_ms=100, max_records=5000)
        arrived = time.time()
        for msgs in batches.values():
            for msg in msgs:
                doc = orjson.loads(msg.value)
                if doc["type"] != "reminder.due":
                    continue
                late.append(arrived - _epoch(doc["fire_at"]))
                processing.append(arrived - _epoch(doc["tick_at"]))
    return late, processing


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _q(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


# --- faust ----------------------------------------------------------------------------------

FAUST_WORKER = ("worker", "--runtime", "faust")


def faust_runtime_available() -> bool:
    done = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "--help"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    return "--runtime" in done.stdout


async def faust_rows(run: Run, doc: dict[str, Any]) -> dict[str, Any]:
    """The pipeline (ingest, burst, memory) and the lateness again on ``worker --runtime
    faust``, each next to the same figure of the default runtime in this run."""
    args = run.args
    result = await pipeline(run, "faust", args.n, restore=False, worker_args=FAUST_WORKER)
    rows: dict[str, Any] = {
        "available": True, "n": args.n, "load_average": result["load_average"],
        "ingest_per_s": result["ingest"]["per_s"], "burst_per_s": result["burst"]["per_s"],
        "ingest_per_cpu_s": result["ingest"]["per_cpu_s"],
        "burst_per_cpu_s": result["burst"]["per_cpu_s"],
        "ingest_ratio": ratio(result["ingest"]["per_s"], get(doc, "pipeline.ingest.per_s")),
        "burst_ratio": ratio(result["burst"]["per_s"], get(doc, "pipeline.burst.per_s")),
        "burst_verified": result["burst"]["verified"],
        "errors_logged": result["errors_logged"], "startup_s": result.get("startup")}
    planned = result.get("rss_planned_bytes")
    if planned is not None:
        rows["bytes_per_task"] = round(planned / args.n)
        rows["native_bytes_per_task"] = (
            None if get(doc, "pipeline.rss_planned_bytes") is None
            else round(get(doc, "pipeline.rss_planned_bytes") / args.n))
    doc["faust"] = rows  # kept if the lateness below fails

    async def faust_lateness() -> dict[str, Any]:
        # The same fire rate; the load is planned ahead at the faust runtime's own ingest
        # rate (several times slower), so the run is shortened to ~10 s of its planning.
        ingest_per_s = max(float(result["ingest"]["per_s"] or 100), 50.0)
        duration_s = max(3.0, min(args.duration_s, 10 * ingest_per_s / args.rate))
        late = await lateness(run, args.rate, duration_s, ingest_per_s,
                              name="faust-lateness", worker_args=FAUST_WORKER,
                              min_ingest_per_s=50)
        late.pop("empty_worker", None)
        return late

    await section(run, rows, "lateness", faust_lateness)
    if "failures" in rows:
        doc.setdefault("failures", {})["faust.lateness"] = rows.pop("failures")["lateness"]
    return rows


# --- the run --------------------------------------------------------------------------------

def get(doc: Any, path: str) -> Any:
    """``doc``'s value at a dotted path, or None where a part is missing."""
    for part in path.split("."):
        if isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        elif isinstance(doc, dict):
            doc = doc.get(part)
        else:
            return None
    return doc


async def section(run: Run, doc: dict[str, Any], key: str,
                  make: Callable[[], Awaitable[Any]]) -> Any:
    """``doc[key] = await make()``; a scenario that fails is reported in ``doc["failures"]``
    and the others still run, so one bad scenario never loses the run's other figures."""
    try:
        doc[key] = await make()
    except Exception as exc:
        run.say(f"{key}: FAILED {type(exc).__name__}: {exc}")
        doc.setdefault("failures", {})[key] = f"{type(exc).__name__}: {exc}"[:2000]
    return doc.get(key)


async def suite(run: Run) -> dict[str, Any]:
    args = run.args
    n = args.n
    doc: dict[str, Any] = {"meta": {
        "run": run.id, "started_at": datetime.now(UTC).isoformat(), "n": n,
        "smoke": args.smoke, "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain")),
        "load_average_start": load_average(), "out": str(run.out),
        "timeline_partitions": run.base.timeline_partitions},
        "reference_main": REFERENCE_MAIN}
    want = args.only
    if "pipeline" in want:
        await section(run, doc, "pipeline", lambda: pipeline(run, "pipeline", n))

    async def ingest() -> dict[str, Any]:
        ceil = await ceiling(run, n)
        return {"n": n, "project": get(doc, "pipeline.ingest"), "ceiling": ceil,
                "ratio": ratio(get(doc, "pipeline.ingest.per_s"), ceil["per_s"]),
                "cpu_ratio": ratio(get(doc, "pipeline.ingest.per_cpu_s"), ceil["per_cpu_s"])}

    async def burst() -> dict[str, Any]:
        poll = await peer(run, n)
        return {"n": n, "project": get(doc, "pipeline.burst"), "peer": poll,
                "ratio": ratio(get(doc, "pipeline.burst.per_s"), poll["per_s"]),
                "cpu_ratio": ratio(get(doc, "pipeline.burst.per_cpu_s"), poll["per_cpu_s"])}

    if "pipeline" in want:
        await section(run, doc, "ingest", ingest)
        await section(run, doc, "burst", burst)
    empty = None
    if "lateness" in want or "memory" in want:  # memory: the empty worker is the baseline
        await section(run, doc, "lateness", lambda: lateness(
            run, args.rate, args.duration_s, get(doc, "pipeline.ingest.per_s") or 2000))
        empty = (doc.get("lateness") or {}).pop("empty_worker", None)
    if "lateness" in want:
        await section(run, doc, "lateness_fine", lambda: lateness(
            run, args.rate, args.duration_s, get(doc, "pipeline.ingest.per_s") or 2000,
            args.fine_tick_s, "lateness-fine"))
        (doc.get("lateness_fine") or {}).pop("empty_worker", None)
    if "archive" in want:
        await section(run, doc, "archive", lambda: archive_interference.measure(
            run, args, get(doc, "pipeline.ingest.per_s") or 2000))

    async def memory() -> list[dict[str, Any]]:
        sizes: list[dict[str, Any]] = ([_memory(doc["pipeline"], empty)]
                                       if "pipeline" in doc else [])
        for size in args.memory_n:
            extra: dict[str, Any] = {}
            if await section(run, extra, "memory", lambda size=size: pipeline(
                    run, f"memory-{size}", size, burst=False)):
                sizes.append(_memory(extra["memory"], empty))
            else:
                sizes.append({"tasks": size, "error": extra["failures"]["memory"]})
        return sizes

    if "memory" in want:
        await section(run, doc, "memory", memory)
    doc["scale"] = []
    for workers in args.scale if "scale" in want else ():
        entry: dict[str, Any] = {}
        if workers == 1:
            await section(run, entry, "scale", _async_value(lambda: _scale(doc["pipeline"],
                                                                           doc["pipeline"])))
        else:
            await section(run, entry, "scale", lambda workers=workers: _scaled(
                run, n, workers, doc["pipeline"]))
        doc["scale"].append(entry.get("scale") or {
            "workers": workers, "error": entry.get("failures", {}).get("scale")})
    if args.profile and "profile" in want:
        await section(run, doc, "profile", lambda: _profile(run, n))
    if "faust" not in want:
        pass
    elif faust_runtime_available():
        async def faust() -> dict[str, Any]:
            return await faust_rows(run, doc)

        await section(run, doc, "faust", faust)
    else:
        doc["faust"] = {"available": False,
                        "reason": "`cronorch worker` has no --runtime option yet"}
    doc["meta"]["load_average_end"] = load_average()
    doc["meta"]["finished_at"] = datetime.now(UTC).isoformat()
    return doc


async def _scaled(run: Run, n: int, workers: int, one: dict[str, Any]) -> dict[str, Any]:
    return _scale(await pipeline(run, f"scale-{workers}", n, workers=workers, restore=False),
                  one)


def _async_value(value: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def wrapped() -> Any:
        return value()
    return wrapped


def _memory(result: dict[str, Any], empty: dict[str, Any] | None) -> dict[str, Any]:
    if empty is None:
        raise RuntimeError("no empty worker was measured (the lateness scenario failed)")
    n = result["n"]
    planned, restored = result["rss_planned_bytes"], result.get("rss_restored_bytes")
    return {
        "tasks": n, "rss_bytes": planned, "rss_empty_bytes": empty["rss_bytes"],
        "bytes_per_task": round((planned - empty["rss_bytes"]) / n),
        "rss_restored_bytes": restored,
        "bytes_per_task_restored": None if restored is None
        else round((restored - empty["rss_bytes"]) / n),
        "restore_s": result.get("restore"),
        "startup_restored_s": result.get("startup_restored"), "startup_empty_s": empty["startup"],
    }


def _scale(result: dict[str, Any], one: dict[str, Any]) -> dict[str, Any]:
    return {"workers": result["workers"], "ingest_per_s": result["ingest"]["per_s"],
            "burst_per_s": result["burst"]["per_s"],
            "ingest_ratio": ratio(result["ingest"]["per_s"], one["ingest"]["per_s"]),
            "burst_ratio": ratio(result["burst"]["per_s"], one["burst"]["per_s"]),
            # CPU cost per event or fire, and how busy the workers were: a worker that
            # uses little of a core is waiting (for the broker, or for a shared core).
            "ingest_per_cpu_s": result["ingest"]["per_cpu_s"],
            "burst_per_cpu_s": result["burst"]["per_cpu_s"],
            "burst_cores_busy": round(result["burst"]["cpu_s"] / result["burst"]["seconds"], 2),
            "load_average": result["load_average"]}


async def _profile(run: Run, n: int) -> dict[str, Any]:
    result = await pipeline(run, "profile", n, restore=False, profile=True)
    return {
        "note": "a separate run with py-spy attached (100 Hz); its rates are "
                "not the figures above",
        "ingest": flame.render(Path(result["profile_raw"]), f"worker during ingest of {n}"),
        "burst": flame.render(Path(result["profile_burst_raw"]), f"worker during a burst of {n}"),
        "ingest_per_s": result["ingest"]["per_s"], "burst_per_s": result["burst"]["per_s"]}


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


# --- the table ------------------------------------------------------------------------------

def table(doc: dict[str, Any]) -> str:
    """The human summary: each comparison as a ratio of this run, the load next to it; a
    scenario that failed shows "-" and its error is listed below."""
    rows: list[tuple[str, str, str, str, str]] = []

    def la(path: str) -> str:
        load = get(doc, f"{path}.load_average")
        return f"{load[0]:.1f}" if load else ""

    def x(path: str) -> str:
        return fmt(get(doc, path), ".2f", "x")

    n = doc["meta"]["n"]
    rows.append((f"burst drain, {n:,} fires on one tick",
                 fmt(get(doc, "burst.project.per_s"), unit="/s"),
                 f"{fmt(get(doc, 'burst.peer.per_s'))}/s (SKIP LOCKED, "
                 f"{fmt(get(doc, 'burst.peer.pollers'))} pollers)", x("burst.ratio"),
                 la("burst.peer")))
    rows.append(("  per CPU-second (process + broker; peer: + PostgreSQL)",
                 fmt(get(doc, "burst.project.per_cpu_s"), unit="/cpu-s"),
                 fmt(get(doc, "burst.peer.per_cpu_s"), unit="/cpu-s"), x("burst.cpu_ratio"), ""))
    rows.append((f"ingest, {n:,} task.upserted", fmt(get(doc, "ingest.project.per_s"), unit="/s"),
                 f"{fmt(get(doc, 'ingest.ceiling.per_s'))}/s (bare aiokafka loop)",
                 x("ingest.ratio"), la("ingest.ceiling")))
    rows.append(("  per CPU-second (process + broker)",
                 fmt(get(doc, "ingest.project.per_cpu_s"), unit="/cpu-s"),
                 fmt(get(doc, "ingest.ceiling.per_cpu_s"), unit="/cpu-s"),
                 x("ingest.cpu_ratio"), ""))
    for key in ("lateness", "lateness_fine"):
        step = get(doc, f"{key}.tick_interval_s")
        default_step = Settings.model_fields["tick_interval_s"].default
        default = " (the default)" if step == default_step else ""
        rows.append((f"lateness, {fmt(get(doc, f'{key}.rate_per_s'))} fires/s, "
                     f"{fmt(step, 'g')} s ticks{default}",
                     f"p50 {fmt(get(doc, f'{key}.p50_s'), '.2f')} s, "
                     f"p99 {fmt(get(doc, f'{key}.p99_s'), '.2f')} s, "
                     f"max {fmt(get(doc, f'{key}.max_s'), '.2f')} s",
                     "target p99 <= 1 s", x(f"{key}.p99_s"), la(key)))
        rows.append(("  after the tick p50 / p99; idle worker (ticks only)",
                     f"{fmt(get(doc, f'{key}.after_tick_p50_s'), '.2f')} / "
                     f"{fmt(get(doc, f'{key}.after_tick_p99_s'), '.2f')} s",
                     f"{fmt(get(doc, f'{key}.idle_worker_cores'), '.3f')} cores busy", "", ""))
    for m in doc.get("memory") or []:
        rss = m.get("rss_bytes")
        rows.append((f"memory, {m['tasks']:,} pending tasks",
                     f"{fmt(m.get('bytes_per_task'))} B/task "
                     f"({fmt(None if rss is None else rss / 1e6)} MB RSS)",
                     f"main: {REFERENCE_MAIN['bytes_per_task']:,} B/task", "", ""))
        restore = m.get("restore_s")
        rows.append((f"restore, {m['tasks']:,} tasks", fmt(restore, ".2f", " s"),
                     "-" if not restore else f"{m['tasks'] / restore:,.0f} tasks/s", "", ""))
    for i, s in enumerate(doc.get("scale") or []):
        rows.append((f"scale-out, {s['workers']} worker(s)",
                     f"ingest {fmt(s.get('ingest_per_s'))}/s, "
                     f"burst {fmt(s.get('burst_per_s'))}/s", "vs 1 worker",
                     f"{x(f'scale.{i}.ingest_ratio')} / {x(f'scale.{i}.burst_ratio')}",
                     la(f"scale.{i}")))
    f = doc.get("faust") or {}
    rows.append(("faust runtime (--runtime faust)", "-" if not f.get("available") else
                 f"ingest {fmt(f.get('ingest_per_s'))}/s, burst {fmt(f.get('burst_per_s'))}/s",
                 f.get("reason", "vs native: ingest / burst"),
                 "" if not f.get("available")
                 else f"{x('faust.ingest_ratio')} / {x('faust.burst_ratio')}", la("faust")))
    if f.get("available"):
        rows.append(("  faust lateness, same load",
                     f"p50 {fmt(get(doc, 'faust.lateness.p50_s'), '.2f')} s, "
                     f"p99 {fmt(get(doc, 'faust.lateness.p99_s'), '.2f')} s, "
                     f"max {fmt(get(doc, 'faust.lateness.max_s'), '.2f')} s",
                     f"native p99 {fmt(get(doc, 'lateness.p99_s'), '.2f')} s",
                     x("faust.lateness.p99_s"), la("faust.lateness")))
        rows.append(("  faust memory, RSS / pending tasks (no baseline)",
                     f"{fmt(f.get('bytes_per_task'))} B/task",
                     f"native {fmt(f.get('native_bytes_per_task'))} B/task", "", ""))
    rows += archive_interference.table_rows(doc)
    head = ("figure", "project", "compared with", "ratio", "load")
    widths = [max(len(r[k]) for r in [head, *rows]) for k in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [head, *rows]]
    meta = doc["meta"]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"load average (1/5/15 min): start {meta['load_average_start']}, "
                 f"end {meta.get('load_average_end')} on {meta['cpu_count']} cores; "
                 "absolute figures need a quiet machine, ratios are of this run")
    for phase in ("ingest", "burst"):
        ranked = get(doc, f"profile.{phase}")
        if ranked:
            top = ", ".join(f"{r['function']} {r['percent']}%" for r in ranked["self"][:3])
            lines.append(f"profile {phase}: {ranked['svg']} (top self: {top})")
    for key, error in (doc.get("failures") or {}).items():
        lines.append(f"FAILED {key}: {error[:300]}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000,
                        help="fires in the burst and events ingested (default 100000)")
    parser.add_argument("--rate", type=int, default=2000,
                        help="lateness: fires per second (default 2000)")
    parser.add_argument("--duration-s", type=float, default=30.0,
                        help="lateness: seconds of steady load (default 30)")
    parser.add_argument("--fine-tick-s", type=float, default=0.25,
                        help="lateness again with this sub-second tick interval (default 0.25)")
    parser.add_argument("--scale", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 2, 3], help="worker counts (default 1,2,3)")
    parser.add_argument("--memory-n", type=lambda s: [int(x) for x in s.split(",") if x],
                        default=[], help="extra memory/restore sizes, e.g. 1000000")
    parser.add_argument("--pollers", type=int, default=2, help="peer: pollers (default 2)")
    parser.add_argument("--batch", type=int, default=1000, help="peer: batch (default 1000)")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the py-spy run")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes: proves the suite runs (CI), measures nothing")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default $CRONORCH_STATE_DIR/bench/<time>)")
    parser.add_argument("--only", type=_sections, default=SECTIONS,
                        help="scenarios to run, comma-separated, of: " + ",".join(SECTIONS)
                        + " (default all; memory also runs the lateness scenario's empty "
                        "worker, its baseline; only their figures are then required)")
    parser.add_argument("--keep-topics", action="store_true",
                        help="leave the run's topics on the broker")
    archive_interference.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The client library warns on every retried send (a new topic's leader moving); the
    # retries succeed and the counts are verified, so only errors are worth a line.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    # SIGTERM unwinds like Ctrl-C, so the run still stops its processes and drops its topics.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.smoke:
        args.n, args.rate, args.duration_s, args.memory_n = 2000, 500, 3.0, []
        archive_interference.smoke(args)
    run = Run(args)
    run.say(f"results in {run.out}")

    async def go() -> dict[str, Any]:
        await kafka.wait_ready(run.base, timeout_s=60)
        try:
            return await suite(run)
        finally:
            await run.drop_all()

    doc = asyncio.run(go())
    (run.out / "results.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print(table(doc))
    print(f"results: {run.out / 'results.json'}")
    missing = missing_figures(doc, required_figures(args.only, args.profile))
    if missing:
        print(f"missing figures: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
