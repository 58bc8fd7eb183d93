"""Executing a claimed slot of a maintenance job: attempts, retries, the run record.

``Executor`` owns what happens once the runner (``streams.processes.runner``) has claimed a
slot and holds (or waits for) the job's lock: each attempt marks the row running, runs the
job's kind against the store with every batch bounded (``BatchBounded``) and paced, stops
between batches when the clock passes the run window's end (status ``partial``, progress
carried to the next window), retries retriable failures with backoff, and writes the row's
end even if PostgreSQL is briefly away. Every run ends in the run log: one JSON line, a
metric and a scheduler.job-runs record; each record is stored with the row's change that
made it and published from there (``recorded``, ``publish_records``), so no crash loses it.
An archive run is undone by ``undo_run``. IO goes through the ``RunStore`` port and
``emit``; time through ``clock``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from schemas import JobRun
from schemas.wire import WireError, dumps, loads
from streams.errors import (
    DatabaseUnavailable,
    Refused,
    Rejected,
    SchedulerError,
    TransientError,
)
from streams.jobs import decisions as jobs
from streams.jobs.decisions import Outcome
from streams.jobs.model import Job, Overlap
from streams.stores import Claim, RunEnd, RunStore
from streams.telemetry import metrics
from streams.telemetry.logs import fields

log = logging.getLogger("cronorch.jobs")
Clock = Callable[[], datetime]
Emit = Callable[[JobRun], Awaitable[None]]
Lock = Any  # the store's opaque session handle
MAX_MESSAGE = 300
RECORD_BATCH = 100  # stored run-log records published per transaction
T = TypeVar("T")


def _log_run(run: JobRun) -> None:
    doc = run.model_dump(mode="json")
    doc.pop("type")
    metrics.JOB_RUNS.labels(run.job, run.status).inc()
    level = logging.WARNING if run.status in ("failed", "missed") else logging.INFO
    log.log(level, "job run", extra=fields(**doc))


class Executor:
    """Executes claimed slots; IO through ``db`` and ``emit``, time through ``clock``."""

    def __init__(self, db: RunStore[Any], *, clock: Clock, rng: random.Random, emit: Emit,
                 runner_id: str | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.db = db
        self.clock = clock
        self.rng = rng
        self.emit = emit
        self.sleep = sleep
        self.runner_id = runner_id or f"runner-{uuid.uuid4().hex[:12]}"
        self.tasks: set[asyncio.Task[JobRun | None]] = set()

    def _start(self, coro: Any) -> asyncio.Task[JobRun | None]:
        task: asyncio.Task[JobRun | None] = asyncio.create_task(coro)
        self._track(task)
        return task

    async def record(self, run: JobRun) -> None:
        """A record with no row to store it in (PostgreSQL away): one JSON line, a metric
        and a scheduler.job-runs record published at once, best effort."""
        _log_run(run)
        try:
            await self.emit(run)
        except SchedulerError as exc:
            log.warning("job run record not published", extra=fields(
                run_id=run.run_id, error_class=type(exc).__name__))

    async def recorded(self, run: JobRun) -> None:
        """A change of a slot whose record the row stored with it (a retried failure, the
        end, a decision): one JSON line, a metric, then the row's records published
        (``publish_records``)."""
        _log_run(run)
        await self.publish_records(run.job, run.scheduled_for)

    async def publish_records(self, job: str | None = None,
                              scheduled_for: datetime | None = None) -> int:
        """Publish the run-log records stored with their rows (one slot's, or all): each is
        cleared only once the broker acknowledged it, so a record not published now (the
        broker away, this runner killed) stays with its row for the next call of any runner.
        A record the broker refuses for good is logged and dropped, never retried forever."""
        async def publish(payloads: list[bytes]) -> None:
            for payload in payloads:
                try:
                    await self.emit(loads(JobRun, payload))
                except (WireError, Rejected) as exc:
                    log.error("stored job run record dropped", extra=fields(
                        reason=str(exc)[:MAX_MESSAGE], error_class=type(exc).__name__))

        published = 0
        try:
            while count := await self.db.publish_records(
                    publish, limit=RECORD_BATCH, job=job, scheduled_for=scheduled_for):
                published += count
                if job is not None or count < RECORD_BATCH:
                    break
        except SchedulerError as exc:
            log.warning("job run records not published yet: they stay with their rows",
                        extra=fields(error_class=type(exc).__name__,
                                     error_message=str(exc)[:MAX_MESSAGE]))
        return published

    def _window_note(self, job: Job, stopped: bool) -> str:
        assert job.run_window is not None
        following = next(job.windows(self.clock()), None)
        opens = "" if following is None else f" (opens {jobs.z(following[0])})"
        what = "stopped at the end of" if stopped else "claimed outside"
        return (f"{what} its run window {job.run_window.text()} {job.timezone}; "
                f"the next window resumes it{opens}")

    def _proceed(self, job: Job, closes_at: datetime) -> jobs.Proceed:
        """Before each batch: pace (``batch_pause_s``) after the first, then go on only while
        the runner's clock is before the window's end."""
        batches = 0

        async def proceed() -> bool:
            nonlocal batches
            if batches and job.batch_pause_s:
                await self.sleep(job.batch_pause_s)
            batches += 1
            return self.clock() < closes_at

        return proceed

    async def _execute(self, job: Job, scheduled_for: datetime, trigger: str, lock: Lock,
                       *, queued: bool, first_attempt: int = 1,
                       carried: dict[str, Any] | None = None) -> JobRun | None:
        holder: Lock | None = lock
        shared = job.overlap is Overlap.ALLOW
        first_started: datetime | None = None
        attempt = first_attempt - 1
        progress: dict[str, Any] = dict((carried or {}).get("progress") or {})
        try:
            if queued:
                try:
                    await self.db.wait_lock_on(lock, job.name, shared=shared)
                except SchedulerError:
                    await self.db.release(lock)
                    holder = None
            while True:
                attempt += 1
                started = self.clock()
                first_started = first_started or started
                error: Exception | None = None
                outcome = Outcome()
                try:
                    if holder is None:
                        holder = await self.db.job_lock(job.name, shared=shared, wait=True)
                        assert holder is not None
                    if not await self.db.start_attempt(job.name, scheduled_for, attempt, started,
                                                       holder, self.runner_id):
                        log.warning("slot no longer ours: execution stopped", extra=fields(
                            job=job.name, scheduled_for=jobs.z(scheduled_for)))
                        return None
                    window = job.window_containing(started)
                    if window is None:
                        outcome.stopped = True  # a retry's backoff ran past the window's end
                        outcome.progress = {k: v for k, v in progress.items()
                                            if k not in ("rows_done", "batches", "windows")}
                    else:
                        outcome = await asyncio.wait_for(
                            jobs.run_kind(job, BatchBounded(self.db, job.batch_timeout_s),
                                          scheduled_for, attempt, self.sleep,
                                          proceed=self._proceed(job, window[1]),
                                          progress=progress),
                            job.timeout_s)
                except TimeoutError:
                    error = TransientError(f"timed out after {job.timeout_s} s")
                except SchedulerError as exc:
                    error = exc
                except Exception as exc:
                    # A bug or an error no adapter translated: the attempt failed, and
                    # the run must say so instead of staying "running" until a sweep.
                    log.error("job attempt raised an unexpected error", exc_info=exc,
                              extra=fields(job=job.name, scheduled_for=jobs.z(scheduled_for)))
                    error = exc
                finished = self.clock()
                metrics.JOB_RUN_SECONDS.labels(job.name).observe(
                    (finished - started).total_seconds())
                if error is None:
                    metrics.JOB_ROWS.labels(job.name).inc(outcome.affected)
                    if carried is not None or outcome.stopped:
                        _carry(outcome, carried, progress)
                    return await self._finish(job, scheduled_for, trigger, attempt, started,
                                              first_started, finished,
                                              "partial" if outcome.stopped else "succeeded",
                                              outcome)
                decision = jobs.retry_decision(
                    job.retries, attempt, retriable=getattr(error, "retriable", False),
                    rng=self.rng)
                if not decision.retry:
                    return await self._finish(job, scheduled_for, trigger, attempt, started,
                                              first_started, finished, "failed", outcome, error)
                metrics.JOB_RETRIES.labels(job.name).inc()
                await self._retried(job, scheduled_for, self._run(
                    job, scheduled_for, trigger, attempt, started, finished, "failed", outcome,
                    error))
                log.info("job attempt failed: retrying", extra=fields(
                    job=job.name, scheduled_for=jobs.z(scheduled_for), attempt=attempt,
                    delay_s=round(decision.delay_s, 3)))
                # Release the session: if PostgreSQL went away it is dead anyway.
                await self.db.release(holder)
                holder = None
                await self.sleep(decision.delay_s)
        finally:
            await self.db.release(holder)

    async def _retried(self, job: Job, scheduled_for: datetime, run: JobRun) -> None:
        """A failed attempt that will be retried: its record appended to the row (so no
        crash loses it) and published from there; published at once if PostgreSQL, the
        likely cause of the failure, cannot take it now."""
        try:
            staged = await self.db.stage_record(job.name, scheduled_for, self.runner_id,
                                                dumps(run))
        except SchedulerError:
            staged = False
        if staged:
            await self.recorded(run)
        else:
            await self.record(run)

    def _run(self, job: Job, scheduled_for: datetime, trigger: str, attempt: int,
             started: datetime, finished: datetime, status: str, outcome: Outcome,
             error: Exception | None = None) -> JobRun:
        return JobRun(
            run_id=jobs.run_id(job.name, scheduled_for, attempt), job=job.name, kind=job.kind,
            scheduled_for=scheduled_for, trigger=trigger, attempt=attempt,
            started_at=started, finished_at=finished,
            duration_ms=max(0, int((finished - started).total_seconds() * 1000)),
            status=status, processed=outcome.processed, affected=outcome.affected,
            before=outcome.before, after=outcome.after,
            error_class=type(error).__name__ if error else None,
            error_message=str(error)[:MAX_MESSAGE] if error else None,
            progress=outcome.progress)

    async def _finish(self, job: Job, scheduled_for: datetime, trigger: str, attempt: int,
                      started: datetime, first_started: datetime, finished: datetime,
                      status: str, outcome: Outcome,
                      error: Exception | None = None) -> JobRun:
        run = self._run(job, scheduled_for, trigger, attempt, started, finished, status,
                        outcome, error)
        if status == "partial":
            run = run.model_copy(update={"error_message": self._window_note(job, stopped=True)})
        total_ms = max(0, int((finished - first_started).total_seconds() * 1000))
        # The row must end up written even if PostgreSQL is briefly away right now.
        for persist_attempt in range(1, 61):
            try:
                await self.db.finish(job.name, scheduled_for, self.runner_id,
                                     _end(run, first_started, total_ms, outcome.progress))
                break
            except DatabaseUnavailable:
                await self.sleep(jobs.backoff(job.retries).delay_s(persist_attempt, self.rng))
        else:
            await self.record(run)  # no row to store it with: published at once
            return run
        await self.recorded(run)
        return run

    def _track(self, task: asyncio.Task[JobRun | None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self._untrack)

    def _untrack(self, task: asyncio.Task[JobRun | None]) -> None:
        """Retrieve what a finished execution raised outside its attempts (an attempt's
        errors are recorded in the run), so that it is logged, never lost."""
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("job execution ended with an error", exc_info=exc)

    async def drain(self, timeout_s: float) -> None:
        """Let running executions finish (up to ``timeout_s``), then cancel the rest."""
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

def _end(run: JobRun, started_at: datetime, duration_ms: int | None,
         progress: Mapping[str, Any] | None = None) -> RunEnd:
    """The end of the row of ``run``: its status, attempt, counts and error as recorded."""
    assert run.finished_at is not None
    return RunEnd(run.status, run.attempt, started_at, run.finished_at, duration_ms,
                  run.processed, run.affected, run.before, run.after, run.error_class,
                  run.error_message, dict(progress or {}), record=dumps(run))


def _carry(outcome: Outcome, carried: dict[str, Any] | None,
           progress: dict[str, Any]) -> None:
    """Add what earlier windows of the run did to this window's outcome, and count it as one
    more window in the progress (rows done, batches, windows, and where it stopped)."""
    if carried is not None:
        outcome.processed += int(carried.get("processed") or 0)
        outcome.affected += int(carried.get("affected") or 0)
        if carried.get("before"):
            outcome.before = dict(carried["before"])
    outcome.progress = {
        **outcome.progress,
        "rows_done": outcome.affected,
        "batches": int(progress.get("batches") or 0) + outcome.batches,
        "windows": int(progress.get("windows") or 0) + 1,
    }


class BatchBounded:
    """The ``DataStore`` with every batch bounded by the job's ``batch_timeout_s``: a batch
    past it is cancelled (its transaction rolls back) and fails the attempt retriably."""

    def __init__(self, db: jobs.DataStore, batch_timeout_s: float) -> None:
        self.db = db
        self.timeout_s = batch_timeout_s

    async def _bounded(self, call: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(call, self.timeout_s)
        except TimeoutError:
            raise TransientError(f"a batch took longer than batch_timeout_s "
                                 f"{self.timeout_s:g} s") from None

    async def archive_counts(self, cutoff: datetime) -> dict[str, int]:
        return await self.db.archive_counts(cutoff)

    async def archive_batch(self, cutoff: datetime, batch_size: int, archived_at: datetime,
                            tag: str | None = None) -> int:
        return await self._bounded(self.db.archive_batch(cutoff, batch_size, archived_at, tag))

    async def archive_preview(self, cutoff: datetime) -> jobs.Touch:
        return await self.db.archive_preview(cutoff)

    async def purge_counts(self, cutoffs: Mapping[str, datetime]) -> dict[str, int]:
        return await self.db.purge_counts(cutoffs)

    async def purge_batch(self, target: str, cutoff: datetime, batch_size: int) -> int:
        return await self._bounded(self.db.purge_batch(target, cutoff, batch_size))

    async def purge_preview(self, cutoffs: Mapping[str, datetime]) -> dict[str, jobs.Touch]:
        return await self.db.purge_preview(cutoffs)

    async def undo_batch(self, tag: str, batch_size: int, after: str) -> tuple[int, str | None]:
        return await self._bounded(self.db.undo_batch(tag, batch_size, after))

    async def undo_preview(self, tag: str) -> jobs.Touch:
        return await self.db.undo_preview(tag)


async def undo_run(executor: Executor, job: Job, tag: str, lock: Lock) -> JobRun:
    """Move the rows archive run ``tag`` archived back into tasks, in batches (one
    transaction each), on ``lock`` (the job's, held by the caller), recorded as a run of its
    own: trigger ``undo``, ``undoes`` the tag. Idempotent: a second undo moves nothing."""
    db, clock = executor.db, executor.clock
    # To the microsecond: an undo right after a manual run (both "now") gets a row of its own.
    started = clock()
    claim = Claim(job.name, started, job.kind, "undo", f"{jobs.trigger_id(job.name, started)}"
                  "/undo", None, "running", executor.runner_id, undoes=tag)
    if not await db.claim(claim, lock):
        raise Refused(f"a run of {job.name} is recorded at {jobs.z(started)} already: "
                      "try again")
    await db.start_attempt(job.name, started, 1, started, lock, executor.runner_id)
    error: SchedulerError | None = None
    outcome = Outcome()
    try:
        # Paced like a run; an undo has no window, so it never stops for one.
        pace = executor._proceed(job, datetime.max.replace(tzinfo=UTC))
        outcome = await jobs.undo_archive(BatchBounded(db, job.batch_timeout_s), tag,
                                          int(job.params["batch_size"]), proceed=pace)
    except SchedulerError as exc:
        error = exc
    finished = clock()
    status = "failed" if error else "succeeded"
    run = executor._run(job, started, "undo", 1, started, finished, status, outcome, error)
    run = run.model_copy(update={"undoes": tag})
    await db.finish(job.name, started, executor.runner_id, _end(run, started, run.duration_ms))
    await executor.recorded(run)
    return run
