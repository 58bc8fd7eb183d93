"""The job-runner process: the trigger agent and the runner, apart from the worker, and the
operator commands that run in a process of their own (``cronorch jobs run|undo``).

    scheduler.ticks ──trigger agent (streams.processes.trigger)──► scheduler.job-triggers
    scheduler.job-triggers ──runner (streams.processes.runner, group <app>-jobrunner)──►
        PostgreSQL job_runs + the job ──► scheduler.job-runs + one JSON log line per record

A trigger's offset is committed once its slot is claimed (or recorded), so a slot is never
lost to a crash; claims make a redelivered trigger harmless. Losing the trigger partition to
another runner mid-batch is not a reason to stop: its next owner re-reads from the last commit.

Maintenance never slows user-facing work: the process has its own small pool
(``JOB_DB_POOL_SIZE``), each batch is bounded by the job's ``batch_timeout_s`` and batches
are paced by its ``batch_pause_s``. Owns the wiring (pool, producer, consumer, the loops);
``run_manual``, ``undo`` and ``dry_run`` are the operator entry points.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from datetime import UTC, datetime
from typing import Any

from schemas import JobRun, JobTrigger
from schemas.wire import WireError, dumps, loads
from streams import retry
from streams.errors import DatabaseUnavailable, Refused, SchedulerError, TransientError
from streams.jobs import decisions as jobs
from streams.jobs.model import Job, Registry
from streams.kafka import client as kafka
from streams.kafka.engine import Processor
from streams.postgres.connector import Connector
from streams.postgres.runs import PgRunStore
from streams.processes import lifecycle
from streams.processes.execution import MAX_MESSAGE, BatchBounded, Clock, Emit, undo_run
from streams.processes.runner import Runner
from streams.processes.trigger import TriggerAgent
from streams.settings import Settings
from streams.telemetry.logs import fields

# The runner, the trigger agent and the batch bound are used from here by tests and bench.
__all__ = ["BatchBounded", "Runner", "TriggerAgent", "dry_run", "run", "run_manual", "undo"]
log = logging.getLogger("cronorch.jobs")
TRIGGER_BACKOFF = retry.Backoff(base_s=0.5, cap_s=30.0)
WINDOW_POLL_S = 5.0  # how often the process looks for partial runs whose window opened


async def _emitter(settings: Settings) -> tuple[Any, Emit]:
    producer = kafka.producer(settings, None)
    await kafka.start(producer)

    async def emit(run: JobRun) -> None:
        async with kafka.translated():
            await producer.send_and_wait(settings.topics.job_runs, key=run.job.encode(),
                                         value=dumps(run))

    return producer, emit


async def _open_db(settings: Settings) -> Connector:
    """The job runner's own small pool (``JOB_DB_POOL_SIZE``), apart from the worker's."""
    return await Connector.open(settings, min_size=1, max_size=settings.job_db_pool_size)


async def dry_run(settings: Settings, registry: Registry, name: str, *,
                  clock: Clock = lambda: datetime.now(UTC)) -> dict[str, Any]:
    """``cronorch jobs run NAME --dry-run``: what a run now would touch (per table: rows,
    oldest and newest), reading only; no claim, no lock, no record."""
    job = registry.get(name)
    at = clock().replace(microsecond=0)
    db = await _open_db(settings)
    try:
        touch = await jobs.preview(job, PgRunStore(db), at)
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
        store = PgRunStore(db)
        row = await store.run_row(name, scheduled_for)
        if row is None or row["trigger"] == "undo":
            raise Refused(f"no archive run {tag} in job_runs")
        if row["status"] in ("queued", "running", "partial"):
            raise Refused(f"run {tag} is {row['status']}: undo it once it has finished "
                              "(pause the job to keep the next window from resuming it)")
        if dry_run:
            touch = await store.undo_preview(tag)
            return {"undoes": tag, "dry_run": True, "would_move": touch.as_dict()}
        return await _undo(settings, job, store, tag, clock)
    finally:
        await db.close()


async def _undo(settings: Settings, job: Job, store: PgRunStore, tag: str,
                clock: Clock) -> dict[str, Any]:
    lock = await store.job_lock(job.name, shared=False, wait=False)
    if lock is None:
        raise Refused(f"a run of {job.name} holds its lock: try again when it has finished")
    try:
        producer, emit = await _emitter(settings)
        try:
            runner = Runner(Registry((job,)), store, clock=clock, rng=random.Random(), emit=emit)
            run = await undo_run(runner, job, tag, lock)
        finally:
            await producer.stop()
    finally:
        await store.release(lock)
    return run.model_dump(mode="json")


async def run_manual(settings: Settings, registry: Registry, name: str, *,
                     clock: Clock = lambda: datetime.now(UTC)) -> JobRun | None:
    """``cronorch jobs run NAME``: run the job now, in this process, recorded as manual."""
    job = registry.get(name)
    db = await _open_db(settings)
    producer, emit = await _emitter(settings)
    try:
        store = PgRunStore(db)
        runner = Runner(registry, store, clock=clock, rng=random.Random(), emit=emit)
        at = clock().replace(microsecond=0)
        task = await runner.dispatch(job, at, "manual", jobs.trigger_id(name, at, "manual"),
                                     None, resume_first=False)
        if task is None:
            rows = [r for r in await store.runs(name) if r["scheduled_for"] == at]
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
    runner = Runner(registry, PgRunStore(db), clock=clock, rng=random.Random(), emit=emit)
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
                        async with kafka.translated():
                            await consumer.commit({tp: msg.offset + 1})
                    except TransientError as exc:
                        # Another runner joined and took the partition while this trigger
                        # was handled (or the broker is away): the partition's owner re-reads
                        # from the last commit, and a slot claimed here is "claimed before"
                        # there. Not a reason to end the process.
                        log.info("trigger offset not committed: the trigger will be redelivered",
                                 extra=fields(offset=msg.offset,
                                              error_class=type(exc.__cause__ or exc).__name__))
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
