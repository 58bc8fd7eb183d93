"""The job runner on PostgreSQL: once per slot whatever the runners and duplicates, decided
slots recorded with their reason, failures recorded, abandoned slots swept and resumed, run
windows, undo, and the process loop resuming partial runs."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import JobRun, JobTrigger
from streams.errors import Refused
from streams.jobs import decisions as jobs
from streams.jobs import registry
from streams.processes.jobrunner import Runner
from streams.stores import Claim
from tests.integration.jobdb import (
    NOW,
    WallClock,
    appender,
    ids,
    make_job,
    make_runner,
    run_store,
    seed,
)
from tests.support import eventually

pytestmark = pytest.mark.postgres


# --- once per slot ---------------------------------------------------------------------------


def test_concurrent_claims_of_one_slot_run_it_once(database: str) -> None:
    job = make_job("noop", params={"sleep_s": 0.2}, overlap="allow")
    reg = registry.Registry((job,))
    emitted: list[JobRun] = []

    async def go() -> list[dict[str, Any]]:
        dbs = [await run_store(database, max_size=3) for _ in range(8)]
        try:
            runners = [make_runner(reg, db, emitted, seed=i) for i, db in enumerate(dbs)]
            tasks = await asyncio.gather(*(r.dispatch(job, NOW, "schedule", "x", NOW)
                                           for r in runners for _ in range(2)))
            started = [t for t in tasks if t is not None]
            assert len(started) == 1
            await started[0]
            return await dbs[0].runs(job.name)
        finally:
            for db in dbs:
                await db.db.close()

    rows = asyncio.run(go())
    assert [(r["scheduled_for"], r["status"], r["attempt"]) for r in rows] == [
        (NOW, "succeeded", 1)]
    assert [r.status for r in emitted] == ["succeeded"]


def test_decided_slots_get_one_row_each_with_the_reason(database: str) -> None:
    job = make_job("noop", catchup_window_s=600, overlap="allow")
    reg = registry.Registry((job,))
    emitted: list[JobRun] = []
    tick = NOW + timedelta(minutes=30)

    def trigger(minute: int, disposition: str) -> JobTrigger:
        at = NOW + timedelta(minutes=minute)
        return JobTrigger(trigger_id=jobs.trigger_id(job.name, at), job=job.name,
                          scheduled_for=at, tick_at=tick, trigger="schedule",
                          disposition=disposition, late=True)  # type: ignore[arg-type]

    decided = [trigger(1, "missed"), trigger(25, "coalesced"), trigger(30, "run")]

    async def go() -> list[dict[str, Any]]:
        dbs = [await run_store(database, max_size=3) for _ in range(2)]
        try:
            runners = [make_runner(reg, db, emitted, seed=i) for i, db in enumerate(dbs)]
            # Two runners, each trigger delivered twice: one row per slot all the same.
            for t in decided + decided:
                await asyncio.gather(*(r.handle(t) for r in runners))
            await asyncio.gather(*(task for r in runners for task in set(r.tasks)))
            return await dbs[0].runs(job.name)
        finally:
            for db in dbs:
                await db.db.close()

    rows = asyncio.run(go())
    assert [(int((r["scheduled_for"] - NOW) / timedelta(minutes=1)), r["status"])
            for r in rows] == [(1, "missed"), (25, "skipped"), (30, "succeeded")]
    by_minute = {int((r["scheduled_for"] - NOW) / timedelta(minutes=1)): r for r in rows}
    assert by_minute[1]["error_message"] == (
        "became due 1740 s late, beyond the catch-up window of 600 s")
    assert by_minute[25]["error_message"] == "coalesced (latest): another slot ran instead"
    assert by_minute[1]["tick_at"] == tick and by_minute[1]["finished_at"] is not None
    assert sorted(r.status for r in emitted) == ["missed", "skipped", "succeeded"]


def test_unexpected_error_in_a_run_is_recorded_failed(database: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An error no adapter translated (a bug) ends the attempt as a failed run, recorded in
    the table and the run log, instead of escaping the background task unseen."""
    from streams.processes import jobrunner

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("not-a-param")

    monkeypatch.setattr(jobrunner.jobs, "run_kind", broken)
    job = make_job("noop", params={"sleep_s": 0}, retries={"max_attempts": 2, "base_delay_s": 0.001,
                                                        "max_delay_s": 0.001})
    reg = registry.Registry((job,))
    emitted: list[JobRun] = []

    async def go() -> tuple[JobRun | None, list[dict[str, Any]]]:
        db = await run_store(database)
        try:
            runner = make_runner(reg, db, emitted)
            task = await runner.dispatch(job, NOW, "schedule", "x", NOW)
            assert task is not None
            return await task, await db.runs(job.name)
        finally:
            await db.db.close()

    run, rows = asyncio.run(go())
    assert run is not None and run.status == "failed" and run.error_class == "KeyError"
    assert run.attempt == 1  # not retriable: a bug does not pass by itself
    assert [(r["status"], r["error_class"]) for r in rows] == [("failed", "KeyError")]
    assert [(r.status, r.error_class) for r in emitted] == [("failed", "KeyError")]


async def _die_running(url: str, job: registry.Job, slot: datetime) -> None:
    """A runner claims ``slot`` running under the job's lock, then its process dies: its
    sessions and their locks go away."""
    dead = await run_store(url)
    lock = await dead.job_lock(job.name, shared=False, wait=False)
    assert await dead.claim(Claim(job.name, slot, job.kind, "schedule", "x", slot, "running",
                                  "dying"), lock)
    dead.db.pool.terminate()


def test_abandoned_slot_outside_its_window_is_failed_not_rerun(database: str) -> None:
    job = make_job("noop")
    reg = registry.Registry((job,))
    emitted: list[JobRun] = []

    async def go() -> list[dict[str, Any]]:
        await _die_running(database, job, NOW)
        db = await run_store(database)
        try:
            other = make_runner(reg, db, emitted, runner_id="other")
            assert await other.sweep() == 1
            assert await other.dispatch(job, NOW, "schedule", "x", NOW) is None
            return await db.runs(job.name)
        finally:
            await db.db.close()

    rows = asyncio.run(go())
    assert [(r["status"], r["error_class"]) for r in rows] == [("failed", "Abandoned")]


def test_abandoned_slot_inside_its_window_is_resumed_once(database: str) -> None:
    """A runner dies mid-run: the next runner records the abandoned attempt and runs the slot
    again as the next attempt (inside the catch-up window), once, whatever else it is told."""
    job = make_job("noop", catchup_window_s=3600)
    reg = registry.Registry((job,))
    emitted: list[JobRun] = []
    slot = datetime.now(UTC).replace(second=0, microsecond=0)

    async def go() -> list[dict[str, Any]]:
        await _die_running(database, job, slot)
        db = await run_store(database)
        try:
            other = make_runner(reg, db, emitted, runner_id="other")
            assert await other.sweep() == 1
            await asyncio.gather(*other.tasks)
            assert await other.sweep() == 0
            assert await other.dispatch(job, slot, "schedule", "x", slot) is None
            return await db.runs(job.name)
        finally:
            await db.db.close()

    rows = asyncio.run(go())
    assert [(r["status"], r["attempt"]) for r in rows] == [("succeeded", 2)]
    assert [(r.status, r.attempt, r.error_class) for r in emitted] == [
        ("failed", 1, "Abandoned"), ("succeeded", 2, None)]


# --- run windows and undo, through the runner ------------------------------------------------


def test_run_window_stops_between_batches_and_the_next_window_resumes(database: str) -> None:
    """Claimed outside its window: partial, untouched. In the window: batches until the
    clock passes the end (partial, progress recorded). The next window finishes it."""
    asyncio.run(seed(database, 50))
    job = make_job(schedule="0 2 * * *", params={"batch_size": 10}, batch_pause_s=1,
               run_window={"start": "01:00", "end": "04:00"})
    reg = registry.Registry((job,))
    slot = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    clock = WallClock(datetime(2026, 3, 2, 0, 30, tzinfo=UTC), timedelta(minutes=40))
    emitted: list[JobRun] = []

    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        db = await run_store(database)
        try:
            runner = Runner(reg, db, clock=clock, rng=random.Random(1), emit=appender(emitted),
                            sleep=clock.sleep)
            assert await runner.dispatch(job, slot, "schedule", "t", slot) is None
            assert await runner.resume_partials() == 0  # 00:30: the window is closed
            waiting = await db.runs(job.name)
            clock.at = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
            assert await runner.resume_partials() == 1
            await asyncio.gather(*runner.tasks)
            stopped = await db.runs(job.name)
            clock.at = datetime(2026, 3, 2, 4, 30, tzinfo=UTC)
            assert await runner.resume_partials() == 0
            clock.at = datetime(2026, 3, 3, 1, 0, tzinfo=UTC)
            assert await runner.resume_partials() == 1
            await asyncio.gather(*runner.tasks)
            return waiting, stopped, await db.runs(job.name)
        finally:
            await db.db.close()

    waiting, stopped, done = asyncio.run(go())
    assert [(r["status"], r["affected"]) for r in waiting] == [("partial", 0)]
    assert "claimed outside its run window 01:00-04:00 UTC" in waiting[0]["error_message"]
    # 02:00, 02:40, 03:20 ran a batch each; at 04:00 the window had closed.
    assert [(r["status"], r["affected"]) for r in stopped] == [("partial", 30)]
    assert stopped[0]["progress"]["rows_done"] == 30
    assert stopped[0]["progress"]["stopped_at"] == "tasks"
    assert stopped[0]["progress"]["rows_left"] == 20
    assert "stopped at the end of its run window" in stopped[0]["error_message"]
    assert [(r["status"], r["affected"], r["attempt"]) for r in done] == [("succeeded", 50, 1)]
    assert done[0]["progress"]["windows"] == 2 and done[0]["before"]["eligible"] == 50
    assert [r.status for r in emitted] == ["partial", "partial", "succeeded"]
    assert emitted[1].progress["rows_done"] == 30
    tasks, archive = asyncio.run(ids(database))
    assert not tasks and len(archive) == 50



def test_undo_moves_an_archive_run_back_once_and_records_itself(database: str) -> None:
    from streams.processes import jobrunner
    from streams.settings import Settings

    asyncio.run(seed(database, 30, completed_recent=2, open_=3))
    job = make_job(params={"batch_size": 7})
    reg = registry.Registry((job,))
    settings = Settings.from_env({"DATABASE_URL": database,
                                  "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})

    async def go() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        db = await run_store(database)
        emitted: list[JobRun] = []
        try:
            runner = make_runner(reg, db, emitted)
            task = await runner.dispatch(job, NOW, "schedule", "t", NOW)
            assert task is not None
            await task
        finally:
            await db.db.close()
        run_id = jobs.run_id(job.name, NOW, 1)
        preview = await jobrunner.undo(settings, reg, run_id, dry_run=True)
        with pytest.raises(Refused, match=r"no archive run"):
            await jobrunner.undo(settings, reg, f"{job.name}@2020-01-01T00:00:00Z", dry_run=True)
        db = await run_store(database)
        try:
            lock = await db.job_lock(job.name, shared=False, wait=True)
            with pytest.raises(Refused, match=r"holds its lock"):
                await jobrunner._undo(settings, job, db, jobs.archive_tag(job.name, NOW),
                                      lambda: datetime.now(UTC))
            await db.release(lock)
            return preview, await db.runs(job.name)
        finally:
            await db.db.close()

    preview, rows = asyncio.run(go())
    assert preview == {"undoes": "archive@2026-03-02T03:00:00Z", "dry_run": True,
                       "would_move": {"rows": 30, "oldest": preview["would_move"]["oldest"],
                                      "newest": preview["would_move"]["newest"]}}
    assert [r["status"] for r in rows] == ["succeeded"]
    _, archive = asyncio.run(ids(database))
    assert len(archive) == 30  # the dry run and the refused undo moved nothing


def test_the_process_loop_resumes_a_partial_run_once_its_window_opens(database: str) -> None:
    from streams.processes import jobrunner

    asyncio.run(seed(database, 12))
    job = make_job(schedule="0 2 * * *", params={"batch_size": 5},
               run_window={"start": "01:00", "end": "04:00"})
    reg = registry.Registry((job,))
    slot = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    clock = WallClock(datetime(2026, 3, 2, 5, 0, tzinfo=UTC), timedelta(0))
    emitted: list[JobRun] = []

    async def go() -> list[dict[str, Any]]:
        db = await run_store(database)
        stop = asyncio.Event()
        loop = None
        try:
            runner = Runner(reg, db, clock=clock, rng=random.Random(1), emit=appender(emitted),
                            sleep=clock.sleep)
            await runner.dispatch(job, slot, "schedule", "t", slot)
            loop = asyncio.create_task(jobrunner._resume_in_windows(runner, stop))
            clock.at = datetime(2026, 3, 3, 1, 0, tzinfo=UTC)

            async def finished() -> bool:
                return [r["status"] for r in await db.runs(job.name)] == ["succeeded"]

            await eventually(finished, 30, "the partial run finished in the next window")
            return await db.runs(job.name)
        finally:
            stop.set()
            if loop is not None:
                await loop
            await db.db.close()

    rows = asyncio.run(go())
    assert [(r["status"], r["affected"]) for r in rows] == [("succeeded", 12)]
    assert [r.status for r in emitted] == ["partial", "succeeded"]
