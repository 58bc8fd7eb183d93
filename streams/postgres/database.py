"""PostgreSQL adapter: the asyncpg pool, migrations, named queries and error translation.

Owns every conversation with PostgreSQL. SQL lives in ``queries.sql`` beside this module
(named blocks, ``$n`` parameters) and ``migrations/NNN_*.sql``; nothing here builds SQL from
values. Driver errors never leave this module: connection loss, refused connections, timeouts,
serialization failures, deadlocks and server shutdowns become ``DatabaseUnavailable``
(retriable); everything else becomes ``DatabaseError`` — both chained with ``from``.

Implements the ``streams.jobs.decisions.DataStore`` port plus what the job runner needs (slot
claims, per-job advisory locks, pause state), and the tasks side: spawned instances with their
outbox rows, per-user outbox claims for the relay, LISTEN wake-ups and read-only snapshots for
bootstrap. Must not import the planning, runner, sink or relay modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from importlib import resources
from typing import Any

import asyncpg
import orjson

from streams.errors import DatabaseError, DatabaseUnavailable
from streams.jobs.decisions import Touch
from streams.settings import Settings
from streams.telemetry.logs import fields

MIGRATION_LOCK = 0x63726F6E6F7263  # "cronorc": one migrator at a time
# SQLSTATEs a retry can help with: serialization failure, deadlock, lock timeout, statement
# timeout/cancel, server shutting down or starting, too many connections; class 08 (connection).
log = logging.getLogger("cronorch.postgres")
RETRIABLE_STATES = frozenset({"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03",
                              "53300", "53400"})
_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    """The named queries of ``queries.sql``."""
    text = (resources.files("streams.postgres") / "queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    named = {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
    for name, body in named.items():
        if "%s" in body or re.search(r"(?<!:):[a-z_]+", body):
            raise AssertionError(f"query {name} uses a parameter style other than $n")
    return named


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration, in order."""
    folder = resources.files("streams.postgres") / "migrations"
    out: list[tuple[int, str, str]] = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{3})_[a-z0-9_]+\.sql", entry.name)
        if match:
            out.append((int(match[1]), entry.name, entry.read_text(encoding="utf-8")))
    out.sort()
    versions = [v for v, _, _ in out]
    if len(set(versions)) != len(versions):
        raise AssertionError(f"duplicate migration versions: {versions}")
    return out


def translate(exc: BaseException) -> Exception:
    """Map a driver or socket error to ours (``raise translate(e) from e``)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        message = f"{type(exc).__name__} ({state}): {getattr(exc, 'message', None) or exc}"
        if state.startswith("08") or state in RETRIABLE_STATES or isinstance(
                exc, asyncpg.PostgresConnectionError):
            return DatabaseUnavailable(message)
        return DatabaseError(message, state)
    if isinstance(exc, ssl.SSLCertVerificationError):
        # Not retriable: the DSN's sslrootcert does not sign the server's certificate, or
        # the host is not the one the certificate names (sslmode=verify-full).
        return DatabaseError(f"DATABASE_URL: the server's certificate is not trusted: "
                             f"{exc.verify_message}", "tls")
    # A connection that broke mid-query leaves asyncpg's protocol in a state it reports as
    # an internal client error; for us it is a lost connection like any other.
    if isinstance(exc, (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
                        ConnectionError, TimeoutError)):
        return DatabaseUnavailable(f"{type(exc).__name__}: {exc}")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                  OSError, TimeoutError)


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except _DRIVER_ERRORS as exc:
        raise translate(exc) from exc


def lock_key(job: str) -> int:
    """The advisory lock key of a job: a stable signed 64-bit hash of its name."""
    digest = hashlib.sha256(f"cronorch.job:{job}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def outbox_lock_key(user_id: str) -> int:
    """The advisory lock key of a user's outbox rows (a different namespace from jobs)."""
    digest = hashlib.sha256(f"cronorch.outbox:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True, slots=True)
class SpawnedTask:
    """A new task row from a spawn, with the JSON of its task.upserted outbox event."""

    task_id: str
    user_id: str
    title: str
    due_at: datetime | None
    due_date: date | None
    reminders_json: str
    series_id: str
    occurrence_key: str
    created_at: datetime
    event_json: str


@dataclass(frozen=True, slots=True)
class OutboxRow:
    outbox_id: int
    user_id: str
    event_type: str
    payload: str  # the event's JSON text, published as is


class Listener:
    """A pool connection LISTENing on a channel; ``alive`` is False once it is lost."""

    def __init__(self, db: Database, conn: Any, channel: str,
                 callback: Callable[..., None]) -> None:
        self.db = db
        self.conn = conn
        self.channel = channel
        self.callback = callback

    def alive(self) -> bool:
        return not self.conn.is_closed()

    async def close(self) -> None:
        # The pool warns about (and tests fail on) a connection released with a listener.
        with contextlib.suppress(Exception):
            await self.conn.remove_listener(self.channel, self.callback)
        await self.db._release(self.conn)


class Snapshot:
    """Named queries inside one REPEATABLE READ, read-only transaction."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def fetchrow(self, name: str, *args: Any) -> dict[str, Any]:
        async with _translated():
            return dict(await self.conn.fetchrow(queries()[name], *args))

    async def chunks(self, name: str, size: int,
                     *args: Any) -> AsyncIterator[list[dict[str, Any]]]:
        """The query's rows through a server-side cursor, ``size`` at a time."""
        async with _translated():
            cursor = await self.conn.cursor(queries()[name], *args)
        while True:
            async with _translated():
                rows = await cursor.fetch(size)
            if not rows:
                return
            yield [dict(r) for r in rows]


@dataclass(slots=True)
class JobLock:
    """A pool connection holding (or waiting for) a job's advisory lock.

    The lock lives as long as the connection's session: releasing the connection to the pool
    resets the session (``pg_advisory_unlock_all``); a dead process loses it with its socket.
    """

    connection: Any
    pid: int
    backend_start: datetime


@dataclass(frozen=True, slots=True)
class Claim:
    job: str
    scheduled_for: datetime
    kind: str
    trigger: str
    trigger_id: str
    tick_at: datetime | None
    status: str  # 'running' | 'queued' | 'partial' | 'skipped' | 'missed'
    runner_id: str
    note: str | None = None
    undoes: str | None = None  # an undo run: the run it undoes


class SchemaBehind(DatabaseError):
    """The database lacks migrations this version needs: run ``cronorch migrate``."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"the database schema lacks {', '.join(missing)}: run `cronorch "
                         "migrate` (in the chart, the migrations hook Job does)", "schema")
        self.missing = missing


class Database:
    """A pool plus named-query methods; build with ``await Database.connect(url)``."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 1, max_size: int = 10,
                      timeout_s: float = 10, statement_timeout_ms: int = 0,
                      idle_in_transaction_timeout_ms: int = 0,
                      command_timeout_s: float | None = None) -> Database:
        """A pool on ``url`` (TLS as its ``sslmode``/``sslrootcert`` say). Every connection
        gets the server-side statement and idle-in-transaction timeouts (0: none) and the
        client-side ``command_timeout_s``."""
        server_settings = {"statement_timeout": str(statement_timeout_ms),
                           "idle_in_transaction_session_timeout":
                               str(idle_in_transaction_timeout_ms)}
        async with _translated():
            pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size,
                                             timeout=timeout_s, command_timeout=command_timeout_s,
                                             server_settings=server_settings)
        return cls(pool)

    @classmethod
    async def open(cls, settings: Settings, **pool: Any) -> Database:
        """``connect`` with the URL and the timeouts of ``settings``."""
        return await cls.connect(
            settings.database_url.get_secret_value(),
            statement_timeout_ms=settings.pg_statement_timeout_ms,
            idle_in_transaction_timeout_ms=settings.pg_idle_in_transaction_timeout_ms,
            command_timeout_s=settings.pg_command_timeout_s or None, **pool)

    async def close(self) -> None:
        async with _translated():
            await self.pool.close()

    # --- plumbing ----------------------------------------------------------------------

    async def fetch(self, name: str, *args: Any) -> list[Any]:
        async with _translated():
            return list(await self.pool.fetch(queries()[name], *args))

    async def fetchrow(self, name: str, *args: Any) -> Any:
        async with _translated():
            return await self.pool.fetchrow(queries()[name], *args)

    async def fetchval(self, name: str, *args: Any) -> Any:
        async with _translated():
            return await self.pool.fetchval(queries()[name], *args)

    async def execute(self, name: str, *args: Any) -> str:
        async with _translated():
            return str(await self.pool.execute(queries()[name], *args))

    # --- migrations --------------------------------------------------------------------

    async def missing_migrations(self) -> list[str]:
        """The migrations this version has that the database has not applied (names)."""
        q = queries()
        async with _translated(), self.pool.acquire() as conn:
            exists = await conn.fetchval(q["schema_migrations_exists"])
            done = ({r["version"] for r in await conn.fetch(q["applied_migrations"])}
                    if exists else set())
        return [name for version, name, _ in migrations() if version not in done]

    async def wait_for_schema(self, timeout_s: float = 300, poll_s: float = 2) -> None:
        """Return once every migration of this version is applied; runtime processes call
        this instead of migrating (only ``cronorch migrate``, the chart's hook, migrates).
        Past ``timeout_s`` raise ``SchemaBehind`` naming what is missing."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while missing := await self.missing_migrations():
            if asyncio.get_running_loop().time() >= deadline:
                raise SchemaBehind(missing)
            log.info("waiting for the database schema", extra=fields(missing=missing))
            await asyncio.sleep(poll_s)

    async def migrate(self) -> list[str]:
        """Apply pending migrations, one transaction each, under an advisory lock.

        Safe to run concurrently and repeatedly; returns the file names applied now.
        """
        q = queries()
        applied_now: list[str] = []
        async with _translated(), self.pool.acquire() as conn:
            await conn.execute(q["advisory_lock"], MIGRATION_LOCK)
            try:
                await conn.execute(q["create_schema_migrations"])
                done = {r["version"] for r in await conn.fetch(q["applied_migrations"])}
                for version, name, sql in migrations():
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute(q["record_migration"], version, name)
                    applied_now.append(name)
            finally:
                await conn.execute(q["advisory_unlock"], MIGRATION_LOCK)
        return applied_now

    # --- job locks and slots -----------------------------------------------------------

    async def job_lock(self, job: str, *, shared: bool, wait: bool) -> JobLock | None:
        """Take a job's lock on a dedicated pool connection; None if busy and not ``wait``."""
        q = queries()
        async with _translated():
            conn = await self.pool.acquire()
            try:
                row = await conn.fetchrow(q["backend_identity"])
                name = ("wait_job_lock" if wait else "try_job_lock") + (
                    "_shared" if shared else "")
                got = await conn.fetchval(q[name], lock_key(job))
            except BaseException:
                await self._release(conn)
                raise
        if wait or got:
            return JobLock(conn, int(row["pid"]), row["backend_start"])
        await self._release(conn)
        return None

    async def waiting_connection(self) -> JobLock:
        """A connection whose identity a queued slot carries while it waits for the lock."""
        async with _translated():
            conn = await self.pool.acquire()
            try:
                row = await conn.fetchrow(queries()["backend_identity"])
            except BaseException:
                await self._release(conn)
                raise
        return JobLock(conn, int(row["pid"]), row["backend_start"])

    async def wait_lock_on(self, lock: JobLock, job: str, *, shared: bool) -> None:
        async with _translated():
            await lock.connection.fetchval(
                queries()["wait_job_lock_shared" if shared else "wait_job_lock"], lock_key(job))

    async def release(self, lock: JobLock | None) -> None:
        if lock is not None:
            await self._release(lock.connection)

    async def _release(self, conn: Any) -> None:
        try:
            await self.pool.release(conn)
        except Exception:  # a dead connection is dropped by the pool; nothing to hand back
            with contextlib.suppress(Exception):
                conn.terminate()

    async def claim(self, claim: Claim, lock: JobLock | None, *,
                    finished_at: datetime | None = None) -> bool:
        """Insert the slot's row; False if the slot was claimed before (by anyone, ever)."""
        job = await self.fetchval(
            "claim_slot", claim.job, claim.scheduled_for, claim.kind, claim.trigger,
            claim.trigger_id, claim.tick_at, claim.status, claim.runner_id,
            lock.pid if lock else None, lock.backend_start if lock else None, claim.note,
            finished_at, claim.undoes)
        return job is not None

    async def partial_runs(self) -> list[dict[str, Any]]:
        """Runs waiting for their next window (stopped at a window's end, or claimed outside
        one), oldest slot first."""
        return [dict(r) for r in await self.fetch("partial_runs")]

    async def reclaim_partial(self, job: str, scheduled_for: datetime, runner_id: str,
                              lock: JobLock) -> dict[str, Any] | None:
        """Take a partial run to resume it on ``lock``'s session: its attempt, counts so far
        and progress; None if another runner took it first."""
        row = await self.fetchrow("reclaim_partial", job, scheduled_for, runner_id, lock.pid,
                                  lock.backend_start)
        if row is None:
            return None
        out = dict(row)
        for key in ("before", "progress"):
            if isinstance(out[key], str):
                out[key] = orjson.loads(out[key])
        return out

    async def run_row(self, job: str, scheduled_for: datetime) -> dict[str, Any] | None:
        row = await self.fetchrow("job_run", job, scheduled_for)
        if row is None:
            return None
        out = dict(row)
        if isinstance(out["progress"], str):
            out["progress"] = orjson.loads(out["progress"])
        return out

    async def reclaim_abandoned(self, job: str, scheduled_for: datetime, runner_id: str,
                                lock: JobLock) -> int | None:
        """Take over a slot failed as abandoned; the attempt it had reached, None if taken."""
        attempt = await self.fetchval("reclaim_abandoned", job, scheduled_for, runner_id,
                                      lock.pid, lock.backend_start)
        return None if attempt is None else int(attempt)

    async def start_attempt(self, job: str, scheduled_for: datetime, attempt: int,
                            started_at: datetime, lock: JobLock, runner_id: str) -> bool:
        """Mark the slot running for ``attempt``; False if it is no longer ours to run."""
        row = await self.fetchval("start_attempt", job, scheduled_for, attempt, started_at,
                                  lock.pid, lock.backend_start, runner_id)
        return row is not None

    async def finish(self, job: str, scheduled_for: datetime, runner_id: str, *, status: str,
                     attempt: int, started_at: datetime | None, finished_at: datetime,
                     duration_ms: int | None, processed: int, affected: int,
                     before: Mapping[str, int], after: Mapping[str, int],
                     error_class: str | None, error_message: str | None,
                     progress: Mapping[str, Any] | None = None) -> bool:
        row = await self.fetchval(
            "finish_run", job, scheduled_for, status, attempt, started_at, finished_at,
            duration_ms, processed, affected, orjson.dumps(dict(before)).decode(),
            orjson.dumps(dict(after)).decode(), error_class, error_message, runner_id,
            orjson.dumps(dict(progress or {})).decode())
        return row is not None

    async def waiting_exists(self, job: str) -> bool:
        return bool(await self.fetchval("waiting_exists", job))

    async def sweep_abandoned(self, runner_id: str, now: datetime) -> list[dict[str, Any]]:
        """Fail every claimed slot whose holder's session is gone (crashed runner)."""
        return [dict(r) for r in await self.fetch("sweep_abandoned", runner_id, now)]

    async def runs(self, job: str) -> list[dict[str, Any]]:
        rows = [dict(r) for r in await self.fetch("job_runs", job)]
        for row in rows:
            for key in ("before", "after", "progress"):
                if isinstance(row[key], str):
                    row[key] = orjson.loads(row[key])
        return rows

    async def last_runs(self) -> dict[str, dict[str, Any]]:
        return {r["job"]: dict(r) for r in await self.fetch("last_runs")}

    # --- pause state -------------------------------------------------------------------

    async def job_state(self, job: str) -> tuple[bool, str | None, datetime | None]:
        row = await self.fetchrow("job_state", job)
        if row is None:
            return False, None, None
        return bool(row["paused"]), row["reason"], row["resume_from"]

    async def job_states(self) -> dict[str, dict[str, Any]]:
        return {r["job"]: dict(r) for r in await self.fetch("job_states")}

    async def pause(self, job: str, reason: str) -> None:
        await self.execute("pause_job", job, reason)

    async def resume(self, job: str, *, from_now: bool) -> datetime | None:
        """Unpause; returns the first deferred slot still to catch up (None with from_now)."""
        value = await self.fetchval("resume_job", job, from_now)
        return value if isinstance(value, datetime) else None

    async def defer(self, job: str, scheduled_for: datetime) -> None:
        await self.execute("defer_slot", job, scheduled_for)

    async def clear_resume_from(self, job: str) -> None:
        await self.execute("clear_resume_from", job)

    # --- DataStore (streams.jobs) --------------------------------------------------------

    async def archive_counts(self, cutoff: datetime) -> dict[str, int]:
        row = await self.fetchrow("archive_counts", cutoff)
        return {k: int(v) for k, v in dict(row).items()}

    async def archive_batch(self, cutoff: datetime, batch_size: int,
                            archived_at: datetime, tag: str | None = None) -> int:
        return int(await self.fetchval("archive_batch", cutoff, batch_size, archived_at, tag))

    async def archive_preview(self, cutoff: datetime) -> Touch:
        row = await self.fetchrow("archive_preview", cutoff)
        return Touch(int(row["rows"]), row["oldest"], row["newest"])

    async def purge_preview(self, cutoffs: Mapping[str, datetime]) -> dict[str, Touch]:
        row = await self.fetchrow("purge_preview", cutoffs["tasks_archive"],
                                  cutoffs["job_runs"], cutoffs["dead_letters"],
                                  cutoffs["outbox"])
        return {t: Touch(int(row[f"{t}_rows"]), row[f"{t}_oldest"], row[f"{t}_newest"])
                for t in ("tasks_archive", "job_runs", "dead_letters", "outbox")}

    async def undo_batch(self, tag: str, batch_size: int) -> int:
        return int(await self.fetchval("undo_batch", tag, batch_size))

    async def undo_preview(self, tag: str) -> Touch:
        row = await self.fetchrow("undo_preview", tag)
        return Touch(int(row["rows"]), row["oldest"], row["newest"], int(row["blocked"]))

    async def purge_counts(self, cutoffs: Mapping[str, datetime]) -> dict[str, int]:
        row = await self.fetchrow("purge_counts", cutoffs["tasks_archive"],
                                  cutoffs["job_runs"], cutoffs["dead_letters"],
                                  cutoffs["outbox"])
        return {k: int(v) for k, v in dict(row).items()}

    async def purge_batch(self, target: str, cutoff: datetime, batch_size: int) -> int:
        if target not in ("tasks_archive", "job_runs", "dead_letters", "outbox"):
            raise ValueError(f"unknown purge target {target!r}")
        return int(await self.fetchval(f"purge_{target}", cutoff, batch_size))

    # --- tasks: spawned instances, the outbox, snapshots -------------------------------

    async def insert_spawned(self, tasks: Sequence[SpawnedTask]) -> list[bool]:
        """Insert instances (and their outbox rows) in one transaction; True where new."""
        q = queries()["spawn_task"]
        out: list[bool] = []
        async with _translated(), self.pool.acquire() as conn, conn.transaction():
            for t in tasks:
                outbox_id = await conn.fetchval(
                    q, t.task_id, t.user_id, t.title, t.due_at, t.due_date, t.reminders_json,
                    t.series_id, t.occurrence_key, t.created_at, t.event_json)
                out.append(outbox_id is not None)
        return out

    async def outbox_pending_users(self, scan: int) -> list[str]:
        return [r["user_id"] for r in await self.fetch("outbox_pending_users", scan)]

    async def outbox_unpublished(self) -> int:
        return int(await self.fetchval("outbox_unpublished_count"))

    async def publish_outbox(self, user_id: str, limit: int,
                             publish: Callable[[list[OutboxRow]], Awaitable[None]],
                             clock: Callable[[], datetime]) -> int | None:
        """Publish a user's oldest unpublished rows with ``publish`` and mark them published.

        Holds the user's advisory lock for the transaction, so relays never interleave one
        user's rows; None if another relay holds it. Rows are marked only after ``publish``
        returned (the broker acknowledged them); if it raises, nothing is marked.
        """
        q = queries()
        async with _translated(), self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(q["try_outbox_lock"], outbox_lock_key(user_id)):
                return None
            # Read after the lock is held: a previous holder's marks are visible now.
            rows = [OutboxRow(r["outbox_id"], r["user_id"], r["event_type"], r["payload"])
                    for r in await conn.fetch(q["outbox_pending"], user_id, limit)]
            if not rows:
                return 0
            await publish(rows)
            await conn.execute(q["outbox_mark_published"], [r.outbox_id for r in rows], clock())
        return len(rows)

    async def listen(self, channel: str, on_notify: Callable[[], None]) -> Listener:
        """A dedicated connection calling ``on_notify`` for each notification on ``channel``."""
        def callback(*_: Any) -> None:
            on_notify()

        async with _translated():
            conn = await self.pool.acquire()
            try:
                await conn.add_listener(channel, callback)
            except BaseException:
                await self._release(conn)
                raise
        return Listener(self, conn, channel, callback)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Snapshot]:
        """One consistent, read-only view of the database for the ``with`` block."""
        async with _translated(), self.pool.acquire() as conn, conn.transaction(
                isolation="repeatable_read", readonly=True):
            yield Snapshot(conn)
