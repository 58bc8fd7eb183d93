"""PostgreSQL connector: the asyncpg pool, migrations, the schema wait, named queries and
error translation.

The stores (``runs``, ``spawns``, ``outbox``, ``tasks``) speak to PostgreSQL through a
``Connector``; each serves one client. SQL lives in ``queries.sql`` beside this module (named
blocks, ``$n`` parameters) and ``migrations/NNN_*.sql``; nothing here builds SQL from values.
Driver errors never leave this package: connection loss, refused connections, timeouts,
serialization failures, deadlocks and server shutdowns become ``DatabaseUnavailable``
(retriable); everything else becomes ``DatabaseError`` — both chained with ``from``.
Must not import the planning, runner, sink or relay modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cache
from importlib import resources
from typing import Any

import asyncpg

from streams.errors import DatabaseError, DatabaseUnavailable
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
async def translated() -> AsyncIterator[None]:
    try:
        yield
    except _DRIVER_ERRORS as exc:
        raise translate(exc) from exc


class Listener:
    """A pool connection LISTENing on a channel; ``alive`` is False once it is lost."""

    def __init__(self, db: Connector, conn: Any, channel: str,
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
        await self.db.release_connection(self.conn)


class SchemaBehind(DatabaseError):
    """The database lacks migrations this version needs: run ``cronorch migrate``."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"the database schema lacks {', '.join(missing)}: run `cronorch "
                         "migrate` (in the chart, the migrations hook Job does)", "schema")
        self.missing = missing


class Connector:
    """A pool plus named-query plumbing; build with ``await Connector.connect(url)``."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 1, max_size: int = 10,
                      timeout_s: float = 10, statement_timeout_ms: int = 0,
                      idle_in_transaction_timeout_ms: int = 0,
                      command_timeout_s: float | None = None) -> Connector:
        """A pool on ``url`` (TLS as its ``sslmode``/``sslrootcert`` say). Every connection
        gets the server-side statement and idle-in-transaction timeouts (0: none) and the
        client-side ``command_timeout_s``."""
        server_settings = {"statement_timeout": str(statement_timeout_ms),
                           "idle_in_transaction_session_timeout":
                               str(idle_in_transaction_timeout_ms)}
        async with translated():
            pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size,
                                             timeout=timeout_s, command_timeout=command_timeout_s,
                                             server_settings=server_settings)
        return cls(pool)

    @classmethod
    async def open(cls, settings: Settings, **pool: Any) -> Connector:
        """``connect`` with the URL and the timeouts of ``settings``."""
        return await cls.connect(
            settings.database_url.get_secret_value(),
            statement_timeout_ms=settings.pg_statement_timeout_ms,
            idle_in_transaction_timeout_ms=settings.pg_idle_in_transaction_timeout_ms,
            command_timeout_s=settings.pg_command_timeout_s or None, **pool)

    async def close(self) -> None:
        async with translated():
            await self.pool.close()

    # --- plumbing ----------------------------------------------------------------------

    async def fetch(self, name: str, *args: Any) -> list[Any]:
        async with translated():
            return list(await self.pool.fetch(queries()[name], *args))

    async def fetchrow(self, name: str, *args: Any) -> Any:
        async with translated():
            return await self.pool.fetchrow(queries()[name], *args)

    async def fetchval(self, name: str, *args: Any) -> Any:
        async with translated():
            return await self.pool.fetchval(queries()[name], *args)

    async def execute(self, name: str, *args: Any) -> str:
        async with translated():
            return str(await self.pool.execute(queries()[name], *args))

    # --- migrations --------------------------------------------------------------------

    async def missing_migrations(self) -> list[str]:
        """The migrations this version has that the database has not applied (names)."""
        q = queries()
        async with translated(), self.pool.acquire() as conn:
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
        async with translated(), self.pool.acquire() as conn:
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


    # --- dedicated connections ---------------------------------------------------------

    async def acquire(self) -> Any:
        """A pool connection of the caller's own (hand it back with ``release_connection``)."""
        async with translated():
            return await self.pool.acquire()

    async def release_connection(self, conn: Any) -> None:
        try:
            await self.pool.release(conn)
        except Exception:  # a dead connection is dropped by the pool; nothing to hand back
            with contextlib.suppress(Exception):
                conn.terminate()

    @asynccontextmanager
    async def transaction(self, **options: Any) -> AsyncIterator[Any]:
        """A pool connection inside one transaction for the ``with`` block."""
        async with translated(), self.pool.acquire() as conn, conn.transaction(**options):
            yield conn

    async def listen(self, channel: str, on_notify: Callable[[], None]) -> Listener:
        """A dedicated connection calling ``on_notify`` for each notification on ``channel``."""
        def callback(*_: Any) -> None:
            on_notify()

        conn = await self.acquire()
        try:
            async with translated():
                await conn.add_listener(channel, callback)
        except BaseException:
            await self.release_connection(conn)
            raise
        return Listener(self, conn, channel, callback)
