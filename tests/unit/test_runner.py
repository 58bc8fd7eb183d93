"""The job runner on the in-memory twin of its store: no sockets, no clock.

The same runner code as in production, against ``MemoryRunStore`` (whose behaviour the
contract suite in tests/integration pins to PostgreSQL's): one run per slot whatever the
runners and duplicates, the overlap policies, and a dead runner's slot resumed once.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import JobRun
from streams.jobs import registry
from streams.processes.runner import Runner
from streams.testing.stores import MemoryRunStore
from tests.support import eventually

NOW = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)


class Gate:
    """The noop kind's sleep, held until the test opens it."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.entered = 0

    async def sleep(self, _: float) -> None:
        self.entered += 1
        await self.opened.wait()


def _job(**overrides: Any) -> registry.Job:
    raw = {"name": "drill", "kind": "noop", "schedule": "* * * * *", "catchup_window_s": 3600,
           **overrides}
    return registry.parse({"jobs": [raw]}).jobs[0]


def _runner(job: registry.Job, store: MemoryRunStore, emitted: list[JobRun], *,
            sleep: Any = None, runner_id: str | None = None) -> Runner:
    async def emit(run: JobRun) -> None:
        emitted.append(run)

    async def no_wait(_: float) -> None:
        return None

    return Runner(registry.Registry((job,)), store, clock=lambda: NOW + timedelta(seconds=1),
                  rng=random.Random(1), emit=emit, sleep=sleep or no_wait,
                  runner_id=runner_id)


def _statuses(rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(int((r["scheduled_for"] - NOW) / timedelta(minutes=1)), r["status"])
            for r in rows]


def test_many_runners_and_duplicates_run_a_slot_once() -> None:
    job = _job(overlap="allow")
    root = MemoryRunStore()
    emitted: list[JobRun] = []

    async def go() -> list[dict[str, Any]]:
        runners = [_runner(job, root.sibling(), emitted) for _ in range(5)]
        started = await asyncio.gather(*(r.dispatch(job, NOW, "schedule", "x", NOW)
                                         for r in runners for _ in range(3)))
        tasks = [t for t in started if t is not None]
        assert len(tasks) == 1
        await tasks[0]
        return await root.runs(job.name)

    rows = asyncio.run(go())
    assert [(r["status"], r["attempt"]) for r in rows] == [("succeeded", 1)]
    assert [r.status for r in emitted] == ["succeeded"]


def test_buffer_one_queues_one_slot_and_skips_the_rest() -> None:
    job = _job(overlap="buffer_one")
    store = MemoryRunStore()
    emitted: list[JobRun] = []

    async def go() -> list[dict[str, Any]]:
        gate = Gate()
        runner = _runner(job, store, emitted, sleep=gate.sleep)
        first = await runner.dispatch(job, NOW, "schedule", "a", NOW)
        await eventually(lambda: gate.entered == 1, 5, "the first run at the gate")
        queued = await runner.dispatch(job, NOW + timedelta(minutes=1), "schedule", "b", NOW)
        skipped = await runner.dispatch(job, NOW + timedelta(minutes=2), "schedule", "c", NOW)
        assert first is not None and queued is not None and skipped is None
        assert _statuses(await store.runs(job.name)) == [
            (0, "running"), (1, "queued"), (2, "skipped")]
        assert gate.entered == 1  # the queued slot waits for the job's lock
        assert not queued.done()
        gate.opened.set()
        await asyncio.gather(first, queued)
        return await store.runs(job.name)

    rows = asyncio.run(go())
    assert _statuses(rows) == [(0, "succeeded"), (1, "succeeded"), (2, "skipped")]
    assert rows[1]["started_at"] >= rows[0]["finished_at"]


def test_a_dead_runners_slot_is_failed_then_resumed_once() -> None:
    job = _job()
    root = MemoryRunStore()
    emitted: list[JobRun] = []

    async def go() -> list[dict[str, Any]]:
        dying_store = root.sibling()
        gate = Gate()
        dying = _runner(job, dying_store, emitted, sleep=gate.sleep, runner_id="dying")
        assert await dying.dispatch(job, NOW, "schedule", "x", NOW) is not None
        await eventually(lambda: gate.entered == 1, 5, "the dying run at the gate")
        await dying_store.close()  # the process dies: its sessions and locks go
        other = _runner(job, root.sibling(), emitted, runner_id="other")
        assert await other.sweep() == 1
        await asyncio.gather(*other.tasks)
        assert await other.sweep() == 0
        for task in dying.tasks:
            task.cancel()
        return await root.runs(job.name)

    rows = asyncio.run(go())
    assert [(r["status"], r["attempt"], r["runner_id"]) for r in rows] == [
        ("succeeded", 2, "other")]
    assert [(r.status, r.attempt, r.error_class) for r in emitted] == [
        ("failed", 1, "Abandoned"), ("succeeded", 2, None)]
