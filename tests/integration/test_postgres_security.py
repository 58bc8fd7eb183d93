"""PostgreSQL TLS and timeouts against real servers.

A PostgreSQL of this module only serves TLS with a certificate from a CA made for the test
(streams.cli.devstack, openssl) and rejects plaintext TCP: ``sslmode=verify-full`` with that
CA connects over TLS; another CA, or no TLS, fails at once with a clear, non-retriable error.
The statement and idle-in-transaction timeouts reach every pooled connection.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from streams.cli import devstack
from streams.errors import DatabaseError
from streams.postgres.connector import Connector, SchemaBehind
from streams.settings import Settings
from tests.integration.conftest import database, pg_stack  # noqa: F401 - fixtures

pytestmark = [pytest.mark.postgres]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def tls_stack() -> Iterator[devstack.Stack]:
    base = devstack.Stack.from_env()
    # Not below pytest's tmp dirs: the postgres user must be able to reach the data folder.
    state = Path(f"/var/tmp/cronorch-pgtls-{uuid.uuid4().hex[:8]}")
    stack = devstack.Stack(state_dir=state, cache_dir=base.cache_dir, kafka_port=0,
                           controller_port=0, pg_port=_free_port(), pg_tls=True)
    devstack.start_postgres(stack)  # raises InfrastructureError → the test errors, never skips
    try:
        yield stack
    finally:
        devstack.stop_postgres(stack)
        shutil.rmtree(state, ignore_errors=True)


def _url(stack: devstack.Stack, query: str) -> str:
    return f"{stack.database_url}?{query}"


def test_verify_full_with_the_servers_ca_connects_over_tls(tls_stack: devstack.Stack) -> None:
    ca = tls_stack.pg_dir / "tls" / "ca.pem"

    async def check() -> tuple[bool, str]:
        db = await Connector.connect(_url(tls_stack, f"sslmode=verify-full&sslrootcert={ca}"))
        try:
            async with db.pool.acquire() as conn:
                encrypted = await conn.fetchval(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                version = await conn.fetchval(
                    "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return encrypted, version
        finally:
            await db.close()

    encrypted, version = asyncio.run(check())
    assert encrypted is True
    assert version.startswith("TLSv1.")


def test_a_certificate_from_another_ca_is_refused_and_not_retried(
        tls_stack: devstack.Stack, tmp_path: Path) -> None:
    other_ca = devstack.make_tls(tmp_path / "other")

    async def attempt() -> None:
        await Connector.connect(_url(tls_stack, f"sslmode=verify-full&sslrootcert={other_ca}"))

    with pytest.raises(DatabaseError, match="DATABASE_URL: the server's certificate is not "
                                            "trusted") as info:
        asyncio.run(attempt())
    assert not info.value.retriable


def test_plaintext_is_rejected_by_the_server(tls_stack: devstack.Stack) -> None:
    async def attempt() -> None:
        await Connector.connect(_url(tls_stack, "sslmode=disable"))

    with pytest.raises(DatabaseError, match="no encryption"):
        asyncio.run(attempt())


def test_settings_timeouts_reach_every_pooled_connection(database: str) -> None:  # noqa: F811
    settings = Settings().model_copy(update={
        "database_url": SecretStr(database),
        "pg_statement_timeout_ms": 300, "pg_idle_in_transaction_timeout_ms": 400,
        "pg_command_timeout_s": 5})

    async def check() -> list[tuple[str, str]]:
        db = await Connector.open(settings, min_size=3, max_size=3)
        try:
            seen = []
            conns = [await db.pool.acquire() for _ in range(3)]
            for conn in conns:
                seen.append((await conn.fetchval("SHOW statement_timeout"),
                             await conn.fetchval("SHOW idle_in_transaction_session_timeout")))
            for conn in conns:
                await db.pool.release(conn)
            return seen
        finally:
            await db.close()

    assert asyncio.run(check()) == [("300ms", "400ms")] * 3


def test_a_statement_past_its_timeout_is_cancelled(database: str) -> None:  # noqa: F811
    async def attempt() -> None:
        db = await Connector.connect(database, statement_timeout_ms=200)
        try:
            await db.pool.fetchval("SELECT pg_sleep(5)")  # raw: a test of the server setting
        finally:
            await db.close()

    with pytest.raises(Exception, match="statement timeout"):
        asyncio.run(attempt())


def test_a_session_idle_in_a_transaction_is_ended(database: str) -> None:  # noqa: F811
    async def attempt() -> None:
        db = await Connector.connect(database, idle_in_transaction_timeout_ms=200)
        try:
            async with db.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT 1")
                await asyncio.sleep(1.0)  # the server ends the session meanwhile
                await conn.execute("SELECT 1")
        finally:
            await db.close()

    with pytest.raises(Exception, match=r"idle-in-transaction|connection (was|is) closed"):
        asyncio.run(attempt())


def test_runtime_processes_wait_for_the_schema_instead_of_migrating(
        pg_stack: devstack.Stack) -> None:  # noqa: F811
    """Only `cronorch migrate` migrates; a process started first waits, then goes on."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin_url = Settings.from_env().database_url.get_secret_value()
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"

    async def scenario() -> tuple[list[str], str, list[str]]:
        admin = await asyncpg.connect(admin_url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            db = await Connector.connect(url)
            try:
                missing = await db.missing_migrations()
                with pytest.raises(SchemaBehind) as info:
                    await db.wait_for_schema(timeout_s=0.5, poll_s=0.1)
                waiting = asyncio.create_task(db.wait_for_schema(timeout_s=30, poll_s=0.1))
                await asyncio.sleep(0.3)
                assert not waiting.done()
                migrator = await Connector.connect(url)
                await migrator.migrate()
                await migrator.close()
                await asyncio.wait_for(waiting, 10)
                return missing, str(info.value), await db.missing_migrations()
            finally:
                await db.close()
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()

    missing, message, after = asyncio.run(scenario())
    assert missing and missing[0].startswith("001_")
    assert "run `cronorch migrate`" in message and missing[-1] in message
    assert after == []
