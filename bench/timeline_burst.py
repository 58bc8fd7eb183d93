"""Benchmark: the pure part of a burst, one timeline partition in process, no broker.

One partition holds N tasks (default 16,700: the 100,000-fire burst over 6 partitions),
each with one reminder due at 09:00 (``bench.workload``'s tasks); one tick at 09:00 fires
them all. Printed, per fire: the CPU time of ``PartitionState.tick`` alone, of the
timeline agent's whole handler on that tick record (decode, tick, encode every output,
the changelog values of the keys the tick touched, metrics), and the records and bytes
the handler hands to Kafka; per pending task: the Python heap (tracemalloc) and the RSS
growth of the state. ``--profile`` adds the top of a cProfile of the handler.

    .venv/bin/python bench/timeline_burst.py
    .venv/bin/python bench/timeline_burst.py --tasks 50000 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

import orjson

from bench.workload import burst_events
from schemas import TaskUpserted, Tick
from streams import codec
from streams.kafka.client import Record
from streams.processes.worker import TimelineAgent
from streams.settings import Settings
from streams.timeline.state import PartitionState

FIRE_AT = datetime(2026, 3, 9, 9, 0, tzinfo=UTC)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _events(n: int) -> list[TaskUpserted]:
    return [TaskUpserted.model_validate(e) for e in burst_events(n, FIRE_AT)]


def _loaded(settings: Settings, events: list[TaskUpserted]) -> TimelineAgent:
    agent = TimelineAgent(settings)
    agent.assign(0, [])
    state = agent.states[0]
    state.tick(FIRE_AT - timedelta(days=1))
    for event in events:
        state.apply(event)
    return agent


def _tick_record() -> Record:
    value = codec.encode_tick(FIRE_AT)
    return Record("scheduler.timeline", 0, 1, None, value, int(FIRE_AT.timestamp() * 1000))


def _fill(settings: Settings, values: list[bytes]) -> PartitionState:
    state = PartitionState(0, reminder_catchup_s=settings.reminder_catchup_s)
    state.tick(FIRE_AT - timedelta(days=1))
    for value in values:
        event = codec.decode_timeline(value)
        assert not isinstance(event, Tick)
        state.apply(event)
    return state


def memory(settings: Settings, n: int) -> tuple[float, float]:
    """(heap bytes, RSS growth bytes) per pending task of one partition, each task decoded
    from its record as the worker does (so the state's share of the decoded event counts).
    The RSS is read first, on a fresh heap and without tracemalloc's own tables."""
    values = [orjson.dumps(e) for e in burst_events(n, FIRE_AT)]
    gc.collect()
    rss0 = _rss_bytes()
    state = _fill(settings, values)
    gc.collect()
    rss = _rss_bytes() - rss0
    del state
    gc.collect()
    tracemalloc.start()
    heap0 = tracemalloc.get_traced_memory()[0]
    state = _fill(settings, values)
    gc.collect()
    heap = tracemalloc.get_traced_memory()[0] - heap0
    tracemalloc.stop()
    del state
    return heap / n, rss / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=16_700)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    settings = Settings()
    heap, rss = memory(settings, args.tasks)  # first: the RSS of a fresh heap
    events = _events(args.tasks)

    tick_s, handler_s = [], []
    records = value_bytes = changelog = 0
    for _ in range(args.rounds):
        agent = _loaded(settings, events)
        state = agent.states[0]
        gc.collect()
        started = time.process_time()
        effects = state.tick(FIRE_AT)
        tick_s.append(time.process_time() - started)
        assert effects.counts["notified"] == args.tasks, effects.counts

        agent = _loaded(settings, events)
        gc.collect()
        started = time.process_time()
        outputs = agent.process(0, [_tick_record()])
        handler_s.append(time.process_time() - started)
        records = len(outputs)
        value_bytes = sum(len(o.value or b"") for o in outputs)
        changelog = sum(o.topic == settings.topics.state_changelog for o in outputs)
    n = args.tasks
    print(f"tasks (one partition, one reminder each, all due on one tick): {n}")
    print(f"PartitionState.tick        {min(tick_s) / n * 1e6:8.2f} µs/fire")
    print(f"timeline handler (tick)    {min(handler_s) / n * 1e6:8.2f} µs/fire")
    print(f"records to Kafka           {records:8d} ({records / n:.2f}/fire; "
          f"{changelog} changelog), {value_bytes / n:.0f} value bytes/fire")
    print(f"memory per pending task    {heap:8.0f} B heap, {rss:.0f} B RSS growth")
    if args.profile:
        agent = _loaded(settings, events)
        profile = cProfile.Profile()
        profile.enable()
        agent.process(0, [_tick_record()])
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
