"""The job-runner process: the trigger agent and the runner, apart from the worker.

    scheduler.ticks ──trigger agent (exactly-once, engine.Processor)──► scheduler.job-triggers
                                    └──► scheduler.job-trigger-changelog (the last tick decided)
    scheduler.job-triggers ──runner (group <app>-jobrunner)──► PostgreSQL job_runs + the job
                                    └──► scheduler.job-runs + one JSON log line per record

The trigger agent turns ticks into slots with ``jobs.slots_due`` (time comes from ticks only),
one tick at a time against the tick before it, so every slot is decided at the first tick at
or after it whatever the consumer's batches: a replay of the tick log gives the same
triggers. Coalesced and missed slots are triggers too; the runner records them as rows.

The runner claims every slot with one INSERT … ON CONFLICT DO NOTHING on
UNIQUE(job, scheduled_for) before it commits the trigger's offset, so a slot has one row
whatever the number of runners and duplicated triggers. Executions hold the job's advisory
lock on a session of their own and store that session's identity in the row; a claimed row
whose session is gone belongs to a dead runner: that attempt is failed as ``Abandoned`` and
the slot resumed as the next attempt while inside its catch-up window. Only
``started_at``/``finished_at``/durations and run windows come from the clock passed in at
the edge: a job with a ``run_window`` starts only while the runner's clock is inside it,
stops between batches when the clock passes its end (status ``partial``, progress in the
row), and is resumed by ``resume_partials`` once the clock is inside the next window (runs
execute in wall time, not tick time).

Maintenance never slows user-facing work: the process has its own small pool
(``JOB_DB_POOL_SIZE``), each batch is bounded by the job's ``batch_timeout_s`` and batches
are paced by its ``batch_pause_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka.errors import CommitFailedError, IllegalStateError

from schemas import JobRun, JobTrigger, Tick
from schemas.wire import WireError, dumps, loads
from streams import codec, retry
from streams.errors import (
    DatabaseUnavailable,
    InvalidEvent,
    Refused,
    SchedulerError,
    TransientError,
)
from streams.jobs import decisions as jobs
from streams.jobs.decisions import Disposition, Outcome, OverlapAction
from streams.jobs.model import Job, Overlap, Registry
from streams.kafka import client as kafka
from streams.kafka.client import Output, Record
from streams.kafka.engine import Processor, dead_letter, decode_all
from streams.postgres.database import Claim, Database, JobLock
from streams.processes import lifecycle
from streams.settings import Settings
from streams.telemetry import metrics
from streams.telemetry.logs import fields

log = logging.getLogger("cronorch.jobs")
Clock = Callable[[], datetime]
Emit = Callable[[JobRun], Awaitable[None]]
MAX_MESSAGE = 300
TRIGGER_BACKOFF = retry.Backoff(base_s=0.5, cap_s=30.0)
WINDOW_POLL_S = 5.0  # how often the process looks for partial runs whose window opened


def _z(at: datetime | None) -> str | None:
    return None if at is None else jobs.z(at)


# --- the trigger agent ---------------------------------------------------------------------


WATERMARK = b"w"  # the trigger agent's changelog key: the last tick it decided


class TriggerAgent:
    """scheduler.ticks → one JobTrigger per decided slot (key: job name).

    Each tick is decided on its own, against the tick before it, whatever the batch it came
    in: the previous tick is committed to its changelog in the same transaction as the
    triggers and the offset, so a restart or a rebalance resumes from exactly that tick.
    """

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.changelog_topic: str | None = settings.topics.job_trigger_changelog
        self.watermarks: dict[int, datetime] = {}
        # Derived from the watermark, never persisted: the first slot of each job after it,
        # so a tick that makes nothing due costs a comparison instead of a cron walk.
        self.next_slots: dict[tuple[int, str], datetime | None] = {}

    def assign(self, partition: int, changelog: Iterable[Record]) -> None:
        self.revoke(partition)
        for record in changelog:
            if record.key != WATERMARK or record.value is None:
                continue
            try:
                item = codec.decode_timeline(record.value)
            except InvalidEvent as exc:
                log.warning("trigger agent changelog record ignored", extra=fields(
                    offset=record.offset, reason=exc.reason))
                continue
            if isinstance(item, Tick):
                self.watermarks[partition] = item.tick_at

    def revoke(self, partition: int) -> None:
        self.watermarks.pop(partition, None)
        for key in [k for k in self.next_slots if k[0] == partition]:
            del self.next_slots[key]

    def process(self, partition: int, records: list[Record]) -> list[Output]:
        decoded, outputs = decode_all(self.settings, "trigger", records, codec.decode_timeline)
        before = watermark = self.watermarks.get(partition)
        grid = timedelta(seconds=self.settings.tick_interval_s)
        for record, item in decoded:
            if not isinstance(item, Tick):
                outputs.append(dead_letter(self.settings, record,
                                           f"expected a tick, got '{item.type}'"))
                continue
            refusal = codec.tick_refusal(item, record.timestamp_ms,
                                         self.settings.tick_max_ahead_s)
            if refusal is not None:  # one wrong clock reading decides no slot (as timeline)
                log.warning("live tick refused", extra=fields(offset=record.offset))
                metrics.TICKS_REFUSED.inc()
                outputs.append(dead_letter(self.settings, record, refusal))
                continue
            # The very first tick has no predecessor in the log: one grid step before it.
            previous = watermark or item.tick_at - grid
            if item.tick_at <= previous:
                continue  # a duplicate or older tick decides nothing (as in the timeline)
            outputs += self._decide(partition, previous, item.tick_at)
            watermark = item.tick_at
        if watermark is not None and watermark != before:
            self.watermarks[partition] = watermark
            outputs.append(Output(self.settings.topics.job_trigger_changelog, WATERMARK,
                                  codec.encode_tick(watermark), partition))
        return outputs

    def _decide(self, partition: int, previous: datetime, tick_at: datetime) -> list[Output]:
        outputs: list[Output] = []
        for job in self.registry.jobs:
            key = (partition, job.name)
            if key not in self.next_slots:
                self.next_slots[key] = next(job.fires(previous), None)
            upcoming = self.next_slots[key]
            if upcoming is None or upcoming > tick_at:
                continue
            due = jobs.slots_due(job, previous, tick_at, self.settings.tick_interval_s)
            self.next_slots[key] = due.following
            outputs += triggers(self.settings, job, due, tick_at)
        return outputs


def triggers(settings: Settings, job: Job, due: jobs.DueSlots,
             tick_at: datetime) -> list[Output]:
    """One JobTrigger for every slot of ``job`` that tick ``tick_at`` decided; coalesced and
    missed slots are sent too, for the runner to record."""
    outputs: list[Output] = []
    for slot in due.slots:
        metrics.JOB_TRIGGERS.labels(job.name, slot.disposition.value).inc()
        trigger = JobTrigger(trigger_id=jobs.trigger_id(job.name, slot.scheduled_for),
                             job=job.name, scheduled_for=slot.scheduled_for, tick_at=tick_at,
                             trigger="schedule", disposition=slot.disposition.value,
                             late=slot.late)
        outputs.append(Output(settings.topics.job_triggers, job.name.encode(), dumps(trigger)))
    if due.uncounted_missed:
        log.warning("job slots missed beyond the enumeration bound", extra=fields(
            job=job.name, missed=due.uncounted_missed, tick_at=_z(tick_at)))
    return outputs


def _decision_run(job: Job, scheduled_for: datetime, disposition: Disposition,
                  late_s: float, trigger: str = "schedule") -> JobRun:
    if disposition is Disposition.MISSED:
        status, message = "missed", (f"became due {late_s:.0f} s late, beyond the catch-up "
                                     f"window of {job.catchup_window_s} s")
    else:
        status, message = "skipped", f"coalesced ({job.coalesce.value}): another slot ran instead"
    return JobRun(run_id=jobs.run_id(job.name, scheduled_for, 1), job=job.name, kind=job.kind,
                  scheduled_for=scheduled_for, trigger=trigger, attempt=1,
                  started_at=None, finished_at=None, duration_ms=None, status=status,
                  error_message=message)


def _log_run(run: JobRun) -> None:
    doc = run.model_dump(mode="json")
    doc.pop("type")
    metrics.JOB_RUNS.labels(run.job, run.status).inc()
    level = logging.WARNING if run.status in ("failed", "missed") else logging.INFO
    log.log(level, "job run", extra=fields(**doc))


# --- the runner ------------------------------------------------------------------------------


class Runner:
    """Claims slots and executes them; IO through ``db`` and ``emit``, time through ``clock``."""

    def __init__(self, registry: Registry, db: Database, *, clock: Clock, rng: random.Random,
                 emit: Emit, runner_id: str | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.registry = registry
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

    def _job(self, name: str) -> Job | None:
        for job in self.registry.jobs:
            if job.name == name:
                return job
        return None

    async def record(self, run: JobRun) -> None:
        """The run log: one JSON line, a metric and a scheduler.job-runs record."""
        _log_run(run)
        try:
            await self.emit(run)
        except SchedulerError as exc:
            log.warning("job run record not published", extra=fields(
                run_id=run.run_id, error_class=type(exc).__name__))

    async def sweep(self) -> int:
        """Fail the claimed slots of runners that went away, then resume those still inside
        their catch-up window with their attempts left (both kinds are idempotent, batch by
        batch); returns how many slots were abandoned."""
        rows = await self.db.sweep_abandoned(self.runner_id, self.clock())
        for row in rows:
            attempt = max(1, row["attempt"])
            await self.record(JobRun(
                run_id=jobs.run_id(row["job"], row["scheduled_for"], attempt),
                job=row["job"], kind=row["kind"], scheduled_for=row["scheduled_for"],
                trigger=row["trigger"], attempt=attempt, started_at=None,
                finished_at=None, duration_ms=None, status="failed", error_class="Abandoned",
                error_message="the runner that claimed this slot went away before finishing it"))
            await self._resume(row["job"], row["scheduled_for"], row["trigger"], attempt)
        return len(rows)

    async def _resume(self, name: str, scheduled_for: datetime, trigger: str,
                      attempt: int) -> None:
        job = self._job(name)
        if job is None or job.paused or attempt >= job.retries.max_attempts:
            return
        late_s = (self.clock() - scheduled_for).total_seconds()
        # A windowed run resumes whatever its age (it may have spanned several windows);
        # outside its window the next attempt becomes partial and waits for the next one.
        if job.run_window is None and late_s > job.catchup_window_s:
            return
        lock = await self.db.job_lock(job.name, shared=job.overlap is Overlap.ALLOW, wait=False)
        if lock is None:
            return  # a run of this job is in progress: the slot stays failed
        reached = await self.db.reclaim_abandoned(job.name, scheduled_for, self.runner_id, lock)
        if reached is None:
            await self.db.release(lock)
            return
        resumed = max(1, reached) + 1  # the abandoned attempt counts, as its record says
        log.info("abandoned slot resumed", extra=fields(
            job=job.name, scheduled_for=_z(scheduled_for), attempt=resumed))
        self._start(self._execute(job, scheduled_for, trigger, lock, queued=False,
                                  first_attempt=resumed))

    async def resume_partials(self) -> int:
        """Resume the partial runs whose job's window is open on the runner's clock (each
        under its job's lock, so one at a time per job); returns how many started."""
        started = 0
        for row in await self.db.partial_runs():
            job = self._job(row["job"])
            if job is None or job.paused or job.window_containing(self.clock()) is None:
                continue
            paused, _, _ = await self.db.job_state(job.name)
            if paused:
                continue
            lock = await self.db.job_lock(job.name, shared=job.overlap is Overlap.ALLOW,
                                          wait=False)
            if lock is None:
                continue  # a run of this job holds the lock: try again at the next poll
            carried = await self.db.reclaim_partial(job.name, row["scheduled_for"],
                                                    self.runner_id, lock)
            if carried is None:
                await self.db.release(lock)
                continue
            log.info("partial run resumed in its window", extra=fields(
                job=job.name, scheduled_for=_z(row["scheduled_for"]),
                rows_done=carried["affected"]))
            self._start(self._execute(job, row["scheduled_for"], row["trigger"], lock,
                                      queued=False, first_attempt=max(1, carried["attempt"]),
                                      carried=carried))
            started += 1
        return started

    async def handle(self, trigger: JobTrigger) -> None:
        """One trigger from scheduler.job-triggers: defer, catch up or dispatch its slot."""
        job = self._job(trigger.job)
        if job is None:
            log.warning("trigger for a job not in the registry ignored",
                        extra=fields(job=trigger.job, trigger_id=trigger.trigger_id))
            return
        paused, _, resume_from = await self.db.job_state(job.name)
        if paused or job.paused:
            await self.db.defer(job.name, trigger.scheduled_for)
            log.info("job paused: slot deferred", extra=fields(
                job=job.name, scheduled_for=_z(trigger.scheduled_for)))
            return
        if resume_from is not None and resume_from <= trigger.scheduled_for:
            await self._catch_up(job, resume_from, trigger.tick_at)
            return
        if trigger.disposition != "run":
            late_s = (trigger.tick_at - trigger.scheduled_for).total_seconds()
            await self._record_decision(job, trigger.scheduled_for, Disposition(
                trigger.disposition), late_s, trigger.tick_at)
            return
        await self.dispatch(job, trigger.scheduled_for, trigger.trigger, trigger.trigger_id,
                            trigger.tick_at)

    async def _catch_up(self, job: Job, resume_from: datetime, tick_at: datetime) -> None:
        """After a resume: the slots deferred while paused, under the job's window/coalesce."""
        due = jobs.slots_due(job, resume_from - timedelta(microseconds=1), tick_at)
        for slot in due.slots:
            if slot.disposition is Disposition.RUN:
                await self.dispatch(job, slot.scheduled_for, "schedule",
                                    jobs.trigger_id(job.name, slot.scheduled_for), tick_at)
                continue
            await self._record_decision(job, slot.scheduled_for, slot.disposition,
                                        slot.late_s, tick_at)
        await self.db.clear_resume_from(job.name)

    async def _record_decision(self, job: Job, scheduled_for: datetime,
                               disposition: Disposition, late_s: float,
                               tick_at: datetime) -> None:
        """A coalesced or missed slot: its row (status and reason), claimed like a run, so
        the table alone says what became of every slot."""
        run = _decision_run(job, scheduled_for, disposition, late_s)
        claim = Claim(job.name, scheduled_for, job.kind, "schedule",
                      jobs.trigger_id(job.name, scheduled_for), tick_at, run.status,
                      self.runner_id, run.error_message)
        if await self.db.claim(claim, None, finished_at=self.clock()):
            await self.record(run)
            return
        metrics.JOB_DUPLICATES.labels(job.name).inc()
        log.info("slot claimed before: trigger ignored", extra=fields(
            job=job.name, scheduled_for=_z(scheduled_for), trigger="schedule"))

    async def dispatch(self, job: Job, scheduled_for: datetime, trigger: str, trigger_id: str,
                       tick_at: datetime | None, *,
                       resume_first: bool = True) -> asyncio.Task[JobRun | None] | None:
        """Claim the slot and start it (or record it skipped); None if it was claimed before.
        Outside the job's run window the slot is claimed ``partial`` and started by
        ``resume_partials`` when the window opens."""
        await self.sweep()
        if job.run_window is not None:
            if job.window_containing(self.clock()) is None:
                await self._claim_for_window(job, scheduled_for, trigger, trigger_id, tick_at)
                return None
            # An earlier run stopped at a window's end goes first: it takes the lock, and
            # this slot then follows the job's overlap policy. (Not in `jobs run`: that
            # process exits after its own run; the job runner resumes partial runs.)
            if resume_first:
                await self.resume_partials()
        shared = job.overlap is Overlap.ALLOW
        lock = await self.db.job_lock(job.name, shared=shared, wait=False)
        running = lock is None
        waiting = (running and job.overlap is Overlap.BUFFER_ONE
                   and await self.db.waiting_exists(job.name))
        action = jobs.overlap_action(job.overlap, running=running, waiting=waiting)
        holder: JobLock | None = lock
        note = None
        if action is OverlapAction.WAIT:
            holder = await self.db.waiting_connection()
        elif action is OverlapAction.SKIP:
            note = f"overlap ({job.overlap.value}): the previous run was still running"
        status = {OverlapAction.RUN: "running", OverlapAction.WAIT: "queued",
                  OverlapAction.SKIP: "skipped"}[action]
        claim = Claim(job.name, scheduled_for, job.kind, trigger, trigger_id, tick_at, status,
                      self.runner_id, note)
        try:
            claimed = await self.db.claim(
                claim, holder, finished_at=self.clock() if action is OverlapAction.SKIP else None)
        except BaseException:
            await self.db.release(holder)
            raise
        if not claimed:
            await self.db.release(holder)
            metrics.JOB_DUPLICATES.labels(job.name).inc()
            log.info("slot claimed before: trigger ignored", extra=fields(
                job=job.name, scheduled_for=_z(scheduled_for), trigger=trigger))
            return None
        if action is OverlapAction.SKIP:
            await self.record(JobRun(
                run_id=jobs.run_id(job.name, scheduled_for, 1), job=job.name, kind=job.kind,
                scheduled_for=scheduled_for, trigger=trigger, attempt=1,
                started_at=None, finished_at=None, duration_ms=None, status="skipped",
                error_message=note))
            return None
        assert holder is not None
        return self._start(self._execute(
            job, scheduled_for, trigger, holder, queued=action is OverlapAction.WAIT))

    def _window_note(self, job: Job, stopped: bool) -> str:
        assert job.run_window is not None
        following = next(job.windows(self.clock()), None)
        opens = "" if following is None else f" (opens {jobs.z(following[0])})"
        what = "stopped at the end of" if stopped else "claimed outside"
        return (f"{what} its run window {job.run_window.text()} {job.timezone}; "
                f"the next window resumes it{opens}")

    async def _claim_for_window(self, job: Job, scheduled_for: datetime, trigger: str,
                                trigger_id: str, tick_at: datetime | None) -> None:
        note = self._window_note(job, stopped=False)
        claim = Claim(job.name, scheduled_for, job.kind, trigger, trigger_id, tick_at,
                      "partial", self.runner_id, note)
        if not await self.db.claim(claim, None, finished_at=self.clock()):
            metrics.JOB_DUPLICATES.labels(job.name).inc()
            log.info("slot claimed before: trigger ignored", extra=fields(
                job=job.name, scheduled_for=_z(scheduled_for), trigger=trigger))
            return None
        await self.record(JobRun(
            run_id=jobs.run_id(job.name, scheduled_for, 1), job=job.name, kind=job.kind,
            scheduled_for=scheduled_for, trigger=trigger, attempt=1, started_at=None,
            finished_at=None, duration_ms=None, status="partial", error_message=note,
            progress={"rows_done": 0, "windows": 0}))
        return None

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

    async def _execute(self, job: Job, scheduled_for: datetime, trigger: str, lock: JobLock,
                       *, queued: bool, first_attempt: int = 1,
                       carried: dict[str, Any] | None = None) -> JobRun | None:
        holder: JobLock | None = lock
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
                            job=job.name, scheduled_for=_z(scheduled_for)))
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
                              extra=fields(job=job.name, scheduled_for=_z(scheduled_for)))
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
                await self.record(self._run(job, scheduled_for, trigger, attempt, started,
                                            finished, "failed", outcome, error))
                log.info("job attempt failed: retrying", extra=fields(
                    job=job.name, scheduled_for=_z(scheduled_for), attempt=attempt,
                    delay_s=round(decision.delay_s, 3)))
                # Release the session: if PostgreSQL went away it is dead anyway.
                await self.db.release(holder)
                holder = None
                await self.sleep(decision.delay_s)
        finally:
            await self.db.release(holder)

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
                await self.db.finish(
                    job.name, scheduled_for, self.runner_id, status=status, attempt=attempt,
                    started_at=first_started, finished_at=finished, duration_ms=total_ms,
                    processed=outcome.processed, affected=outcome.affected,
                    before=outcome.before, after=outcome.after,
                    error_class=run.error_class, error_message=run.error_message,
                    progress=outcome.progress)
                break
            except DatabaseUnavailable:
                await self.sleep(jobs.backoff(job.retries).delay_s(persist_attempt, self.rng))
        await self.record(run)
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

    def __init__(self, db: Database, batch_timeout_s: float) -> None:
        self.db = db
        self.timeout_s = batch_timeout_s

    async def _bounded(self, call: Awaitable[int]) -> int:
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

    async def undo_batch(self, tag: str, batch_size: int) -> int:
        return await self._bounded(self.db.undo_batch(tag, batch_size))

    async def undo_preview(self, tag: str) -> jobs.Touch:
        return await self.db.undo_preview(tag)


# --- the process -------------------------------------------------------------------------------


async def _emitter(settings: Settings) -> tuple[Any, Emit]:
    producer = kafka.producer(settings, None)
    await kafka.start(producer)

    async def emit(run: JobRun) -> None:
        async with kafka.translated():
            await producer.send_and_wait(settings.topics.job_runs, key=run.job.encode(),
                                         value=dumps(run))

    return producer, emit


async def _open_db(settings: Settings) -> Database:
    """The job runner's own small pool (``JOB_DB_POOL_SIZE``), apart from the worker's."""
    return await Database.open(settings, min_size=1, max_size=settings.job_db_pool_size)


async def dry_run(settings: Settings, registry: Registry, name: str, *,
                  clock: Clock = lambda: datetime.now(UTC)) -> dict[str, Any]:
    """``cronorch jobs run NAME --dry-run``: what a run now would touch (per table: rows,
    oldest and newest), reading only; no claim, no lock, no record."""
    job = registry.get(name)
    at = clock().replace(microsecond=0)
    db = await _open_db(settings)
    try:
        touch = await jobs.preview(job, db, at)
    finally:
        await db.close()
    window = job.window_containing(at)
    following = next(job.windows(at), None)
    return {
        "job": job.name, "kind": job.kind, "dry_run": True, "scheduled_for": jobs.z(at),
        "would_touch": {table: t.as_dict() for table, t in touch.items()},
        "undoable": job.kind == "archive_completed",
        "run_window": None if job.run_window is None else {
            "window": job.run_window.text(), "timezone": job.timezone,
            "open_now": window is not None,
            "next_opens_at": None if following is None else jobs.z(following[0])},
    }


async def undo(settings: Settings, registry: Registry, run_id: str, *, dry_run: bool = False,
               clock: Clock = lambda: datetime.now(UTC)) -> dict[str, Any]:
    """``cronorch jobs undo RUN_ID [--dry-run]``: move the rows an archive run archived back
    into tasks, in batches (one transaction each), under the job's lock, recorded as a run
    of its own (trigger ``undo``, ``undoes`` RUN_ID). Idempotent: a second undo moves nothing."""
    try:
        name, scheduled_for = jobs.parse_run_id(run_id)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    job = registry.get(name)
    if job.kind != "archive_completed":
        raise Refused(f"{job.name} is a {job.kind} job: only archive runs can be undone "
                          "(a purge deletes rows for good)")
    tag = jobs.archive_tag(name, scheduled_for)
    db = await _open_db(settings)
    try:
        row = await db.run_row(name, scheduled_for)
        if row is None or row["trigger"] == "undo":
            raise Refused(f"no archive run {tag} in job_runs")
        if row["status"] in ("queued", "running", "partial"):
            raise Refused(f"run {tag} is {row['status']}: undo it once it has finished "
                              "(pause the job to keep the next window from resuming it)")
        if dry_run:
            touch = await db.undo_preview(tag)
            return {"undoes": tag, "dry_run": True, "would_move": touch.as_dict()}
        return await _undo(settings, job, db, tag, clock)
    finally:
        await db.close()


async def _undo(settings: Settings, job: Job, db: Database, tag: str,
                clock: Clock) -> dict[str, Any]:
    lock = await db.job_lock(job.name, shared=False, wait=False)
    if lock is None:
        raise Refused(f"a run of {job.name} holds its lock: try again when it has finished")
    producer, emit = await _emitter(settings)
    runner = Runner(Registry((job,)), db, clock=clock, rng=random.Random(), emit=emit)
    try:
        # To the microsecond: an undo right after a manual run (both "now") gets a row of its own.
        started = clock()
        claim = Claim(job.name, started, job.kind, "undo", f"{jobs.trigger_id(job.name, started)}"
                      "/undo", None, "running", runner.runner_id, undoes=tag)
        if not await db.claim(claim, lock):
            raise Refused(f"a run of {job.name} is recorded at {jobs.z(started)} already: "
                          "try again")
        await db.start_attempt(job.name, started, 1, started, lock, runner.runner_id)
        error: SchedulerError | None = None
        outcome = Outcome()
        try:
            # Paced like a run; an undo has no window, so it never stops for one.
            pace = runner._proceed(job, datetime.max.replace(tzinfo=UTC))
            outcome = await jobs.undo_archive(BatchBounded(db, job.batch_timeout_s), tag,
                                              int(job.params["batch_size"]), proceed=pace)
        except SchedulerError as exc:
            error = exc
        finished = clock()
        status = "failed" if error else "succeeded"
        run = runner._run(job, started, "undo", 1, started, finished, status, outcome, error)
        run = run.model_copy(update={"undoes": tag})
        await db.finish(job.name, started, runner.runner_id, status=status, attempt=1,
                        started_at=started, finished_at=finished, duration_ms=run.duration_ms,
                        processed=outcome.processed, affected=outcome.affected,
                        before=outcome.before, after=outcome.after,
                        error_class=run.error_class, error_message=run.error_message)
        await runner.record(run)
        return run.model_dump(mode="json")
    finally:
        await db.release(lock)
        await producer.stop()


async def run_manual(settings: Settings, registry: Registry, name: str, *,
                     clock: Clock = lambda: datetime.now(UTC)) -> JobRun | None:
    """``cronorch jobs run NAME``: run the job now, in this process, recorded as manual."""
    job = registry.get(name)
    db = await _open_db(settings)
    producer, emit = await _emitter(settings)
    try:
        runner = Runner(registry, db, clock=clock, rng=random.Random(), emit=emit)
        at = clock().replace(microsecond=0)
        task = await runner.dispatch(job, at, "manual", jobs.trigger_id(name, at, "manual"),
                                     None, resume_first=False)
        if task is None:
            rows = [r for r in await db.runs(name) if r["scheduled_for"] == at]
            log.info("manual run not started", extra=fields(
                job=name, status=rows[0]["status"] if rows else "claimed before"))
            if rows and rows[0]["status"] == "partial":
                # Outside its run window: claimed, to be started by the job runner.
                return JobRun(run_id=jobs.run_id(name, at, 1), job=name, kind=job.kind,
                              scheduled_for=at, trigger="manual", attempt=1, started_at=None,
                              finished_at=None, duration_ms=None, status="partial",
                              error_message=rows[0]["error_message"],
                              progress=rows[0]["progress"])
            return None
        return await task
    finally:
        await producer.stop()
        await db.close()


async def run(settings: Settings, registry: Registry, *, stop: asyncio.Event | None = None,
              clock: Clock = lambda: datetime.now(UTC)) -> None:
    """``cronorch job-runner``: the trigger agent and the runner until SIGTERM/SIGINT."""
    stop = await lifecycle.start(settings, stop)
    db = await _open_db(settings)
    producer, emit = await _emitter(settings)
    runner = Runner(registry, db, clock=clock, rng=random.Random(), emit=emit)
    try:
        await db.wait_for_schema()
        await runner.sweep()
        log.info("job runner started", extra=fields(runner_id=runner.runner_id,
                                                    jobs=registry.names()))
        agent = Processor(settings, "jobtrigger", settings.topics.ticks,
                          TriggerAgent(settings, registry))
        tasks = {agent.name: asyncio.create_task(agent.run(stop)),
                 "trigger consumer": asyncio.create_task(
                     _consume_triggers(settings, runner, stop)),
                 "window resumer": asyncio.create_task(_resume_in_windows(runner, stop))}
        try:
            await lifecycle.supervise(stop, tasks)
        finally:
            await runner.drain(timeout_s=30)
    finally:
        await producer.stop()
        await db.close()
        log.info("job runner stopped", extra=fields(runner_id=runner.runner_id))


async def _resume_in_windows(runner: Runner, stop: asyncio.Event) -> None:
    """Every ``WINDOW_POLL_S``: start the partial runs whose run window is open."""
    while not stop.is_set():
        try:
            await runner.resume_partials()
        except DatabaseUnavailable as exc:
            log.warning("database unavailable: partial runs not resumed yet", extra=fields(
                error_message=str(exc)[:MAX_MESSAGE]))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), WINDOW_POLL_S)


async def _consume_triggers(settings: Settings, runner: Runner, stop: asyncio.Event) -> None:
    consumer = kafka.consumer(settings, settings.topics.job_triggers,
                              group_id=settings.group_id("jobrunner"),
                              session_timeout_ms=10_000, heartbeat_interval_ms=1_000)
    await kafka.start(consumer)
    rng = random.Random()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=100)
            for tp, msgs in batches.items():
                for msg in msgs:
                    if not await _handle_record(runner, msg.value, msg.offset, stop, rng):
                        return  # stopping before the trigger was handled: not committed
                    try:
                        await consumer.commit({tp: msg.offset + 1})
                    except (IllegalStateError, CommitFailedError):
                        # Another runner joined and took the partition while this trigger
                        # was handled: it re-reads from the last commit, and a slot claimed
                        # here is "claimed before" there. Not a reason to end the process.
                        log.info("trigger partition moved to another runner",
                                 extra=fields(offset=msg.offset))
                        break
    finally:
        await kafka.stop_quietly(consumer)


async def _handle_record(runner: Runner, value: bytes | None, offset: int,
                         stop: asyncio.Event, rng: random.Random) -> bool:
    """Handle one trigger, retrying while PostgreSQL is away; False if stopped first."""
    try:
        trigger = loads(JobTrigger, value or b"")
    except WireError as exc:
        log.warning("bad job trigger ignored", extra=fields(offset=offset, reason=exc.reason))
        return True
    started = time.monotonic()

    async def handle() -> bool:
        await runner.handle(trigger)
        return True

    def on_retry(exc: SchedulerError, failures: int, delay_s: float) -> None:
        # The claim is the commit point: without it the trigger is not consumed.
        log.warning("database unavailable: trigger retried", extra=fields(
            trigger_id=trigger.trigger_id, error_message=str(exc)[:MAX_MESSAGE],
            waited_s=round(time.monotonic() - started, 1)))

    return bool(await retry.call(handle, backoff=TRIGGER_BACKOFF, stop=stop, rng=rng,
                                 on_retry=on_retry))
