"""The job runner's store on PostgreSQL: job locks, slot claims, run rows, pause state,
and the ``DataStore`` the built-in kinds run against (archive, purge, undo).

Implements ``streams.stores.RunStore[JobLock]``. A ``JobLock`` is a pool connection of its
own: the job's advisory lock lives as long as its session, and a claimed row stores the
session's identity (pid, backend start), so ``sweep_abandoned`` can tell a dead runner's row
from a live one. Every change of a row that makes a run-log record (a retried attempt's
failure, the end, a decision) appends that record to the row in the same statement, and
``publish_records`` publishes and clears them in one transaction, so no record is lost to a
crash. Every statement is a named query of ``queries.sql``; errors are translated
by the connector. Also serves ``cronorch jobs list|pause|resume``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from streams.jobs.decisions import Touch
from streams.postgres.connector import Connector, queries, translated
from streams.stores import Claim, RunEnd


def lock_key(job: str) -> int:
    """The advisory lock key of a job: a stable signed 64-bit hash of its name."""
    digest = hashlib.sha256(f"cronorch.job:{job}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)



@dataclass(slots=True)
class JobLock:
    """A pool connection holding (or waiting for) a job's advisory lock.

    The lock lives as long as the connection's session: releasing the connection to the pool
    resets the session (``pg_advisory_unlock_all``); a dead process loses it with its socket.
    """

    connection: Any
    pid: int
    backend_start: datetime


class PgRunStore:
    """The job runner's ``RunStore`` on a ``Connector``."""

    def __init__(self, db: Connector) -> None:
        self.db = db

    # --- job locks and slots -----------------------------------------------------------

    async def job_lock(self, job: str, *, shared: bool, wait: bool) -> JobLock | None:
        """Take a job's lock on a dedicated pool connection; None if busy and not ``wait``."""
        lock = await self.waiting_connection()
        try:
            got = await self._lock(lock, job, shared=shared, wait=wait)
        except BaseException:
            await self.release(lock)
            raise
        if wait or got:
            return lock
        await self.release(lock)
        return None

    async def waiting_connection(self) -> JobLock:
        """A connection whose identity a queued slot carries while it waits for the lock."""
        conn = await self.db.acquire()
        try:
            async with translated():
                row = await conn.fetchrow(queries()["backend_identity"])
        except BaseException:
            await self.db.release_connection(conn)
            raise
        return JobLock(conn, int(row["pid"]), row["backend_start"])

    async def wait_lock_on(self, lock: JobLock, job: str, *, shared: bool) -> None:
        await self._lock(lock, job, shared=shared, wait=True)

    async def _lock(self, lock: JobLock, job: str, *, shared: bool, wait: bool) -> bool:
        name = ("wait_job_lock" if wait else "try_job_lock") + ("_shared" if shared else "")
        async with translated():
            return bool(await lock.connection.fetchval(queries()[name], lock_key(job)))

    async def release(self, lock: JobLock | None) -> None:
        if lock is not None:
            await self.db.release_connection(lock.connection)

    async def claim(self, claim: Claim, lock: JobLock | None, *,
                    finished_at: datetime | None = None) -> bool:
        """Insert the slot's row; False if the slot was claimed before (by anyone, ever)."""
        job = await self.db.fetchval(
            "claim_slot", claim.job, claim.scheduled_for, claim.kind, claim.trigger,
            claim.trigger_id, claim.tick_at, claim.status, claim.runner_id,
            lock.pid if lock else None, lock.backend_start if lock else None, claim.note,
            finished_at, claim.undoes, claim.record)
        return job is not None

    async def partial_runs(self) -> list[dict[str, Any]]:
        """Runs waiting for their next window (stopped at a window's end, or claimed outside
        one), oldest slot first."""
        return [dict(r) for r in await self.db.fetch("partial_runs")]

    async def reclaim_partial(self, job: str, scheduled_for: datetime, runner_id: str,
                              lock: JobLock) -> dict[str, Any] | None:
        """Take a partial run to resume it on ``lock``'s session: its attempt, counts so far
        and progress; None if another runner took it first."""
        row = await self.db.fetchrow("reclaim_partial", job, scheduled_for, runner_id, lock.pid,
                                  lock.backend_start)
        if row is None:
            return None
        out = dict(row)
        for key in ("before", "progress"):
            if isinstance(out[key], str):
                out[key] = orjson.loads(out[key])
        return out

    async def run_row(self, job: str, scheduled_for: datetime) -> dict[str, Any] | None:
        row = await self.db.fetchrow("job_run", job, scheduled_for)
        if row is None:
            return None
        out = dict(row)
        if isinstance(out["progress"], str):
            out["progress"] = orjson.loads(out["progress"])
        return out

    async def reclaim_abandoned(self, job: str, scheduled_for: datetime, runner_id: str,
                                lock: JobLock) -> int | None:
        """Take over a slot failed as abandoned; the attempt it had reached, None if taken."""
        attempt = await self.db.fetchval("reclaim_abandoned", job, scheduled_for, runner_id,
                                      lock.pid, lock.backend_start)
        return None if attempt is None else int(attempt)

    async def start_attempt(self, job: str, scheduled_for: datetime, attempt: int,
                            started_at: datetime, lock: JobLock, runner_id: str) -> bool:
        """Mark the slot running for ``attempt``; False if it is no longer ours to run."""
        row = await self.db.fetchval("start_attempt", job, scheduled_for, attempt, started_at,
                                  lock.pid, lock.backend_start, runner_id)
        return row is not None

    async def finish(self, job: str, scheduled_for: datetime, runner_id: str,
                     end: RunEnd) -> bool:
        row = await self.db.fetchval(
            "finish_run", job, scheduled_for, end.status, end.attempt, end.started_at,
            end.finished_at, end.duration_ms, end.processed, end.affected,
            _json(end.before), _json(end.after), end.error_class, end.error_message,
            runner_id, _json(end.progress), end.record)
        return row is not None

    async def waiting_exists(self, job: str) -> bool:
        return bool(await self.db.fetchval("waiting_exists", job))

    async def sweep_abandoned(self, runner_id: str, now: datetime,
                              record: Callable[[Mapping[str, Any]], bytes]
                              ) -> list[dict[str, Any]]:
        """Fail every claimed slot whose holder's session is gone (crashed runner), each with
        its run-log record, in one transaction."""
        q = queries()
        async with self.db.transaction() as conn:
            rows = [dict(r) for r in await conn.fetch(q["abandoned_slots"], runner_id)]
            for row in rows:
                await conn.execute(q["abandon_slot"], row["job"], row["scheduled_for"], now,
                                   record(row))
        return rows

    async def stage_record(self, job: str, scheduled_for: datetime, runner_id: str,
                           record: bytes) -> bool:
        """Append ``record`` to the slot's unpublished records while it is ours."""
        return await self.db.fetchval("stage_record", job, scheduled_for, record,
                                      runner_id) is not None

    async def publish_records(self, publish: Callable[[list[bytes]], Awaitable[None]], *,
                              limit: int, job: str | None = None,
                              scheduled_for: datetime | None = None) -> int:
        """Publish stored run-log records and clear them once ``publish`` returned, in one
        transaction whose row locks keep other runners off them meanwhile."""
        q = queries()
        async with self.db.transaction() as conn:
            rows = await conn.fetch(q["pending_records"], job, scheduled_for, limit)
            records = [bytes(record) for r in rows for record in r["records"]]
            if not records:
                return 0
            await publish(records)
            await conn.execute(q["records_published"], [r["job"] for r in rows],
                               [r["scheduled_for"] for r in rows])
        return len(records)

    async def runs(self, job: str) -> list[dict[str, Any]]:
        rows = [dict(r) for r in await self.db.fetch("job_runs", job)]
        for row in rows:
            for key in ("before", "after", "progress"):
                if isinstance(row[key], str):
                    row[key] = orjson.loads(row[key])
        return rows

    async def last_runs(self) -> dict[str, dict[str, Any]]:
        return {r["job"]: dict(r) for r in await self.db.fetch("last_runs")}

    # --- pause state -------------------------------------------------------------------

    async def job_state(self, job: str) -> tuple[bool, str | None, datetime | None]:
        row = await self.db.fetchrow("job_state", job)
        if row is None:
            return False, None, None
        return bool(row["paused"]), row["reason"], row["resume_from"]

    async def job_states(self) -> dict[str, dict[str, Any]]:
        return {r["job"]: dict(r) for r in await self.db.fetch("job_states")}

    async def pause(self, job: str, reason: str) -> None:
        await self.db.execute("pause_job", job, reason)

    async def resume(self, job: str, *, from_now: bool) -> datetime | None:
        """Unpause; returns the first deferred slot still to catch up (None with from_now)."""
        value = await self.db.fetchval("resume_job", job, from_now)
        return value if isinstance(value, datetime) else None

    async def defer(self, job: str, scheduled_for: datetime) -> None:
        await self.db.execute("defer_slot", job, scheduled_for)

    async def clear_resume_from(self, job: str) -> None:
        await self.db.execute("clear_resume_from", job)

    # --- DataStore (streams.jobs) --------------------------------------------------------

    async def archive_counts(self, cutoff: datetime) -> dict[str, int]:
        row = await self.db.fetchrow("archive_counts", cutoff)
        return {k: int(v) for k, v in dict(row).items()}

    async def archive_batch(self, cutoff: datetime, batch_size: int,
                            archived_at: datetime, tag: str | None = None) -> int:
        return int(await self.db.fetchval("archive_batch", cutoff, batch_size, archived_at, tag))

    async def archive_preview(self, cutoff: datetime) -> Touch:
        row = await self.db.fetchrow("archive_preview", cutoff)
        return Touch(int(row["rows"]), row["oldest"], row["newest"])

    async def purge_preview(self, cutoffs: Mapping[str, datetime]) -> dict[str, Touch]:
        row = await self.db.fetchrow("purge_preview", cutoffs["tasks_archive"],
                                  cutoffs["job_runs"], cutoffs["dead_letters"],
                                  cutoffs["outbox"])
        return {t: Touch(int(row[f"{t}_rows"]), row[f"{t}_oldest"], row[f"{t}_newest"])
                for t in ("tasks_archive", "job_runs", "dead_letters", "outbox")}

    async def undo_batch(self, tag: str, batch_size: int, after: str) -> tuple[int, str | None]:
        row = await self.db.fetchrow("undo_batch", tag, batch_size, after)
        return int(row["moved"]), row["last"] if row["scanned"] == batch_size else None

    async def undo_preview(self, tag: str) -> Touch:
        row = await self.db.fetchrow("undo_preview", tag)
        return Touch(int(row["rows"]), row["oldest"], row["newest"], int(row["blocked"]))

    async def purge_counts(self, cutoffs: Mapping[str, datetime]) -> dict[str, int]:
        row = await self.db.fetchrow("purge_counts", cutoffs["tasks_archive"],
                                  cutoffs["job_runs"], cutoffs["dead_letters"],
                                  cutoffs["outbox"])
        return {k: int(v) for k, v in dict(row).items()}

    async def purge_batch(self, target: str, cutoff: datetime, batch_size: int) -> int:
        if target not in ("tasks_archive", "job_runs", "dead_letters", "outbox"):
            raise ValueError(f"unknown purge target {target!r}")
        return int(await self.db.fetchval(f"purge_{target}", cutoff, batch_size))


def _json(value: Mapping[str, Any]) -> str:
    return orjson.dumps(dict(value)).decode()
