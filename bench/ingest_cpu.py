"""Benchmark: the ingest through the worker's handlers, in process, no broker — CPU per event
under each garbage-collector policy (issue 9, stop 16).

N encoded ``task.upserted`` (the suite's workload, ``bench.workload.task_event``; new tasks)
go through both hops as the engine hands them over: ``Rekeyer.process`` on batches of
``--batch`` records of a task-events partition, then ``TimelineAgent.process`` on what it
re-keyed, one call per timeline partition (6). Before the ingest each timeline partition is
assigned through ``TimelineAgent.assign`` with a changelog holding ``--state`` tasks in all
(the state a worker restored), so the collector has a live heap to walk, as in a worker.

Each policy runs in a fresh interpreter (the collector's state is process-wide), rounds
interleaved; printed per policy: µs of CPU per event (``time.process_time``: another process
on the machine stretches it less than wall time), the best and the median of the rounds,
the collections per generation, the CPU spent inside the collector (``gc.callbacks``) and
its longest pause.

- ``default``: CPython's thresholds (700, 10, 10), nothing frozen (main before stop 16).
- ``freeze``: CPython's thresholds; start-up and each restored partition frozen
  (``collector.settle``).
- ``young``: only the worker's thresholds (``collector.YOUNG_THRESHOLD``), nothing frozen.
- ``worker``: both, as ``streams.processes.collector`` sets up the worker.
- ``off``: the collector disabled, the bound (not a policy: cycles would never be freed).

``--pause`` instead times one full collection (``gc.collect()``) of a worker holding
``--state`` tasks, with and without the worker's policy: what a gen-2 pass would hold the
event loop for.

    .venv/bin/python -m bench.ingest_cpu [--n 50000] [--state 100000] [--rounds 3]
    .venv/bin/python -m bench.ingest_cpu --pause --state 1000000
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from bench.workload import task_event
from schemas import Tick
from streams import codec
from streams.kafka import client as kafka
from streams.kafka.client import Record
from streams.processes import collector
from streams.processes.worker import Rekeyer, TimelineAgent
from streams.settings import Settings
from streams.timeline.changelog import snapshot
from streams.timeline.state import PartitionState

FIRE_AT = datetime(2026, 3, 9, 9, 0, tzinfo=UTC)
OCCURRED_AT = FIRE_AT - timedelta(days=1)
PARTITIONS = 6
POLICIES = ("default", "freeze", "young", "worker", "off")


def _changelogs(settings: Settings, tasks: int) -> dict[int, list[Record]]:
    """Per timeline partition, the changelog a worker holding ``tasks`` tasks would restore."""
    partition_of: dict[bytes, int] = {}
    states = {p: PartitionState(p, reminder_catchup_s=settings.reminder_catchup_s)
              for p in range(PARTITIONS)}
    for state in states.values():
        state.tick(OCCURRED_AT)
    for i in range(tasks):
        value = orjson.dumps(task_event(i, FIRE_AT, OCCURRED_AT))
        key = codec.route_task_event(value)
        p = partition_of.get(key)
        if p is None:
            p = partition_of[key] = kafka.partition_for(key, PARTITIONS)
        event = codec.decode_timeline(value)
        assert not isinstance(event, Tick)
        states[p].apply(event)
    logs: dict[int, list[Record]] = {}
    for p, state in states.items():
        keys = ["w", *state.users, *state.tasks]
        logs[p] = [Record("changelog", p, offset, k.encode(), snapshot(state, k), 0)
                   for offset, k in enumerate(keys)]
    return logs


def _batches(first: int, n: int, batch: int) -> list[list[Record]]:
    values = [orjson.dumps(task_event(first + i, FIRE_AT, OCCURRED_AT)) for i in range(n)]
    return [[Record("todo.task-events", 0, offset, None, v, 0)
             for offset, v in enumerate(values[start:start + batch], start)]
            for start in range(0, n, batch)]


class _Pauses:
    """CPU time spent in the collector, per collection, through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.started = 0.0
        self.pauses: list[float] = []
        self.by_generation = [0, 0, 0]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.process_time()
        else:
            self.pauses.append(time.process_time() - self.started)
            self.by_generation[info["generation"]] += 1


def _setup(policy: str) -> None:
    """The collector as ``policy`` has it at the worker's start."""
    if policy == "off":
        gc.disable()
    elif policy == "worker":
        collector.configure()
    elif policy == "young":
        gc.set_threshold(collector.YOUNG_THRESHOLD, collector.MIDDLE_THRESHOLD,
                         collector.OLD_THRESHOLD)
    elif policy == "freeze":
        gc.freeze()


def _restored(policy: str) -> Callable[[], None] | None:
    """What ``policy`` does after each partition's restore."""
    return {"worker": collector.settle, "freeze": collector.settle}.get(policy)


def one(policy: str, n: int, state: int, batch: int) -> dict[str, Any]:
    """One round of ``policy`` in this (fresh) interpreter."""
    settings = Settings()
    logs = _changelogs(settings, state)
    batches = _batches(state, n, batch)
    gc.collect()
    _setup(policy)  # as the worker does at start, before its partitions are assigned
    rekeyer = Rekeyer(settings, PARTITIONS)
    agent = TimelineAgent(settings, restored=_restored(policy))
    for p in range(PARTITIONS):
        agent.assign(p, logs[p])
    del logs
    pauses = _Pauses()
    gc.callbacks.append(pauses)
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    started = time.process_time()
    for records in batches:
        per_partition: dict[int, list[Record]] = {}
        for out in rekeyer.process(0, records):
            assert out.partition is not None
            p = out.partition
            offsets[p] += 1
            per_partition.setdefault(p, []).append(
                Record("scheduler.timeline", p, offsets[p], out.key, out.value, 0))
        for p, timeline in per_partition.items():
            agent.process(p, timeline)
    cpu_s = time.process_time() - started
    gc.callbacks.remove(pauses)
    tasks = sum(len(s.tasks) for s in agent.states.values())
    assert tasks == state + n, (tasks, state, n)
    return {"policy": policy, "us_per_event": cpu_s / n * 1e6,
            "gc_cpu_s": sum(pauses.pauses), "gc_max_pause_s": max(pauses.pauses, default=0.0),
            "collections": pauses.by_generation}


def pause(state: int) -> dict[str, Any]:
    """A full collection with ``state`` tasks held, without and with the worker's policy."""
    settings = Settings()
    logs = _changelogs(settings, state)
    agent = TimelineAgent(settings)
    for p in range(PARTITIONS):
        agent.assign(p, logs[p])
    del logs
    figures: dict[str, Any] = {"tasks": state, "tracked_objects": len(gc.get_objects())}
    for label in ("default", "worker"):
        if label == "worker":
            collector.settle()  # what the worker does after each partition's restore
        times = []
        for _ in range(3):
            started = time.process_time()
            found = gc.collect()
            times.append(time.process_time() - started)
        figures[label] = {"full_collection_s": min(times), "unreachable": found}
    return figures


def _child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.ingest_cpu", *args],
                         check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_cpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="events ingested (default 50000)")
    parser.add_argument("--state", type=int, default=100_000,
                        help="tasks restored before the ingest (default 100000)")
    parser.add_argument("--batch", type=int, default=2_000,
                        help="records per re-keyer call (default 2000, the engine's poll)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--pause", action="store_true", help="time a full collection instead")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.n, args.state, args.batch)))
        return
    if args.pause:
        figures: Any = pause(args.state)
        print(json.dumps(figures, indent=2))
    else:
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in args.policies.split(",")}
        for _ in range(args.rounds):
            for policy in runs:
                runs[policy].append(_child(["--one", policy, "--n", str(args.n), "--state",
                                            str(args.state), "--batch", str(args.batch)]))
        print(f"{args.n} events ingested over {PARTITIONS} partitions holding {args.state} "
              f"tasks; {args.rounds} rounds, CPU time")
        print(f"{'policy':<9} {'best µs/event':>14} {'median':>8} {'in gc µs/event':>15} "
              f"{'max pause ms':>13}  collections gen0/1/2")
        figures = {}
        for policy, rs in runs.items():
            us = [r["us_per_event"] for r in rs]
            best = min(rs, key=lambda r: r["us_per_event"])
            figures[policy] = {"best_us": min(us), "median_us": statistics.median(us),
                               "rounds": rs}
            print(f"{policy:<9} {min(us):>14.2f} {statistics.median(us):>8.2f} "
                  f"{best['gc_cpu_s'] / args.n * 1e6:>15.2f} "
                  f"{best['gc_max_pause_s'] * 1e3:>13.1f}  "
                  f"{'/'.join(str(c) for c in best['collections'])}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
