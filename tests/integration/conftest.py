"""PostgreSQL fixtures: a fresh database per test, migrated. A missing server fails the test
(the stack is started if it is down); nothing here ever skips."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from streams.cli import devstack
from streams.postgres.connector import Connector
from streams.settings import Settings
from tests.integration.backends import BackendFactory, make_backend


@pytest.fixture(scope="session")
def pg_stack() -> devstack.Stack:
    stack = devstack.Stack.from_env()
    devstack.start_postgres(stack)  # raises InfrastructureError → the test errors, never skips
    return stack


def _admin_url() -> str:
    return Settings.from_env().database_url.get_secret_value()


async def _create(name: str) -> str:
    admin = await asyncpg.connect(_admin_url())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _admin_url().rsplit("/", 1)[0] + f"/{name}"
    db = await Connector.connect(url)
    try:
        await db.migrate()
    finally:
        await db.close()
    return url


async def _drop(name: str) -> None:
    admin = await asyncpg.connect(_admin_url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def database(pg_stack: devstack.Stack) -> Iterator[str]:
    """The URL of a new, migrated database of this test only (dropped afterwards)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = asyncio.run(_create(name))
    yield url
    asyncio.run(_drop(name))


@pytest.fixture(params=["memory", "postgres"])
def backend(request: pytest.FixtureRequest) -> BackendFactory:
    """The store contract suites' backends: the in-memory twins, then PostgreSQL."""
    url = "" if request.param == "memory" else request.getfixturevalue("database")
    return make_backend(request.param, url)
