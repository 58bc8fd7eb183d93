"""The PostgreSQL adapter and the runner against a real server: migrations, the DataStore
contract (twin and real), archiving 100k tasks, once-per-slot claims, and a 30 s outage."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from schemas import JobRun, JobTrigger
from streams.cli import devstack
from streams.errors import DatabaseError, DatabaseUnavailable, Refused
from streams.jobs import decisions as jobs
from streams.jobs import registry
from streams.postgres.connector import Connector, migrations, translate
from streams.postgres.runs import PgRunStore
from streams.processes.jobrunner import Runner
from streams.stores import Claim
from streams.testing.stores import MemoryDataStore
from tests.support import eventually

pytestmark = pytest.mark.postgres
NOW = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)


def _job(kind: str = "archive_completed", **overrides: Any) -> registry.Job:
    raw = {"name": "archive", "kind": kind,
           "schedule": "0 * * * *" if kind != "noop" else "* * * * *", **overrides}
    return registry.parse({"jobs": [raw]}).jobs[0]


async def _seed(url: str, completed_old: int, completed_recent: int = 0, open_: int = 0) -> None:
    """Set-based fixture data: old completed, recently completed and open tasks."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("""
            INSERT INTO tasks (task_id, user_id, title, status, completed_at, due_at)
            SELECT 'old-' || g, 'u' || (g % 997), 'title ' || g, 'completed',
                   $1::timestamptz - (g % 300 + 31) * interval '1 day' - g * interval '1 second',
                   NULL
              FROM generate_series(1, $2::int) g""", NOW, completed_old)
        await conn.execute("""
            INSERT INTO tasks (task_id, user_id, title, status, completed_at)
            SELECT 'recent-' || g, 'u' || g, 't', 'completed', $1::timestamptz - interval '2 days'
              FROM generate_series(1, $2::int) g""", NOW, completed_recent)
        await conn.execute("""
            INSERT INTO tasks (task_id, user_id, title, status)
            SELECT 'open-' || g, 'u' || g, 't', 'open' FROM generate_series(1, $1::int) g""",
                           open_)
    finally:
        await conn.close()


async def _ids(url: str) -> tuple[set[str], set[str]]:
    conn = await asyncpg.connect(url)
    try:
        tasks = {r[0] for r in await conn.fetch("SELECT task_id FROM tasks")}
        archive = {r[0] for r in await conn.fetch("SELECT task_id FROM tasks_archive")}
        dupes = await conn.fetchval(
            "SELECT count(*) FROM (SELECT task_id FROM tasks_archive GROUP BY task_id "
            "HAVING count(*) > 1) d")
        assert dupes == 0
        return tasks, archive
    finally:
        await conn.close()


async def _store(url: str, **pool: Any) -> PgRunStore:
    """The job runner's store on a pool of its own (close with ``store.db.close()``)."""
    return PgRunStore(await Connector.connect(url, **pool))


def _runner(reg: registry.Registry, db: PgRunStore, emitted: list[JobRun], *,
            seed: int = 1, runner_id: str | None = None) -> Runner:
    async def emit(run: JobRun) -> None:
        emitted.append(run)

    return Runner(reg, db, clock=lambda: datetime.now(UTC), rng=random.Random(seed), emit=emit,
                  runner_id=runner_id)


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


# --- the DataStore contract, run against the twin and the real database ----------------------


@pytest.fixture(params=["memory", "postgres"])
def store_factory(request: pytest.FixtureRequest) -> Callable[[], Any]:
    if request.param == "memory":
        @asynccontextmanager
        async def memory() -> AsyncIterator[jobs.DataStore]:
            store = MemoryDataStore()
            for i in range(1, 51):
                store.tasks[f"old-{i}"] = {"status": "completed",
                                           "completed_at": NOW - timedelta(days=31 + i)}
            store.tasks["recent-1"] = {"status": "completed",
                                       "completed_at": NOW - timedelta(days=2)}
            store.tasks["open-1"] = {"status": "open", "completed_at": None}
            yield store
        return memory
    url = request.getfixturevalue("database")

    @asynccontextmanager
    async def real() -> AsyncIterator[jobs.DataStore]:
        await _seed(url, 50, 1, 1)
        db = await _store(url)
        try:
            yield db
        finally:
            await db.db.close()
    return real


def test_datastore_contract_archive(store_factory: Callable[[], Any]) -> None:
    async def go() -> tuple[jobs.Outcome, jobs.Outcome]:
        async with store_factory() as store:
            first = await jobs.archive_completed(store, NOW, 30, 20)
            second = await jobs.archive_completed(store, NOW, 30, 20)
            return first, second

    first, second = asyncio.run(go())
    assert (first.affected, first.batches) == (50, 3)
    assert first.before == {"tasks": 52, "eligible": 50, "tasks_archive": 0}
    assert first.after == {"tasks": 2, "eligible": 0, "tasks_archive": 50}
    assert second.affected == 0 and second.after == first.after


@pytest.mark.parametrize("kind", ["memory", "postgres"])
def test_datastore_contract_purge_outbox(kind: str, request: pytest.FixtureRequest) -> None:
    """Published outbox rows past retention go; younger and unpublished ones stay."""
    cutoffs = {t: NOW - timedelta(days=d) for t, d in
               {"tasks_archive": 365, "job_runs": 90, "dead_letters": 30, "outbox": 7}.items()}

    url = "" if kind == "memory" else request.getfixturevalue("database")

    async def go() -> jobs.Outcome:
        if kind == "memory":
            store = MemoryDataStore()
            store.outbox = {"1": NOW - timedelta(days=8), "2": NOW - timedelta(days=1)}
            return await jobs.purge_expired(store, cutoffs, 10)
        conn = await asyncpg.connect(url)
        try:
            await conn.executemany(
                "INSERT INTO outbox (user_id, event_type, payload, published_at) "
                "VALUES ('u', 'task.upserted', '{}', $1)",
                [(NOW - timedelta(days=8),), (NOW - timedelta(days=1),), (None,)])
        finally:
            await conn.close()
        db = await _store(url)
        try:
            return await jobs.purge_expired(db, cutoffs, 10)
        finally:
            await db.db.close()

    outcome = asyncio.run(go())
    assert outcome.affected == 1
    assert (outcome.before["outbox_expired"], outcome.after["outbox_expired"]) == (1, 0)
    assert outcome.before["outbox"] - outcome.after["outbox"] == 1


def _stop_after(batches: int) -> jobs.Proceed:
    """A window that closes after ``batches`` batches."""
    asked = 0

    async def proceed() -> bool:
        nonlocal asked
        asked += 1
        return asked <= batches

    return proceed


def test_datastore_contract_archive_stops_between_batches_and_resumes(
        store_factory: Callable[[], Any]) -> None:
    async def go() -> tuple[jobs.Outcome, jobs.Outcome, jobs.Touch]:
        async with store_factory() as store:
            first = await jobs.archive_completed(store, NOW, 30, 20, tag="a@1",
                                                 proceed=_stop_after(1))
            rest = await jobs.archive_completed(store, NOW, 30, 20, tag="a@1")
            return first, rest, await store.undo_preview("a@1")

    first, rest, tagged = asyncio.run(go())
    assert first.stopped and (first.affected, first.batches) == (20, 1)
    oldest_left = NOW - timedelta(days=31 + 30)  # the 30 youngest of old-1..50 are left
    assert first.progress["stopped_at"] == "tasks" and first.progress["rows_left"] == 30
    assert first.progress["next_completed_at"] is not None
    assert datetime.fromisoformat(str(first.progress["next_completed_at"])) <= oldest_left + \
        timedelta(days=1)
    assert not rest.stopped and rest.affected == 30
    assert tagged.rows == 50 and tagged.blocked == 0


def test_datastore_contract_previews_touch_nothing(store_factory: Callable[[], Any]) -> None:
    cutoffs = {t: NOW - timedelta(days=d) for t, d in
               {"tasks_archive": 365, "job_runs": 90, "dead_letters": 30, "outbox": 7}.items()}

    async def go() -> tuple[jobs.Touch, jobs.Touch, dict[str, jobs.Touch], dict[str, int]]:
        async with store_factory() as store:
            archive = await store.archive_preview(NOW - timedelta(days=30))
            none = await store.archive_preview(NOW - timedelta(days=3650))
            purge = await store.purge_preview(cutoffs)
            return archive, none, purge, await store.archive_counts(NOW - timedelta(days=30))

    archive, none, purge, counts = asyncio.run(go())
    assert archive.rows == 50
    assert archive.newest is not None and archive.newest <= NOW - timedelta(days=32)
    assert archive.oldest is not None and archive.oldest <= NOW - timedelta(days=81)
    assert none == jobs.Touch(0, None, None)
    assert {t: p.rows for t, p in purge.items()} == dict.fromkeys(cutoffs, 0)
    assert counts["eligible"] == 50  # nothing moved


def test_datastore_contract_undo_moves_back_once(store_factory: Callable[[], Any]) -> None:
    async def go() -> tuple[jobs.Outcome, jobs.Outcome, jobs.Outcome, dict[str, int]]:
        async with store_factory() as store:
            await jobs.archive_completed(store, NOW, 30, 20, tag="a@1")
            await jobs.archive_completed(store, NOW + timedelta(days=60), 30, 20, tag="a@2")
            first = await jobs.undo_archive(store, "a@1", 15)
            second = await jobs.undo_archive(store, "a@1", 15)
            other = await jobs.undo_archive(store, "a@404", 15)
            return first, second, other, await store.archive_counts(NOW)

    first, second, other, counts = asyncio.run(go())
    # a@1 archived the 50 old tasks; a@2 (60 days later) the recent one.
    assert first.before == {"archived_by_run": 50, "blocked": 0}
    assert (first.affected, first.batches) == (50, 4)
    assert first.after == {"archived_by_run": 0, "blocked": 0}
    assert second.affected == 0 and other.affected == 0
    assert counts["tasks_archive"] == 1 and counts["tasks"] == 51


def test_datastore_contract_purge_stops_and_skips_finished_targets(
        store_factory: Callable[[], Any]) -> None:
    cutoffs = {t: NOW + timedelta(days=1) for t in jobs.PURGE_TARGETS}

    async def go() -> tuple[jobs.Outcome, jobs.Outcome]:
        async with store_factory() as store:
            await jobs.archive_completed(store, NOW, 30, 100, tag="a@1")
            first = await jobs.purge_expired(store, cutoffs, 20, proceed=_stop_after(2))
            rest = await jobs.purge_expired(
                store, cutoffs, 20, done=list(first.progress.get("done_targets", [])))
            return first, rest

    first, rest = asyncio.run(go())
    assert first.stopped and first.affected == 40
    assert first.progress == {"stopped_at": "tasks_archive", "done_targets": []}
    assert not rest.stopped and rest.after["tasks_archive"] == 0


# --- archive at volume ------------------------------------------------------------------------


def test_archive_100k_completed_tasks(database: str) -> None:
    asyncio.run(_seed(database, 100_000, completed_recent=2_000, open_=3_000))
    before_tasks, _ = asyncio.run(_ids(database))
    job = _job(params={"batch_size": 2000}, timeout_s=600)
    reg = registry.Registry((job,))
    emitted: list[JobRun] = []

    async def go() -> tuple[JobRun | None, float, JobRun | None]:
        db = await _store(database)
        try:
            runner = _runner(reg, db, emitted)
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
    tasks, archive = asyncio.run(_ids(database))
    assert tasks.isdisjoint(archive) and tasks | archive == before_tasks
    assert archive == {f"old-{i}" for i in range(1, 100_001)}
    assert rerun is not None and rerun.status == "succeeded" and rerun.affected == 0
    assert asyncio.run(_ids(database)) == (tasks, archive)
    print(f"\narchived 100000 rows in {elapsed:.2f} s = {100_000 / elapsed:,.0f} rows/s")


# --- once per slot ---------------------------------------------------------------------------


def test_concurrent_claims_of_one_slot_run_it_once(database: str) -> None:
    job = _job("noop", params={"sleep_s": 0.2}, overlap="allow")
    reg = registry.Registry((job,))
    emitted: list[JobRun] = []

    async def go() -> list[dict[str, Any]]:
        dbs = [await _store(database, max_size=3) for _ in range(8)]
        try:
            runners = [_runner(reg, db, emitted, seed=i) for i, db in enumerate(dbs)]
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
    job = _job("noop", catchup_window_s=600, overlap="allow")
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
        dbs = [await _store(database, max_size=3) for _ in range(2)]
        try:
            runners = [_runner(reg, db, emitted, seed=i) for i, db in enumerate(dbs)]
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
    job = _job("noop", params={"sleep_s": 0}, retries={"max_attempts": 2, "base_delay_s": 0.001,
                                                        "max_delay_s": 0.001})
    reg = registry.Registry((job,))
    emitted: list[JobRun] = []

    async def go() -> tuple[JobRun | None, list[dict[str, Any]]]:
        db = await _store(database)
        try:
            runner = _runner(reg, db, emitted)
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


def test_abandoned_slot_outside_its_window_is_failed_not_rerun(database: str) -> None:
    job = _job("noop")
    reg = registry.Registry((job,))
    emitted: list[JobRun] = []

    async def go() -> list[dict[str, Any]]:
        dead = await _store(database)
        dying = _runner(reg, dead, emitted, runner_id="dying")
        lock = await dead.job_lock(job.name, shared=False, wait=False)
        assert await dead.claim(Claim(job.name, NOW, job.kind, "schedule", "x", NOW, "running",
                                      dying.runner_id), lock)
        dead.db.pool.terminate()  # the process dies: its sessions and their locks go away
        db = await _store(database)
        try:
            other = _runner(reg, db, emitted, runner_id="other")
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
    job = _job("noop", catchup_window_s=3600)
    reg = registry.Registry((job,))
    emitted: list[JobRun] = []
    slot = datetime.now(UTC).replace(second=0, microsecond=0)

    async def go() -> list[dict[str, Any]]:
        dead = await _store(database)
        dying = _runner(reg, dead, emitted, runner_id="dying")
        lock = await dead.job_lock(job.name, shared=False, wait=False)
        assert await dead.claim(Claim(job.name, slot, job.kind, "schedule", "x", slot,
                                      "running", dying.runner_id), lock)
        dead.db.pool.terminate()
        db = await _store(database)
        try:
            other = _runner(reg, db, emitted, runner_id="other")
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


# --- PostgreSQL stopped for 30 s in the middle of archiving -----------------------------------


def test_postgres_stopped_30s_mid_archive(database: str, pg_stack: devstack.Stack) -> None:
    total = 100_000
    asyncio.run(_seed(database, total, open_=500))
    before_tasks, _ = asyncio.run(_ids(database))
    job = _job(params={"batch_size": 100}, timeout_s=900,
               retries={"max_attempts": 20, "base_delay_s": 1, "max_delay_s": 8})
    reg = registry.Registry((job,))
    emitted: list[JobRun] = []
    marks: dict[str, float] = {}

    async def go() -> JobRun | None:
        db = await _store(database)
        try:
            runner = _runner(reg, db, emitted, seed=3)
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
    tasks, archive = asyncio.run(_ids(database))
    assert len(archive) == total and tasks.isdisjoint(archive)
    assert tasks | archive == before_tasks  # nothing lost, nothing doubled: no partial batch
    assert run.after == {"tasks": 500, "eligible": 0, "tasks_archive": total}
    print(f"\noutage handled: {run.attempt} attempts, finished "
          f"{marks['done'] - marks['start']:.1f} s after PostgreSQL came back")


# --- run windows and undo, through the runner ------------------------------------------------


class _WallClock:
    """The runner's clock, moved by the test and by the pacing between batches."""

    def __init__(self, at: datetime, pause_moves: timedelta) -> None:
        self.at = at
        self.pause_moves = pause_moves

    def __call__(self) -> datetime:
        return self.at

    async def sleep(self, _: float) -> None:
        self.at += self.pause_moves


def test_run_window_stops_between_batches_and_the_next_window_resumes(database: str) -> None:
    """Claimed outside its window: partial, untouched. In the window: batches until the
    clock passes the end (partial, progress recorded). The next window finishes it."""
    asyncio.run(_seed(database, 50))
    job = _job(schedule="0 2 * * *", params={"batch_size": 10}, batch_pause_s=1,
               run_window={"start": "01:00", "end": "04:00"})
    reg = registry.Registry((job,))
    slot = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    clock = _WallClock(datetime(2026, 3, 2, 0, 30, tzinfo=UTC), timedelta(minutes=40))
    emitted: list[JobRun] = []

    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        db = await _store(database)
        try:
            runner = Runner(reg, db, clock=clock, rng=random.Random(1), emit=_append(emitted),
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
    tasks, archive = asyncio.run(_ids(database))
    assert not tasks and len(archive) == 50


def _append(into: list[JobRun]) -> Any:
    async def emit(run: JobRun) -> None:
        into.append(run)
    return emit


def test_undo_moves_an_archive_run_back_once_and_records_itself(database: str) -> None:
    from streams.processes import jobrunner
    from streams.settings import Settings

    asyncio.run(_seed(database, 30, completed_recent=2, open_=3))
    job = _job(params={"batch_size": 7})
    reg = registry.Registry((job,))
    settings = Settings.from_env({"DATABASE_URL": database,
                                  "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})

    async def go() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        db = await _store(database)
        emitted: list[JobRun] = []
        try:
            runner = _runner(reg, db, emitted)
            task = await runner.dispatch(job, NOW, "schedule", "t", NOW)
            assert task is not None
            await task
        finally:
            await db.db.close()
        run_id = jobs.run_id(job.name, NOW, 1)
        preview = await jobrunner.undo(settings, reg, run_id, dry_run=True)
        with pytest.raises(Refused, match=r"no archive run"):
            await jobrunner.undo(settings, reg, f"{job.name}@2020-01-01T00:00:00Z", dry_run=True)
        db = await _store(database)
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
    _, archive = asyncio.run(_ids(database))
    assert len(archive) == 30  # the dry run and the refused undo moved nothing


def test_the_process_loop_resumes_a_partial_run_once_its_window_opens(database: str) -> None:
    from streams.processes import jobrunner

    asyncio.run(_seed(database, 12))
    job = _job(schedule="0 2 * * *", params={"batch_size": 5},
               run_window={"start": "01:00", "end": "04:00"})
    reg = registry.Registry((job,))
    slot = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    clock = _WallClock(datetime(2026, 3, 2, 5, 0, tzinfo=UTC), timedelta(0))
    emitted: list[JobRun] = []

    async def go() -> list[dict[str, Any]]:
        db = await _store(database)
        stop = asyncio.Event()
        loop = None
        try:
            runner = Runner(reg, db, clock=clock, rng=random.Random(1), emit=_append(emitted),
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
