"""Reminders end to end against the real broker: exact expected set under read_committed,
with a clean run, with the worker SIGKILLed at random points, and across a rebalance.

The expected set comes from tests/model.py, written from DESIGN.md alone.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.cli import devstack
from streams.kafka import client as kafka
from streams.processes import tickproducer
from streams.settings import Settings
from tests.scenario import STEP, Scenario, build
from tests.support import (
    RUNTIMES,
    Proc,
    caught_up,
    committed_total,
    eventually,
    publish,
    read_json,
    worker_args,
)

pytestmark = pytest.mark.kafka


async def _ticks(settings: Settings, start: datetime, end: datetime, chunk: int = 0,
                 pause_s: float = 0.05) -> None:
    """Publish ticks start..end; in chunks of ``chunk`` ticks (separate transactions) if set."""
    if not chunk:
        await tickproducer.publish_range(settings, start, end, int(STEP.total_seconds()))
        return
    at = start
    while at <= end:
        last = min(end, at + STEP * (chunk - 1))
        await tickproducer.publish_range(settings, at, last, int(STEP.total_seconds()))
        at = last + STEP
        await asyncio.sleep(pause_s)


async def _drive(settings: Settings, sc: Scenario, chunk: int = 0, pause_s: float = 0.05) -> None:
    await publish(settings, sc.phase_a)
    await caught_up(settings, "rekeyer", settings.topics.task_events, transactional=False)
    await _ticks(settings, *sc.ticks_a, chunk=chunk, pause_s=pause_s)
    await publish(settings, sc.phase_b)
    await caught_up(settings, "rekeyer", settings.topics.task_events, transactional=False)
    await _ticks(settings, *sc.ticks_b, chunk=chunk, pause_s=pause_s)


async def _verify(settings: Settings, sc: Scenario, min_expected: int = 1000) -> None:
    await caught_up(settings, "timeline", settings.topics.timeline, transactional=True,
                    timeout_s=180)
    model = sc.expected()
    # Digests of these users flow too; tests/acceptance/test_local_time.py checks those.
    got = [n for n in await read_json(settings, settings.topics.notifications)
           if n["type"] == "reminder.due"]
    ids = Counter(n["notification_id"] for n in got)
    duplicates = {i: c for i, c in ids.items() if c > 1}
    assert not duplicates, f"{len(duplicates)} duplicate notification ids"
    by_id = {n["notification_id"]: n for n in got}
    missing = model.expected.keys() - by_id.keys()
    extra = by_id.keys() - model.expected.keys()
    assert not missing and not extra, f"{len(missing)} missing, {len(extra)} unexpected"
    wrong = [i for i in by_id if by_id[i] != model.expected[i]]
    assert not wrong, f"{len(wrong)} differ, e.g. {by_id[wrong[0]]} != {model.expected[wrong[0]]}"
    letters = await read_json(settings, settings.topics.dead_letters)
    assert len(letters) == sc.poison_count
    # The scenario exercises every path; guard against a degenerate run.
    assert len(model.expected) > min_expected and model.missed > 5
    assert any(n["late"] for n in got) and any(not n["late"] for n in got)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_end_to_end_exact_set(settings: Settings, tmp_path: Path, runtime: str) -> None:
    sc = build()
    worker = Proc(settings, *worker_args(runtime), log=tmp_path / "worker.log").start()
    try:
        asyncio.run(_drive(settings, sc))
        asyncio.run(_verify(settings, sc))
    finally:
        assert worker.kill(signal.SIGTERM) == 0, (tmp_path / "worker.log").read_text()[-3000:]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sigkill_at_random_points(settings: Settings, tmp_path: Path, runtime: str) -> None:
    """At least 5 SIGKILLs while work is in flight: 0 missing, 0 duplicate notification ids.

    Each kill waits until the restarted worker has committed progress, then lands a random
    0-1.5 s later, so kills hit a worker that is restoring, processing or committing. The
    faust runtime starts slower (its app, then the group join): it gets 5 kills, then
    finishes the run unharmed, so that its run stays short.
    """
    sc = build(seed=11)
    max_kills = 5 if runtime == "faust" else None
    log = tmp_path / "worker.log"
    rng = random.Random(3)
    kills_in_flight = 0

    async def progress() -> int:
        return await committed_total(settings, "timeline", settings.topics.timeline)

    async def scenario() -> None:
        nonlocal kills_in_flight
        worker = Proc(settings, *worker_args(runtime), log=log).start()
        # The faust runtime's restarts take longer: its ticks come slower, so that five
        # kills land before they are all out (at 0.25 s only four did on a quiet machine).
        pause_s = 0.5 if runtime == "faust" else 0.25
        driving = asyncio.create_task(_drive(settings, sc, chunk=4, pause_s=pause_s))
        try:
            while not driving.done():
                before = await progress()
                await eventually(lambda b=before: _moved(progress, b, driving), 60, "progress")
                await asyncio.sleep(rng.uniform(0, 1.5))
                if driving.done() or kills_in_flight == max_kills:
                    break
                worker.kill(signal.SIGKILL)
                kills_in_flight += 1
                worker = Proc(settings, *worker_args(runtime), log=log).start()
            await driving
            await _verify(settings, sc)
        finally:
            driving.cancel()
            worker.kill(signal.SIGTERM)

    asyncio.run(scenario())
    assert kills_in_flight >= 5


async def _moved(progress: Any, before: int, driving: asyncio.Task[None]) -> bool:
    return driving.done() or await progress() > before


# The faust runtime failed this in about half the runs until stop 17 ("829 missing, 71
# unexpected"): the records faust dropped during a rebalance were never read again on a
# partition that had no committed offset yet, and this test's rebalances come early (the
# second worker joins, then leaves a second after its first restore). Fixed in
# streams/faust/transport.py (Consumer.seek_to_committed); tests/acceptance/
# test_faust_seek.py makes that drop on purpose.
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_rebalance_two_workers(settings: Settings, tmp_path: Path, runtime: str) -> None:
    """Two workers; one stopped and restarted mid-run: 0 missing, 0 duplicate."""
    sc = build(seed=23)
    args = worker_args(runtime)

    async def scenario() -> None:
        a = Proc(settings, *args, log=tmp_path / "a.log").start()
        b = Proc(settings, *args, log=tmp_path / "b.log").start()
        procs: list[Any] = [a, b]
        driving = asyncio.create_task(_drive(settings, sc, chunk=20))
        try:
            # b must own restored timeline partitions before it leaves, or its stop moves
            # nothing (a loaded machine can take seconds just to start the interpreters).
            await eventually(lambda: _restored(tmp_path / "b.log", "timeline"), 60,
                             "the second worker to restore timeline partitions")
            b.kill(signal.SIGTERM)
            await asyncio.sleep(5)
            b2 = Proc(settings, *args, log=tmp_path / "b2.log").start()
            procs.append(b2)
            await driving
            await _verify(settings, sc)
        finally:
            driving.cancel()
            for p in procs:
                p.kill(signal.SIGTERM)

    asyncio.run(scenario())


def _restored(log: Path, role: str) -> bool:
    """Whether the worker logging to ``log`` has restored one of ``role``'s partitions (on
    the faust runtime that happens at the partition's first event after the assignment)."""
    lines = log.read_text().splitlines() if log.exists() else []
    return any('"partition restored"' in line and orjson.loads(line).get("role") == role
               for line in lines)


def test_scenario_model_is_not_trivial() -> None:
    """The model itself: every branch of the rules is exercised by the scenario."""
    model = build().expected()
    late = sum(n["late"] for n in model.expected.values())
    assert len(model.expected) > 1000 and late > 20 and model.missed > 5
    fire_after_due = [n for n in model.expected.values()
                      if datetime.fromisoformat(n["fire_at"]) > datetime.fromisoformat(n["due_at"])]
    assert not fire_after_due or all(n["reminder"].get("at") for n in fire_after_due)
    assert timedelta(0) < STEP


def test_broker_restart_mid_run(settings: Settings, stack: devstack.Stack,
                                tmp_path: Path) -> None:
    """Kafka stopped for 10 s between the phases: the worker waits the outage out and the
    notifications are still exactly the expected set. (A stop inside the worker's first
    restore is tests/acceptance/test_liveness.py's.)"""
    sc = build(seed=31, tasks=400)
    log = tmp_path / "worker.log"
    worker = Proc(settings, "worker", log=log).start()

    async def phase_a() -> None:
        await publish(settings, sc.phase_a)
        await caught_up(settings, "rekeyer", settings.topics.task_events, transactional=False)
        await _ticks(settings, *sc.ticks_a)
        await caught_up(settings, "timeline", settings.topics.timeline, transactional=True)

    async def phase_b() -> None:
        await kafka.wait_ready(settings, timeout_s=60)
        await publish(settings, sc.phase_b)
        await caught_up(settings, "rekeyer", settings.topics.task_events, transactional=False)
        await _ticks(settings, *sc.ticks_b)

    try:
        asyncio.run(phase_a())
        devstack.stop_kafka(stack)
        time.sleep(10)
        devstack.start_kafka(stack)
        asyncio.run(phase_b())
        asyncio.run(_verify(settings, sc, min_expected=300))
        assert worker.alive(), log.read_text()[-3000:]
    finally:
        worker.kill(signal.SIGTERM)
