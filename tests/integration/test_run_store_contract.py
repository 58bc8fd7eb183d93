"""The ``RunStore`` contract, one suite run against the in-memory twin and PostgreSQL.

Proves ``streams.testing.stores.MemoryRunStore`` behaves as ``streams.postgres.runs`` where
the job runner can tell: slot claims ON CONFLICT DO NOTHING, the row's life (start, finish,
only by its runner while active), lock exclusivity and waiting, the rows of a runner whose
sessions ended, partial runs, pause state, the CHECK constraints, and an archive run undone
through the runner.
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta
from typing import Any

import pytest

from schemas import JobRun
from schemas.wire import dumps
from streams.errors import BrokerUnavailable, DatabaseError, RecordRejected
from streams.jobs import decisions as jobs
from streams.jobs import registry
from streams.processes.execution import undo_run
from streams.processes.runner import Runner
from streams.stores import Claim, RunEnd
from tests.integration.backends import Backend, BackendFactory, run
from tests.integration.jobdb import NOW, appender
from tests.support import eventually

pytestmark = pytest.mark.postgres
WAIT_S = 10


def _claim(status: str = "running", *, job: str = "archive", at: datetime = NOW,
           runner_id: str = "r1", note: str | None = None) -> Claim:
    return Claim(job, at, "archive_completed", "schedule", f"{job}@x", at, status, runner_id,
                 note)


def _abandoned(row: Any) -> bytes:
    return f"abandoned {row['job']}@{row['attempt']}".encode()


def _into(out: list[bytes]) -> Any:
    async def publish(records: list[bytes]) -> None:
        out.extend(records)
    return publish


class _Holding:
    """A publisher that takes its records and holds them (its transaction open, the rows
    locked) until ``done`` is set; ``held`` is set once it has them."""

    def __init__(self) -> None:
        self.held, self.done = asyncio.Event(), asyncio.Event()
        self.records: list[bytes] = []

    async def publish(self, records: list[bytes]) -> None:
        self.records.extend(records)
        self.held.set()
        await self.done.wait()


async def _still_waiting(task: asyncio.Task[Any]) -> bool:
    """True if ``task`` has not finished within a moment (it is blocked on a lock)."""
    try:
        await asyncio.wait_for(asyncio.shield(task), 0.3)
    except TimeoutError:
        return True
    return False


# --- claims ------------------------------------------------------------------------------------


def test_a_slot_is_claimed_once_ever(backend: BackendFactory) -> None:
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

    run(backend, scenario)


def test_only_the_claiming_runner_starts_and_finishes_while_it_is_active(
        backend: BackendFactory) -> None:
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

    run(backend, scenario)


def test_the_tables_constraints_hold(backend: BackendFactory) -> None:
    async def scenario(b: Backend) -> None:
        store = await b.open()
        with pytest.raises(DatabaseError) as info:
            await store.claim(_claim("exploded"), None)
        assert info.value.sqlstate == "23514"
        assert await store.runs("archive") == []

    run(backend, scenario)


# --- locks -------------------------------------------------------------------------------------


def test_a_job_lock_is_exclusive_or_shared(backend: BackendFactory) -> None:
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

    run(backend, scenario)


def test_a_waiting_lock_is_granted_when_the_holder_lets_go(backend: BackendFactory) -> None:
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

    run(backend, scenario)


# --- runners that went away --------------------------------------------------------------------


def test_the_rows_of_a_runner_whose_sessions_ended_are_swept_once(
        backend: BackendFactory) -> None:
    async def scenario(b: Backend) -> None:
        dying, live = await b.open(), await b.open()
        lock = await dying.job_lock("archive", shared=False, wait=False)
        assert await dying.claim(_claim(runner_id="dying"), lock)
        assert await dying.start_attempt("archive", NOW, 1, NOW, lock, "dying")
        assert await live.claim(_claim("partial", at=NOW + timedelta(hours=1),
                                       runner_id="dying"), None, finished_at=NOW)
        assert await live.sweep_abandoned("live", NOW, _abandoned) == []  # its session lives
        assert await dying.sweep_abandoned("dying", NOW, _abandoned) == []  # never its own
        await b.close(dying)
        swept: list[dict[str, Any]] = []

        async def gone() -> bool:
            swept.extend(await live.sweep_abandoned("live", NOW, _abandoned))
            return bool(swept)

        await eventually(gone, WAIT_S, "the dead runner's row swept")
        assert swept == [{"job": "archive", "scheduled_for": NOW, "kind": "archive_completed",
                          "trigger": "schedule", "attempt": 1}]
        assert await live.sweep_abandoned("live", NOW, _abandoned) == []
        # The sweep stored the slot's record with its row, in the same transaction.
        published: list[bytes] = []
        assert await live.publish_records(_into(published), limit=10) == 1
        assert published == [b"abandoned archive@1"]
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

    run(backend, scenario)


def test_a_record_stored_with_a_rows_end_is_published_once(backend: BackendFactory) -> None:
    """The run log's records travel with the rows: stored by the claim of a decided slot, by
    a retried attempt's failure and by a run's end, handed out oldest end first and in order,
    cleared only once published, never to two publishers at once, and kept when publishing
    fails."""
    async def scenario(b: Backend) -> None:
        one, two = await b.open(), await b.open()
        later = NOW + timedelta(hours=1)
        assert await one.claim(Claim("archive", later, "archive_completed", "schedule", "t",
                                     later, "missed", "r1", "late", record=b"missed"), None,
                               finished_at=later)
        lock = await one.job_lock("archive", shared=False, wait=False)
        assert await one.claim(_claim(), lock)
        assert await one.claim(_claim(at=NOW + timedelta(hours=2)), lock)  # no record yet
        assert await one.start_attempt("archive", NOW, 1, NOW, lock, "r1")
        assert await one.stage_record("archive", NOW, "r1", b"failed#1")
        assert not await one.stage_record("archive", NOW, "other", b"not ours")
        assert await one.start_attempt("archive", NOW, 2, NOW, lock, "r1")
        assert await one.finish("archive", NOW, "r1", RunEnd(
            "succeeded", 2, NOW, NOW + timedelta(seconds=1), 1000, 3, 3, {}, {}, None, None,
            record=b"succeeded"))
        assert not await one.stage_record("archive", NOW, "r1", b"ended")
        await one.release(lock)

        async def broken(records: list[bytes]) -> None:
            raise DatabaseError("the broker is away", "test")

        with pytest.raises(DatabaseError):
            await one.publish_records(broken, limit=10)
        # A publisher holding records keeps the others off them until it is done.
        first = _Holding()
        task = asyncio.create_task(one.publish_records(first.publish, limit=1))
        await first.held.wait()
        second: list[bytes] = []
        assert await two.publish_records(_into(second), limit=10) == 1
        first.done.set()
        assert await task == 2
        # Oldest end first, each row's records in the order they were stored.
        assert (first.records, second) == ([b"failed#1", b"succeeded"], [b"missed"])
        again: list[bytes] = []
        assert await two.publish_records(_into(again), limit=10) == 0
        assert again == []
        # One slot's record only.
        assert await one.claim(Claim("purge", NOW, "purge_expired", "schedule", "p", NOW,
                                     "skipped", "r1", "overlap", record=b"skipped"), None,
                               finished_at=NOW)
        assert await one.publish_records(_into(again), limit=10, job="archive",
                                         scheduled_for=NOW) == 0
        assert await one.publish_records(_into(again), limit=10, job="purge",
                                         scheduled_for=NOW) == 1
        assert again == [b"skipped"]

    run(backend, scenario)


def test_a_record_stored_while_its_row_is_being_published_is_kept(
        backend: BackendFactory) -> None:
    """A runner stores a record on a row whose earlier records another runner is publishing
    right then: the new record survives that publisher's clear and goes out next time."""
    async def scenario(b: Backend) -> tuple[list[bytes], list[bytes]]:
        publisher, runner = await b.open(), await b.open()
        lock = await runner.job_lock("archive", shared=False, wait=False)
        assert await runner.claim(_claim(), lock)
        assert await runner.start_attempt("archive", NOW, 1, NOW, lock, "r1")
        assert await runner.stage_record("archive", NOW, "r1", b"failed#1")
        first = _Holding()
        publishing = asyncio.create_task(publisher.publish_records(first.publish, limit=10))
        await first.held.wait()
        staging = asyncio.create_task(runner.stage_record("archive", NOW, "r1", b"failed#2"))
        await asyncio.sleep(0.2)  # on PostgreSQL it waits for the row lock
        first.done.set()
        assert await publishing == 1
        assert await staging
        later: list[bytes] = []
        assert await publisher.publish_records(_into(later), limit=10) == 1
        await runner.release(lock)
        return first.records, later

    assert run(backend, scenario) == ([b"failed#1"], [b"failed#2"])


def test_a_partial_run_is_resumed_by_one_runner(backend: BackendFactory) -> None:
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

    run(backend, scenario)


# --- pause state -------------------------------------------------------------------------------


def test_pause_defer_and_resume(backend: BackendFactory) -> None:
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

    run(backend, scenario)


# --- an archive run and its undo, through the runner -------------------------------------------


def test_an_archive_run_and_its_undo_through_the_runner(backend: BackendFactory) -> None:
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

    emitted = run(backend, scenario)
    assert [(r.trigger, r.status, r.affected, r.before, r.after) for r in emitted] == [
        ("schedule", "succeeded", 10, {"tasks": 10, "eligible": 10, "tasks_archive": 0},
         {"tasks": 0, "eligible": 0, "tasks_archive": 10}),
        ("undo", "succeeded", 10, {"archived_by_run": 10, "blocked": 0},
         {"archived_by_run": 0, "blocked": 0}),
        ("undo", "succeeded", 0, {"archived_by_run": 0, "blocked": 0},
         {"archived_by_run": 0, "blocked": 0})]


def test_a_runner_that_dies_before_publishing_a_runs_end_loses_no_record(
        backend: BackendFactory) -> None:
    """A runner killed after its run's end is written and before the broker acknowledged the
    record (here: its publishing hangs, and the runner is cancelled and its pool closed): the
    next runner's sweep publishes that record from the row, once. Without the record stored
    with the row's end the run's end never reached scheduler.job-runs."""
    job = registry.parse({"jobs": [{"name": "archive", "kind": "archive_completed",
                                    "schedule": "0 * * * *",
                                    "params": {"batch_size": 4}}]}).jobs[0]

    async def scenario(b: Backend) -> tuple[list[JobRun], list[JobRun]]:
        await b.seed_completed(6)
        dying_store, live_store = await b.open(), await b.open()
        reached = asyncio.Event()
        lost: list[JobRun] = []

        async def hang(run: JobRun) -> None:
            lost.append(run)
            reached.set()
            await asyncio.Event().wait()  # the broker never acknowledges: killed meanwhile

        clock = lambda: NOW + timedelta(seconds=1)  # noqa: E731
        dying = Runner(registry.Registry((job,)), dying_store, clock=clock,
                       rng=random.Random(1), emit=hang, runner_id="dying")
        task = await dying.dispatch(job, NOW, "schedule", "t", NOW)
        assert task is not None
        await reached.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await b.close(dying_store)
        emitted: list[JobRun] = []
        live = Runner(registry.Registry((job,)), live_store, clock=clock,
                      rng=random.Random(2), emit=appender(emitted), runner_id="live")
        assert await live.sweep() == 0  # nothing abandoned: the run had ended
        assert await live.sweep() == 0
        assert await live.publish_records() == 0  # published once
        rows = await live_store.runs(job.name)
        assert [(r["status"], r["affected"]) for r in rows] == [("succeeded", 6)]
        return lost, emitted

    lost, emitted = run(backend, scenario)
    assert [(r.status, r.affected) for r in lost] == [("succeeded", 6)]
    assert emitted == lost


def test_a_stored_record_that_is_garbage_or_refused_is_dropped_not_retried_forever(
        backend: BackendFactory) -> None:
    """A stored record that does not decode, or that the broker refuses for good, is logged
    and cleared: it never blocks the records after it. One the broker cannot take for now
    (it is away) stays, with the whole batch, for the next sweep."""
    job = registry.parse({"jobs": [{"name": "archive", "kind": "archive_completed",
                                    "schedule": "0 * * * *"}]}).jobs[0]
    slots = [NOW + timedelta(hours=h) for h in (1, 2, 3)]
    refused, valid = (_decided(job.name, at) for at in slots[1:])

    async def scenario(b: Backend) -> tuple[list[int], list[JobRun]]:
        store = await b.open()
        emitted: list[JobRun] = []
        away = True

        async def emit(run: JobRun) -> None:
            if run.run_id == refused.run_id:
                raise RecordRejected("too large for the topic")
            if away:
                raise BrokerUnavailable("the broker is away")
            emitted.append(run)

        runner = Runner(registry.Registry((job,)), store, clock=lambda: NOW,
                        rng=random.Random(1), emit=emit)
        for at, record in zip(slots, (b"\xff{not json", dumps(refused), dumps(valid)),
                              strict=True):
            assert await store.claim(Claim(job.name, at, job.kind, "schedule", "t", at,
                                           "missed", "r1", "late", record=record),
                                     None, finished_at=at)
        counts = [await runner.publish_records()]  # the broker is away: all kept
        away = False
        counts += [await runner.publish_records(), await runner.publish_records()]
        return counts, emitted

    counts, emitted = run(backend, scenario)
    assert counts == [0, 3, 0]
    assert emitted == [valid]


def _decided(job: str, at: datetime) -> JobRun:
    return JobRun(run_id=jobs.run_id(job, at, 1), job=job, kind="archive_completed",
                  scheduled_for=at, trigger="schedule", attempt=1, started_at=None,
                  finished_at=None, duration_ms=None, status="missed", error_message="late")
