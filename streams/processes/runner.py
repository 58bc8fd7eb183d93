"""The job runner: each trigger's slot claimed once, then executed, skipped or recorded.

    scheduler.job-triggers ──runner (group <app>-jobrunner)──► PostgreSQL job_runs + the job
                                    └──► scheduler.job-runs + one JSON log line per record

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

Owns what becomes of a slot (paused and deferred, caught up after a resume, coalesced or
missed, skipped or queued by the overlap policy, claimed for a later window); executing a
claimed slot is ``streams.processes.execution``. IO through the ``RunStore`` port.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from schemas import JobRun, JobTrigger
from schemas.wire import dumps
from streams.jobs import decisions as jobs
from streams.jobs.decisions import Disposition, OverlapAction
from streams.jobs.model import Job, Overlap, Registry
from streams.processes.execution import Clock, Emit, Executor, Lock
from streams.stores import Claim, RunStore
from streams.telemetry import metrics
from streams.telemetry.logs import fields

log = logging.getLogger("cronorch.jobs")


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


def _abandoned_run(row: Mapping[str, Any]) -> JobRun:
    """The record of a slot failed because its runner went away mid-attempt."""
    attempt = max(1, row["attempt"])
    return JobRun(run_id=jobs.run_id(row["job"], row["scheduled_for"], attempt),
                  job=row["job"], kind=row["kind"], scheduled_for=row["scheduled_for"],
                  trigger=row["trigger"], attempt=attempt, started_at=None, finished_at=None,
                  duration_ms=None, status="failed", error_class="Abandoned",
                  error_message="the runner that claimed this slot went away before finishing it")


class Runner(Executor):
    """Claims slots and executes them; IO through ``db`` and ``emit``, time through ``clock``."""

    def __init__(self, registry: Registry, db: RunStore[Any], *, clock: Clock,
                 rng: random.Random, emit: Emit, runner_id: str | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        super().__init__(db, clock=clock, rng=rng, emit=emit, runner_id=runner_id, sleep=sleep)
        self.registry = registry

    def _job(self, name: str) -> Job | None:
        for job in self.registry.jobs:
            if job.name == name:
                return job
        return None

    async def sweep(self) -> int:
        """Fail the claimed slots of runners that went away, then resume those still inside
        their catch-up window with their attempts left (both kinds are idempotent, batch by
        batch); returns how many slots were abandoned."""
        await self.publish_records()
        abandoned: dict[tuple[str, datetime], JobRun] = {}

        def record(row: Mapping[str, Any]) -> bytes:
            run = _abandoned_run(row)
            abandoned[row["job"], row["scheduled_for"]] = run
            return dumps(run)

        rows = await self.db.sweep_abandoned(self.runner_id, self.clock(), record)
        for row in rows:
            await self.recorded(abandoned[row["job"], row["scheduled_for"]])
            await self._resume(row["job"], row["scheduled_for"], row["trigger"],
                               max(1, row["attempt"]))
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
            job=job.name, scheduled_for=jobs.z(scheduled_for), attempt=resumed))
        self._start(self._execute(job, scheduled_for, trigger, lock, queued=False,
                                  first_attempt=resumed))

    async def resume_partials(self) -> int:
        """Resume the partial runs whose job's window is open on the runner's clock (each
        under its job's lock, so one at a time per job); returns how many started. Records
        still stored with their rows are published first (a partial run's before it goes
        on)."""
        await self.publish_records()
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
                job=job.name, scheduled_for=jobs.z(row["scheduled_for"]),
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
                job=job.name, scheduled_for=jobs.z(trigger.scheduled_for)))
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
                      self.runner_id, run.error_message, record=dumps(run))
        if await self.db.claim(claim, None, finished_at=self.clock()):
            await self.recorded(run)
            return
        metrics.JOB_DUPLICATES.labels(job.name).inc()
        log.info("slot claimed before: trigger ignored", extra=fields(
            job=job.name, scheduled_for=jobs.z(scheduled_for), trigger="schedule"))

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
        holder: Lock | None = lock
        note = None
        if action is OverlapAction.WAIT:
            holder = await self.db.waiting_connection()
        elif action is OverlapAction.SKIP:
            note = f"overlap ({job.overlap.value}): the previous run was still running"
        status = {OverlapAction.RUN: "running", OverlapAction.WAIT: "queued",
                  OverlapAction.SKIP: "skipped"}[action]
        skipped = None if action is not OverlapAction.SKIP else JobRun(
            run_id=jobs.run_id(job.name, scheduled_for, 1), job=job.name, kind=job.kind,
            scheduled_for=scheduled_for, trigger=trigger, attempt=1,
            started_at=None, finished_at=None, duration_ms=None, status="skipped",
            error_message=note)
        claim = Claim(job.name, scheduled_for, job.kind, trigger, trigger_id, tick_at, status,
                      self.runner_id, note, record=None if skipped is None else dumps(skipped))
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
                job=job.name, scheduled_for=jobs.z(scheduled_for), trigger=trigger))
            return None
        if skipped is not None:
            await self.recorded(skipped)
            return None
        assert holder is not None
        return self._start(self._execute(
            job, scheduled_for, trigger, holder, queued=action is OverlapAction.WAIT))

    async def _claim_for_window(self, job: Job, scheduled_for: datetime, trigger: str,
                                trigger_id: str, tick_at: datetime | None) -> None:
        note = self._window_note(job, stopped=False)
        run = JobRun(
            run_id=jobs.run_id(job.name, scheduled_for, 1), job=job.name, kind=job.kind,
            scheduled_for=scheduled_for, trigger=trigger, attempt=1, started_at=None,
            finished_at=None, duration_ms=None, status="partial", error_message=note,
            progress={"rows_done": 0, "windows": 0})
        claim = Claim(job.name, scheduled_for, job.kind, trigger, trigger_id, tick_at,
                      "partial", self.runner_id, note, record=dumps(run))
        if not await self.db.claim(claim, None, finished_at=self.clock()):
            metrics.JOB_DUPLICATES.labels(job.name).inc()
            log.info("slot claimed before: trigger ignored", extra=fields(
                job=job.name, scheduled_for=jobs.z(scheduled_for), trigger=trigger))
            return None
        await self.recorded(run)
        return None
