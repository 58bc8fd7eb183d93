"""The store ports' contract, one suite run against the in-memory twins and PostgreSQL.

Proves ``streams.testing.stores`` behaves as ``streams.postgres`` where the job runner and the
spawn sink can tell: slot claims ON CONFLICT DO NOTHING, lock exclusivity and waiting, rows
of a runner whose sessions ended, partial runs, pause state, the CHECK constraints, spawns
replayed idempotently and stored all or nothing, and an archive run undone through the runner.
The PostgreSQL side needs the real server (the ``database`` fixture fails, never skips).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from schemas import JobRun
from streams.errors import DatabaseError
from streams.jobs import decisions as jobs
from streams.jobs import registry
from streams.postgres.connector import Connector
from streams.postgres.runs import PgRunStore
from streams.postgres.spawns import PgSpawnStore
from streams.processes.execution import undo_run
from streams.processes.runner import Runner
from streams.stores import Claim, RunEnd, RunStore, SpawnedTask, SpawnStore
from streams.testing.stores import MemoryRunStore, MemorySpawnStore
from tests.support import eventually

pytestmark = pytest.mark.postgres
NOW = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
WAIT_S = 10


class Backend:
    """Opens run stores (each on a pool of its own) and a spawn store on one database."""

    kind: str

    async def open(self) -> RunStore[Any]:
        raise NotImplementedError

    async def close(self, store: RunStore[Any]) -> None:
        """Close ``store``'s pool: its sessions end, and the locks they held."""
        raise NotImplementedError

    async def spawns(self) -> SpawnStore:
        raise NotImplementedError

    async def outbox_rows(self) -> int:
        raise NotImplementedError

    async def archive_occurrence(self, series_id: str, occurrence_key: str) -> None:
        raise NotImplementedError

    async def seed_completed(self, count: int) -> None:
        """``count`` tasks completed 40 days and more before NOW."""
        raise NotImplementedError

    async def finish(self) -> None:
        pass


class MemoryBackend(Backend):
    kind = "memory"

    def __init__(self) -> None:
        self.root = MemoryRunStore()
        self.spawn_store = MemorySpawnStore()

    async def open(self) -> RunStore[Any]:
        return self.root.sibling()

    async def close(self, store: RunStore[Any]) -> None:
        assert isinstance(store, MemoryRunStore)
        await store.close()

    async def spawns(self) -> SpawnStore:
        return self.spawn_store

    async def outbox_rows(self) -> int:
        return len(self.spawn_store.outbox)

    async def archive_occurrence(self, series_id: str, occurrence_key: str) -> None:
        self.spawn_store.archived.add((series_id, occurrence_key))

    async def seed_completed(self, count: int) -> None:
        for i in range(1, count + 1):
            self.root.tasks[f"old-{i}"] = {
                "status": "completed", "completed_at": NOW - timedelta(days=40, seconds=i)}


class PostgresBackend(Backend):
    kind = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        self.connectors: list[Connector] = []

    async def _connect(self) -> Connector:
        db = await Connector.connect(self.url, max_size=4)
        self.connectors.append(db)
        return db

    async def open(self) -> RunStore[Any]:
        return PgRunStore(await self._connect())

    async def close(self, store: RunStore[Any]) -> None:
        assert isinstance(store, PgRunStore)
        store.db.pool.terminate()  # as when the process dies

    async def spawns(self) -> SpawnStore:
        return PgSpawnStore(await self._connect())

    async def _sql(self, query: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.url)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    async def outbox_rows(self) -> int:
        return int(await self._sql("SELECT count(*) FROM outbox"))

    async def archive_occurrence(self, series_id: str, occurrence_key: str) -> None:
        await self._sql("INSERT INTO tasks_archive (task_id, user_id, version, title, status, "
                        "completed_at, reminders, series_id, occurrence_key, created_at, "
                        "updated_at, archived_at) VALUES ('archived-1', 'u1', 1, 't', "
                        "'completed', $3, '[]', $1, $2, $3, $3, $3)",
                        series_id, occurrence_key, NOW)

    async def seed_completed(self, count: int) -> None:
        await self._sql("INSERT INTO tasks (task_id, user_id, title, status, completed_at) "
                        "SELECT 'old-' || g, 'u1', 't', 'completed', "
                        "$1::timestamptz - interval '40 days' - g * interval '1 second' "
                        "FROM generate_series(1, $2::int) g", NOW, count)

    async def finish(self) -> None:
        for db in self.connectors:
            await db.close()


@pytest.fixture(params=["memory", "postgres"])
def backend(request: pytest.FixtureRequest) -> Callable[[], Any]:
    url = "" if request.param == "memory" else request.getfixturevalue("database")

    @asynccontextmanager
    async def make() -> AsyncIterator[Backend]:
        chosen: Backend = MemoryBackend() if request.param == "memory" else PostgresBackend(url)
        try:
            yield chosen
        finally:
            await chosen.finish()
    return make


def _run(backend: Callable[[], Any], scenario: Callable[[Backend], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with backend() as chosen:
            return await scenario(chosen)
    return asyncio.run(go())


def _claim(status: str = "running", *, job: str = "archive", at: datetime = NOW,
           runner_id: str = "r1", note: str | None = None) -> Claim:
    return Claim(job, at, "archive_completed", "schedule", f"{job}@x", at, status, runner_id,
                 note)


async def _still_waiting(task: asyncio.Task[Any]) -> bool:
    """True if ``task`` has not finished within a moment (it is blocked on a lock)."""
    try:
        await asyncio.wait_for(asyncio.shield(task), 0.3)
    except TimeoutError:
        return True
    return False


# --- claims ------------------------------------------------------------------------------------


def test_a_slot_is_claimed_once_ever(backend: Callable[[], Any]) -> None:
    async def scenario(b: Backend) -> None:
        one, two = await b.open(), await b.open()
        assert await one.claim(_claim(note="first"), None) is True
        assert await two.claim(_claim(runner_id="r2"), None) is False
        assert await one.claim(_claim("skipped"), None, finished_at=NOW) is False
        later = NOW + timedelta(hours=1)
        assert await two.claim(_claim("skipped", at=later, runner_id="r2"), None,
                               finished_at=later) is True
        rows = await one.runs("archive")
        assert [(r["scheduled_for"], r["status"], r["runner_id"], r["attempt"],
                 r["error_message"], r["finished_at"]) for r in rows] == [
            (NOW, "running", "r1", 0, "first", None), (later, "skipped", "r2", 0, None, later)]
        assert (await one.last_runs())["archive"]["scheduled_for"] == later
        row = await two.run_row("archive", NOW)
        assert row is not None and row["status"] == "running" and row["undoes"] is None
        assert await two.run_row("archive", later + timedelta(hours=1)) is None

    _run(backend, scenario)


def test_only_the_claiming_runner_starts_and_finishes_while_it_is_active(
        backend: Callable[[], Any]) -> None:
    async def scenario(b: Backend) -> None:
        store = await b.open()
        lock = await store.job_lock("archive", shared=False, wait=False)
        assert await store.claim(_claim("queued"), lock)
        assert await store.waiting_exists("archive")
        assert not await store.start_attempt("archive", NOW, 1, NOW, lock, "r2")
        assert await store.start_attempt("archive", NOW, 1, NOW, lock, "r1")
        assert not await store.waiting_exists("archive")
        later = NOW + timedelta(seconds=5)
        # A second attempt keeps the first attempt's started_at.
        assert await store.start_attempt("archive", NOW, 2, later, lock, "r1")
        done = RunEnd("succeeded", 2, later, later, 5000, 3, 2, {"tasks": 3}, {"tasks": 1},
                      None, None, {"rows_done": 2})
        assert not await store.finish("archive", NOW, "r2", done)
        assert await store.finish("archive", NOW, "r1", done)
        assert not await store.finish("archive", NOW, "r1", done)  # no longer active
        (row,) = await store.runs("archive")
        assert {k: row[k] for k in ("status", "attempt", "started_at", "duration_ms",
                                    "processed", "affected", "before", "after", "progress")} == {
            "status": "succeeded", "attempt": 2, "started_at": NOW, "duration_ms": 5000,
            "processed": 3, "affected": 2, "before": {"tasks": 3}, "after": {"tasks": 1},
            "progress": {"rows_done": 2}}
        await store.release(lock)

    _run(backend, scenario)


def test_the_tables_constraints_hold(backend: Callable[[], Any]) -> None:
    async def scenario(b: Backend) -> None:
        store = await b.open()
        with pytest.raises(DatabaseError) as info:
            await store.claim(_claim("exploded"), None)
        assert info.value.sqlstate == "23514"
        assert await store.runs("archive") == []

    _run(backend, scenario)


# --- locks -------------------------------------------------------------------------------------


def test_a_job_lock_is_exclusive_or_shared(backend: Callable[[], Any]) -> None:
    async def scenario(b: Backend) -> None:
        one, two = await b.open(), await b.open()
        held = await one.job_lock("archive", shared=False, wait=False)
        assert held is not None
        assert await two.job_lock("archive", shared=False, wait=False) is None
        assert await two.job_lock("archive", shared=True, wait=False) is None
        other_job = await two.job_lock("purge", shared=False, wait=False)
        assert other_job is not None
        await one.release(held)
        shared = [await s.job_lock("archive", shared=True, wait=False) for s in (one, two)]
        assert None not in shared
        assert await two.job_lock("archive", shared=False, wait=False) is None
        for store, lock in zip((one, two), shared, strict=True):
            await store.release(lock)
        again = await two.job_lock("archive", shared=False, wait=False)
        assert again is not None
        await two.release(again)
        await two.release(other_job)
        await two.release(None)

    _run(backend, scenario)


def test_a_waiting_lock_is_granted_when_the_holder_lets_go(backend: Callable[[], Any]) -> None:
    async def scenario(b: Backend) -> None:
        one, two = await b.open(), await b.open()
        held = await one.job_lock("archive", shared=False, wait=False)
        assert held is not None
        waiter = await two.waiting_connection()
        queued = asyncio.create_task(two.wait_lock_on(waiter, "archive", shared=False))
        blocked = asyncio.create_task(two.job_lock("archive", shared=False, wait=True))
        assert await _still_waiting(queued) and await _still_waiting(blocked)
        await one.release(held)
        # One of the two gets it; the other follows once that one lets go.
        done, _ = await asyncio.wait({queued, blocked}, timeout=WAIT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1
        first_lock = waiter if queued in done else blocked.result()
        await two.release(first_lock)
        await asyncio.wait_for(asyncio.gather(queued, blocked), WAIT_S)
        assert await one.job_lock("archive", shared=True, wait=False) is None
        await two.release(waiter if first_lock is not waiter else blocked.result())

    _run(backend, scenario)


# --- runners that went away --------------------------------------------------------------------


def test_the_rows_of_a_runner_whose_sessions_ended_are_swept_once(
        backend: Callable[[], Any]) -> None:
    async def scenario(b: Backend) -> None:
        dying, live = await b.open(), await b.open()
        lock = await dying.job_lock("archive", shared=False, wait=False)
        assert await dying.claim(_claim(runner_id="dying"), lock)
        assert await dying.start_attempt("archive", NOW, 1, NOW, lock, "dying")
        assert await live.claim(_claim("partial", at=NOW + timedelta(hours=1),
                                       runner_id="dying"), None, finished_at=NOW)
        assert await live.sweep_abandoned("live", NOW) == []  # its session is alive
        assert await dying.sweep_abandoned("dying", NOW) == []  # never one's own rows
        await b.close(dying)
        swept: list[dict[str, Any]] = []

        async def gone() -> bool:
            swept.extend(await live.sweep_abandoned("live", NOW))
            return bool(swept)

        await eventually(gone, WAIT_S, "the dead runner's row swept")
        assert swept == [{"job": "archive", "scheduled_for": NOW, "kind": "archive_completed",
                          "trigger": "schedule", "attempt": 1}]
        assert await live.sweep_abandoned("live", NOW) == []
        row = (await live.runs("archive"))[0]
        assert (row["status"], row["error_class"], row["finished_at"]) == (
            "failed", "Abandoned", NOW)
        # The lock went with the session.
        taken = await live.job_lock("archive", shared=False, wait=False)
        assert taken is not None
        assert await live.reclaim_abandoned("archive", NOW, "live", taken) == 1
        assert await live.reclaim_abandoned("archive", NOW, "other", taken) is None
        row = (await live.runs("archive"))[0]
        assert (row["status"], row["runner_id"], row["error_class"], row["finished_at"]) == (
            "running", "live", None, None)
        assert await live.start_attempt("archive", NOW, 2, NOW, taken, "live")
        await live.release(taken)

    _run(backend, scenario)


def test_a_partial_run_is_resumed_by_one_runner(backend: Callable[[], Any]) -> None:
    async def scenario(b: Backend) -> None:
        store = await b.open()
        later = NOW + timedelta(hours=1)
        for at in (later, NOW):
            assert await store.claim(_claim("partial", at=at, note="outside"), None,
                                     finished_at=NOW)
        assert [(r["scheduled_for"], r["attempt"]) for r in await store.partial_runs()] == [
            (NOW, 0), (later, 0)]
        lock = await store.job_lock("archive", shared=False, wait=False)
        assert lock is not None
        carried = await store.reclaim_partial("archive", NOW, "r2", lock)
        assert carried == {"attempt": 0, "processed": 0, "affected": 0, "before": {},
                           "progress": {}}
        assert await store.reclaim_partial("archive", NOW, "r3", lock) is None
        assert [r["scheduled_for"] for r in await store.partial_runs()] == [later]
        assert await store.start_attempt("archive", NOW, 1, NOW, lock, "r2")
        await store.release(lock)

    _run(backend, scenario)


# --- pause state -------------------------------------------------------------------------------


def test_pause_defer_and_resume(backend: Callable[[], Any]) -> None:
    async def scenario(b: Backend) -> None:
        store = await b.open()
        assert await store.job_state("archive") == (False, None, None)
        await store.defer("archive", NOW)  # not paused: nothing to remember
        await store.pause("archive", "maintenance")
        for at in (NOW + timedelta(hours=2), NOW, NOW + timedelta(hours=1)):
            await store.defer("archive", at)
        assert await store.job_state("archive") == (True, "maintenance", NOW)
        await store.clear_resume_from("archive")  # still paused: kept
        states = await store.job_states()
        assert list(states) == ["archive"]
        assert {k: states["archive"][k] for k in ("paused", "reason", "resume_from")} == {
            "paused": True, "reason": "maintenance", "resume_from": NOW}
        assert await store.resume("archive", from_now=False) == NOW
        assert await store.job_state("archive") == (False, None, NOW)
        await store.clear_resume_from("archive")
        assert await store.job_state("archive") == (False, None, None)
        await store.pause("archive", "again")
        await store.defer("archive", NOW)
        assert await store.resume("archive", from_now=True) is None
        assert await store.job_state("archive") == (False, None, None)

    _run(backend, scenario)


# --- an archive run and its undo, through the runner -------------------------------------------


def test_an_archive_run_and_its_undo_through_the_runner(backend: Callable[[], Any]) -> None:
    job = registry.parse({"jobs": [{"name": "archive", "kind": "archive_completed",
                                    "schedule": "0 * * * *",
                                    "params": {"batch_size": 4}}]}).jobs[0]

    async def scenario(b: Backend) -> list[JobRun]:
        await b.seed_completed(10)
        store = await b.open()
        emitted: list[JobRun] = []

        async def emit(run: JobRun) -> None:
            emitted.append(run)

        clock = iter(NOW + timedelta(seconds=s) for s in range(100))
        runner = Runner(registry.Registry((job,)), store, clock=lambda: next(clock),
                        rng=random.Random(1), emit=emit)
        task = await runner.dispatch(job, NOW, "schedule", "t", NOW)
        assert task is not None
        await task
        assert await runner.dispatch(job, NOW, "schedule", "t", NOW) is None  # once ever
        tag = jobs.archive_tag(job.name, NOW)
        for _ in range(2):
            lock = await store.job_lock(job.name, shared=False, wait=False)
            assert lock is not None
            try:
                await undo_run(runner, job, tag, lock)
            finally:
                await store.release(lock)
        assert (await store.undo_preview(tag)).rows == 0
        rows = await store.runs(job.name)
        assert [(r["trigger"], r["status"], r["affected"], r["undoes"]) for r in rows] == [
            ("schedule", "succeeded", 10, None), ("undo", "succeeded", 10, tag),
            ("undo", "succeeded", 0, tag)]
        return emitted

    emitted = _run(backend, scenario)
    assert [(r.trigger, r.status, r.affected, r.before, r.after) for r in emitted] == [
        ("schedule", "succeeded", 10, {"tasks": 10, "eligible": 10, "tasks_archive": 0},
         {"tasks": 0, "eligible": 0, "tasks_archive": 10}),
        ("undo", "succeeded", 10, {"archived_by_run": 10, "blocked": 0},
         {"archived_by_run": 0, "blocked": 0}),
        ("undo", "succeeded", 0, {"archived_by_run": 0, "blocked": 0},
         {"archived_by_run": 0, "blocked": 0})]


# --- spawns ------------------------------------------------------------------------------------


def _spawned(n: int, *, task_id: str | None = None, series_id: str = "series") -> SpawnedTask:
    day = date(2026, 3, n)
    return SpawnedTask(task_id=task_id or f"task-{series_id}-{n}", user_id="u1",
                       title=f"t{n}", due_at=None, due_date=day, reminders_json="[]",
                       series_id=series_id, occurrence_key=day.isoformat(), created_at=NOW,
                       event_json='{"type": "task.upserted"}')


def test_a_replayed_spawn_batch_changes_nothing(backend: Callable[[], Any]) -> None:
    async def scenario(b: Backend) -> None:
        store = await b.spawns()
        batch = [_spawned(1), _spawned(2), _spawned(1)]
        assert await store.insert_spawned(batch) == [True, True, False]
        assert await store.insert_spawned(batch) == [False, False, False]
        assert await b.outbox_rows() == 2
        # Another id for an occurrence already spawned is a duplicate too.
        assert await store.insert_spawned([_spawned(2, task_id="other")]) == [False]
        assert await b.outbox_rows() == 2

    _run(backend, scenario)


def test_an_archived_occurrence_counts_as_present(backend: Callable[[], Any]) -> None:
    async def scenario(b: Backend) -> None:
        await b.archive_occurrence("series", _spawned(3).occurrence_key)
        store = await b.spawns()
        assert await store.insert_spawned([_spawned(3), _spawned(4)]) == [False, True]
        assert await b.outbox_rows() == 1

    _run(backend, scenario)


def test_a_rejected_spawn_batch_stores_nothing(backend: Callable[[], Any]) -> None:
    async def scenario(b: Backend) -> None:
        store = await b.spawns()
        assert await store.insert_spawned([_spawned(1)]) == [True]
        clash = _spawned(2, task_id=_spawned(1).task_id)  # same id, another occurrence
        with pytest.raises(DatabaseError) as info:
            await store.insert_spawned([_spawned(5), clash])
        assert info.value.sqlstate == "23505"
        assert await b.outbox_rows() == 1
        assert await store.insert_spawned([_spawned(5)]) == [True]  # it was rolled back

    _run(backend, scenario)
