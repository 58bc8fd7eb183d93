"""The PostgreSQL adapter against a real server: migrations, error translation, archiving
100k tasks through the runner, and a 30 s outage in the middle of an archive."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import asyncpg
import pytest

from schemas import JobRun
from streams.cli import devstack
from streams.errors import DatabaseError, DatabaseUnavailable
from streams.jobs import decisions as jobs
from streams.jobs import registry
from streams.postgres.connector import Connector, migrations, translate
from tests.integration.jobdb import (
    NOW,
    ids,
    make_job,
    make_runner,
    run_store,
    seed,
)
from tests.support import eventually

pytestmark = pytest.mark.postgres


def test_migrate_twice_is_a_no_op(database: str) -> None:
    async def go() -> tuple[list[str], list[str], int]:
        db = await Connector.connect(database)
        try:
            again = await db.migrate()
            concurrently = await asyncio.gather(db.migrate(), db.migrate())
            count = int(await db.pool.fetchval("SELECT count(*) FROM schema_migrations"))
            return again, [n for names in concurrently for n in names], count
        finally:
            await db.close()

    again, concurrently, count = asyncio.run(go())
    assert again == [] and concurrently == []
    assert count == len(migrations())


def test_errors_are_translated() -> None:
    assert isinstance(translate(ConnectionRefusedError("refused")), DatabaseUnavailable)
    serialization = asyncpg.exceptions.SerializationError("could not serialize")
    assert translate(serialization).retriable
    assert isinstance(translate(asyncpg.exceptions.DeadlockDetectedError("deadlock")),
                      DatabaseUnavailable)
    unique = translate(asyncpg.exceptions.UniqueViolationError("dup"))
    assert isinstance(unique, DatabaseError) and not unique.retriable


def test_unreachable_database_is_retriable() -> None:
    async def go() -> None:
        await Connector.connect("postgresql://cronorch@127.0.0.1:1/none", timeout_s=2)

    with pytest.raises(DatabaseUnavailable):
        asyncio.run(go())


# --- archive at volume ------------------------------------------------------------------------


def test_archive_100k_completed_tasks(database: str) -> None:
    asyncio.run(seed(database, 100_000, completed_recent=2_000, open_=3_000))
    before_tasks, _ = asyncio.run(ids(database))
    job = make_job(params={"batch_size": 2000}, timeout_s=600)
    reg = registry.Registry((job,))
    emitted: list[JobRun] = []

    async def go() -> tuple[JobRun | None, float, JobRun | None]:
        db = await run_store(database)
        try:
            runner = make_runner(reg, db, emitted)
            started = time.monotonic()
            task = await runner.dispatch(job, NOW, "schedule", jobs.trigger_id(job.name, NOW),
                                         NOW)
            assert task is not None
            run = await task
            elapsed = time.monotonic() - started
            # Re-run on a later slot: nothing left to move.
            later = NOW + timedelta(hours=1)
            task2 = await runner.dispatch(job, later, "schedule",
                                          jobs.trigger_id(job.name, later), later)
            assert task2 is not None
            return run, elapsed, await task2
        finally:
            await db.db.close()

    run, elapsed, rerun = asyncio.run(go())
    assert run is not None and run.status == "succeeded"
    assert run.affected == 100_000
    assert run.before == {"tasks": 105_000, "eligible": 100_000, "tasks_archive": 0}
    assert run.after == {"tasks": 5_000, "eligible": 0, "tasks_archive": 100_000}
    tasks, archive = asyncio.run(ids(database))
    assert tasks.isdisjoint(archive) and tasks | archive == before_tasks
    assert archive == {f"old-{i}" for i in range(1, 100_001)}
    assert rerun is not None and rerun.status == "succeeded" and rerun.affected == 0
    assert asyncio.run(ids(database)) == (tasks, archive)
    print(f"\narchived 100000 rows in {elapsed:.2f} s = {100_000 / elapsed:,.0f} rows/s")


# --- PostgreSQL stopped for 30 s in the middle of archiving -----------------------------------


def test_postgres_stopped_30s_mid_archive(database: str, pg_stack: devstack.Stack) -> None:
    total = 100_000
    asyncio.run(seed(database, total, open_=500))
    before_tasks, _ = asyncio.run(ids(database))
    job = make_job(params={"batch_size": 100}, timeout_s=900,
               retries={"max_attempts": 20, "base_delay_s": 1, "max_delay_s": 8})
    reg = registry.Registry((job,))
    emitted: list[JobRun] = []
    marks: dict[str, float] = {}

    async def go() -> JobRun | None:
        db = await run_store(database)
        try:
            runner = make_runner(reg, db, emitted, seed=3)
            task = await runner.dispatch(job, NOW, "schedule", jobs.trigger_id(job.name, NOW),
                                         NOW)
            assert task is not None
            probe = await asyncpg.connect(database)

            async def some_batches_done() -> bool:
                return bool(await probe.fetchval("SELECT count(*) FROM tasks_archive") >= 5_000)

            await eventually(some_batches_done, 30, "the first batches archived")
            await probe.close()
            marks["stop"] = time.monotonic()
            await asyncio.to_thread(devstack.stop_postgres, pg_stack)
            assert not task.done(), "the archive finished before PostgreSQL stopped"
            await asyncio.sleep(30)
            await asyncio.to_thread(devstack.start_postgres, pg_stack)
            marks["start"] = time.monotonic()
            run = await asyncio.wait_for(task, 300)
            marks["done"] = time.monotonic()
            return run
        finally:
            await db.db.close()

    try:
        run = asyncio.run(go())
    finally:
        devstack.start_postgres(pg_stack)
    assert run is not None and run.status == "succeeded" and run.attempt > 1
    failed = [r for r in emitted if r.status == "failed"]
    assert failed and all(r.error_class == "DatabaseUnavailable" for r in failed)
    assert len(failed) == run.attempt - 1
    # Backoff: the failed attempts are spread over the outage, not a hot loop.
    assert len(failed) < 20
    tasks, archive = asyncio.run(ids(database))
    assert len(archive) == total and tasks.isdisjoint(archive)
    assert tasks | archive == before_tasks  # nothing lost, nothing doubled: no partial batch
    assert run.after == {"tasks": 500, "eligible": 0, "tasks_archive": total}
    print(f"\noutage handled: {run.attempt} attempts, finished "
          f"{marks['done'] - marks['start']:.1f} s after PostgreSQL came back")
