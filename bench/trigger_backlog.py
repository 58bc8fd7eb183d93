"""Benchmark: what deciding every tick on its own costs the job trigger agent.

The agent decides each tick against the one before it (docs/jobs.md), so a backlog of ticks
(a restart, a range replay) is walked tick by tick instead of once per consumed batch. This
times ``TriggerAgent.process`` over 6 hours of 1 s ticks and 5 days of 60 s ticks, in the
engine's batches of 2,000, for registries of 2 and 20 jobs, and prints ticks per second.
Decoding the ticks is included (it is part of every batch). Machines here are noisy: compare
the rows of one run, not absolute figures.

    .venv/bin/python bench/trigger_backlog.py
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from streams.codec import encode_tick
from streams.jobs import registry
from streams.kafka.client import Record
from streams.processes.jobrunner import TriggerAgent
from streams.settings import Settings

T0 = datetime(2027, 3, 12, tzinfo=UTC)
BATCH = 2000


def jobs(count: int) -> registry.Registry:
    raw = [{"name": f"job-{i}", "kind": "noop", "schedule": f"{i % 60} * * * *",
            "timezone": "America/New_York"} for i in range(count - 2)]
    raw += [{"name": "archive", "kind": "archive_completed", "schedule": "30 2 * * *",
             "timezone": "America/New_York"},
            {"name": "purge", "kind": "purge_expired", "schedule": "0 4 * * *"}]
    return registry.parse({"jobs": raw})


def measure(reg: registry.Registry, step_s: int, span: timedelta) -> tuple[int, float]:
    settings = Settings(tick_interval_s=step_s)
    count = int(span.total_seconds()) // step_s
    records = [Record(settings.topics.ticks, 0, i, None,
                      encode_tick(T0 + timedelta(seconds=i * step_s)), 0) for i in range(count)]
    agent = TriggerAgent(settings, reg)
    agent.assign(0, [])
    start = time.perf_counter()
    for i in range(0, count, BATCH):
        agent.process(0, records[i:i + BATCH])
    return count, time.perf_counter() - start


def main() -> None:
    print(f"{'jobs':>5} {'grid':>5} {'ticks':>7} {'seconds':>8} {'ticks/s':>10}")
    for count in (2, 20):
        reg = jobs(count)
        for step_s, span in ((1, timedelta(hours=6)), (60, timedelta(days=5))):
            ticks, elapsed = measure(reg, step_s, span)
            print(f"{count:>5} {step_s:>4}s {ticks:>7} {elapsed:>8.3f} {ticks / elapsed:>10,.0f}")


if __name__ == "__main__":
    main()
