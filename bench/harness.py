"""Plumbing of the benchmark suite: subprocesses, their logs and memory, offsets, py-spy.

Progress is read from outside the processes under test, as an operator would: committed
offsets of a consumer group against the end of its source topic (a transactional hop has
committed a batch exactly when its offsets move), assignments from the workers' JSON logs,
resident memory from /proc. Nothing here sleeps to wait for an outcome; it polls.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka import client as kafka
from streams.settings import Settings
from tests.support import ROOT, Proc

POLL_S = 0.05


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """CPU time (user + system) ``pid`` has used; with ``reaped_children`` also that of its
    exited children (a postmaster's finished backends). 0 for a process that is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _TICKS_PER_S


class StackCpu:
    """CPU time of the local stack's Kafka broker and PostgreSQL (postmaster, its live
    backends and those already reaped), found through the stack's pid files."""

    def __init__(self, state_dir: Path) -> None:
        self.kafka_pid = int((state_dir / "kafka" / "kafka.pid").read_text().split()[0])
        postmaster = state_dir / "postgres" / "data" / "postmaster.pid"
        self.pg_pid = int(postmaster.read_text().split()[0]) if postmaster.exists() else None

    def kafka(self) -> float:
        return cpu_seconds(self.kafka_pid)

    def postgres(self) -> float:
        if self.pg_pid is None:
            return 0.0
        total = cpu_seconds(self.pg_pid, reaped_children=True)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            if int(text.rsplit(")", 1)[1].split()[1]) == self.pg_pid:  # ppid
                total += cpu_seconds(int(stat.parent.name))
        return total


def pid_of(proc: Proc) -> int:
    assert proc.proc is not None
    return proc.proc.pid


def stop(proc: Proc) -> None:
    """SIGTERM (a clean stop), SIGKILL after 30 s."""
    proc.kill(signal.SIGTERM)


class Offsets:
    """Committed offsets of groups and end offsets of topics, through long-lived clients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ends = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                     isolation_level="read_uncommitted")
        self.groups: dict[str, AIOKafkaConsumer] = {}
        self.partitions: dict[str, int] = {}

    async def start(self) -> None:
        await self.ends.start()

    async def close(self) -> None:
        await self.ends.stop()
        for client in self.groups.values():
            await client.stop()

    async def _tps(self, topic: str) -> list[TopicPartition]:
        if topic not in self.partitions:
            self.partitions[topic] = await kafka.partition_count(self.settings, topic)
        return [TopicPartition(topic, p) for p in range(self.partitions[topic])]

    async def end(self, topic: str) -> list[int]:
        tps = await self._tps(topic)
        ends = await self.ends.end_offsets(tps)
        return [ends[tp] for tp in tps]

    async def committed(self, role: str, topic: str) -> list[int]:
        client = self.groups.get(role)
        if client is None:
            client = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap_servers,
                                      group_id=self.settings.group_id(role),
                                      enable_auto_commit=False)
            await client.start()
            self.groups[role] = client
        return [(await client.committed(tp)) or 0 for tp in await self._tps(topic)]


async def poll_until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> float:
    """Poll ``check`` every 50 ms; return the wall-clock time it first held."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(POLL_S)


def caught_up(ends: list[int], committed: list[int], transactional: bool) -> bool:
    """A transactional topic ends each transaction with a control record no consumer commits
    past, so there one record of lag per partition is caught up."""
    slack = 1 if transactional else 0
    return all(e - c <= slack for e, c in zip(ends, committed, strict=True))


async def planned(settings: Settings, offsets: Offsets, n: int, timeout_s: float) -> float:
    """When the worker has re-keyed the first ``n`` task events and planned them: every
    re-keyed event committed, the timeline caught up (ticks may keep coming)."""
    t = settings.topics

    async def done() -> bool:
        if sum(await offsets.committed("rekeyer", t.task_events)) < n:
            return False
        return caught_up(await offsets.end(t.timeline),
                         await offsets.committed("timeline", t.timeline), True)

    return await poll_until(done, timeout_s, f"{n} task events to be planned")


@dataclass
class Flow:
    """Two chained hops, as the worker has them: ``first`` reads ``source`` into ``middle``,
    ``second`` reads ``middle``."""

    first: str
    source: str
    second: str
    middle: str


@dataclass
class FlowResult:
    records: float  # events fully through both hops in the window (see measure_flow)
    seconds: float
    window: str  # "settled": from the group's settling; "whole": from the process start
    cpu_s: float  # CPU time of the processes under test in the window
    broker_cpu_s: float  # CPU time of the Kafka broker in the window

    @property
    def per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


async def measure_flow(offsets: Offsets, flow: Flow, n: int, timeout_s: float,
                       settled_at: Callable[[], float | None], pids: list[int],
                       stack: StackCpu) -> FlowResult:
    """Time both hops over ``n`` pre-published records, polled from the process start.

    The window opens when every hop holds its partitions (``settled_at()``, from the
    processes' logs, read once it is all over) and closes when both hops have committed
    everything. One hop may start seconds before the other (the timeline restores its
    state first), so the work counted is that of both hops inside the window, read off the
    committed offsets at its opening, in events: ((n - first) + (n - second)) / 2.
    Offsets of the second hop include transaction markers (well under 1 % here). If the
    groups settle after nine tenths of the work (smoke sizes), the window is the whole run
    from the first poll instead, and says so.
    """
    source_end = sum(await offsets.end(flow.source))
    if source_end != n:
        raise RuntimeError(f"{flow.source} holds {source_end} records, expected {n}")
    series: list[tuple[float, ...]] = []
    deadline = time.monotonic() + timeout_s
    while True:
        first = sum(await offsets.committed(flow.first, flow.source))
        second = await offsets.committed(flow.second, flow.middle)
        now = time.time()
        series.append((now, first, min(sum(second), n),
                       sum(cpu_seconds(pid) for pid in pids), stack.kafka()))
        if first >= n and caught_up(await offsets.end(flow.middle), second, True):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s: {flow.first} committed "
                               f"{first} of {n}")
        await asyncio.sleep(POLL_S)
    settled = settled_at()
    _, _, _, cpu_end, broker_end = series[-1]
    if settled is not None and settled < now:
        first_at, second_at, cpu_at, broker_at = _at(series, settled)
        work = (n - first_at) + (n - second_at)
        if work >= n // 5:
            return FlowResult(work / 2, now - settled, "settled", cpu_end - cpu_at,
                              broker_end - broker_at)
    t0, first0, second0, cpu0, broker0 = series[0]
    return FlowResult(((n - first0) + (n - second0)) / 2, now - t0, "whole", cpu_end - cpu0,
                      broker_end - broker0)


def _at(series: list[tuple[float, ...]], at: float) -> tuple[float, ...]:
    """The values polled with instant ``at`` (committed counts, CPU times), interpolated."""
    before = [p for p in series if p[0] <= at] or series[:1]
    after = [p for p in series if p[0] >= at] or series[-1:]
    (t0, *v0), (t1, *v1) = before[-1], after[0]
    share = 0.0 if t1 <= t0 else (at - t0) / (t1 - t0)
    return tuple(a + share * (b - a) for a, b in zip(v0, v1, strict=True))


# --- worker logs ---------------------------------------------------------------------------

def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class WorkerLog:
    """What a worker's JSON log says: when it started, what each role holds now."""

    path: Path
    started_at: float | None = None
    assigned_at: dict[str, float] = field(default_factory=dict)  # role → last assignment
    joining_at: dict[str, float] = field(default_factory=dict)  # role → first (empty) revoke
    # role → the last "partition restored" (restores run after the assignment, off the
    # rebalance listener: the assignment alone says nothing of the restore's end)
    restored_at: dict[str, float] = field(default_factory=dict)
    restored: dict[str, set[int]] = field(default_factory=dict)  # held and restored since
    holds: dict[str, set[int]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)

    def read(self) -> WorkerLog:
        fresh = WorkerLog(self.path)
        if not self.path.exists():
            return fresh
        for line in self.path.read_bytes().splitlines():
            if not line.startswith(b"{"):
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            event, role = doc.get("event"), doc.get("role")
            if event == "worker started":
                fresh.started_at = _ts(doc["ts"])
            elif event == "partitions assigned" and role:
                fresh.holds.setdefault(role, set()).update(doc["partitions"])
                fresh.restored.setdefault(role, set()).difference_update(doc["partitions"])
                fresh.assigned_at[role] = _ts(doc["ts"])
            elif event == "partition restored" and role:
                fresh.restored.setdefault(role, set()).add(doc["partition"])
                fresh.restored_at[role] = _ts(doc["ts"])
            elif event == "partitions revoked" and role:
                fresh.joining_at.setdefault(role, _ts(doc["ts"]))
                fresh.holds.setdefault(role, set()).difference_update(doc["partitions"])
                fresh.restored.setdefault(role, set()).difference_update(doc["partitions"])
            if doc.get("level") in ("error", "critical"):
                fresh.errors[str(doc.get("event"))] += 1
        return fresh


def stable(logs: list[WorkerLog], roles: tuple[str, ...], partitions: int, *,
           restored: bool = False) -> bool:
    """Every worker holds part of every role and together they hold each partition once
    (and, with ``restored``, has restored each partition it holds)."""
    return settled_at(logs, roles, partitions, restored=restored) is not None


def settled_at(logs: list[WorkerLog], roles: tuple[str, ...], partitions: int, *,
               restored: bool = False) -> float | None:
    """When the last assignment that made the processes ``stable`` was logged, or None.

    With ``restored`` (the project's workers: each partition is restored after its
    assignment, off the rebalance listener, and logs "partition restored"), when the last
    held partition was restored: until then a partition is paused and processes nothing."""
    current = [log.read() for log in logs]
    for role in roles:
        held = [w.holds.get(role, set()) for w in current]
        if not all(held) or sum(len(h) for h in held) != partitions \
                or set().union(*held) != set(range(partitions)):
            return None
        if restored and any(not h <= w.restored.get(role, set())
                            for w, h in zip(current, held, strict=True)):
            return None
    if restored:
        return max(w.restored_at[role] for w in current for role in roles)
    return max(w.assigned_at[role] for w in current for role in roles)


# --- py-spy --------------------------------------------------------------------------------

class Profile:
    """``py-spy record`` attached to a running process, writing collapsed stacks (raw).

    Blocking mode (py-spy pauses the process for each sample): ``--nonblocking`` reads the
    stacks of a running process and misattributed up to 12 % of the samples here (to
    ``prometheus_client``'s ``labels``, 1 µs a call when measured); the profile runs apart
    from the measured ones, so the pauses cost no figure."""

    def __init__(self, pid: int, out: Path, rate_hz: int = 100) -> None:
        self.out = out
        self.log = out.with_suffix(".log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
                 "--format", "raw", "--rate", str(rate_hz),
                 "--output", str(out)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)

    def finish(self, timeout_s: float = 30) -> Path:
        """Stop sampling (SIGINT makes py-spy write its file) and return the file."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {self.log.read_text()[-500:]}")
        return self.out


def run_json(args: list[str], env: dict[str, str], timeout_s: float) -> Any:
    """Run a helper to completion and decode the JSON on its last stdout line."""
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, timeout=timeout_s,
                          check=True)
    return orjson.loads(done.stdout.splitlines()[-1])
