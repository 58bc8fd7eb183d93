"""The backends the store contract suites run against: the in-memory twins and PostgreSQL.

A ``Backend`` opens run stores (each on a pool of its own, so closing one plays a runner that
went away), a spawn store and an outbox store on one database, and sets up what a suite needs
in it. The ``backend`` fixture (conftest.py) yields a factory of each in turn; the PostgreSQL
one needs the real server and fails, never skips, without it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import asyncpg

from streams.postgres.connector import Connector
from streams.postgres.outbox import PgOutboxStore
from streams.postgres.runs import PgRunStore
from streams.postgres.spawns import PgSpawnStore
from streams.stores import OutboxStore, RunStore, SpawnStore
from streams.testing.stores import MemoryOutboxStore, MemoryRunStore, MemorySpawnStore
from tests.integration.jobdb import NOW

BackendFactory = Callable[[], Any]  # an async context manager yielding a Backend


class Backend:
    """Opens run stores (each on a pool of its own) and a spawn store on one database."""

    kind: str

    async def open(self) -> RunStore[Any]:
        raise NotImplementedError

    async def close(self, store: RunStore[Any]) -> None:
        """Close ``store``'s pool: its sessions end, and the locks they held."""
        raise NotImplementedError

    async def spawns(self) -> SpawnStore:
        raise NotImplementedError

    async def outbox(self) -> OutboxStore:
        """The relay's store; it sees the spawn store's outbox rows."""
        raise NotImplementedError

    async def add_outbox_row(self, user_id: str, payload: str) -> int:
        """A writer's committed outbox row (the Todo API's, in its own transaction)."""
        raise NotImplementedError

    async def unpublished(self) -> int:
        raise NotImplementedError

    async def outbox_rows(self) -> int:
        raise NotImplementedError

    async def archive_occurrence(self, series_id: str, occurrence_key: str) -> None:
        raise NotImplementedError

    async def seed_completed(self, count: int) -> None:
        """``count`` tasks completed 40 days and more before NOW."""
        raise NotImplementedError

    async def finish(self) -> None:
        pass


class MemoryBackend(Backend):
    kind = "memory"

    def __init__(self) -> None:
        self.root = MemoryRunStore()
        self.spawn_store = MemorySpawnStore()
        self.outbox_store = MemoryOutboxStore(rows=self.spawn_store.outbox)

    async def open(self) -> RunStore[Any]:
        return self.root.sibling()

    async def close(self, store: RunStore[Any]) -> None:
        assert isinstance(store, MemoryRunStore)
        await store.close()

    async def spawns(self) -> SpawnStore:
        return self.spawn_store

    async def outbox_rows(self) -> int:
        return len(self.spawn_store.outbox)

    async def outbox(self) -> OutboxStore:
        return self.outbox_store

    async def add_outbox_row(self, user_id: str, payload: str) -> int:
        return self.outbox_store.add(user_id, payload)

    async def unpublished(self) -> int:
        return await self.outbox_store.outbox_unpublished()

    async def archive_occurrence(self, series_id: str, occurrence_key: str) -> None:
        self.spawn_store.archived.add((series_id, occurrence_key))

    async def seed_completed(self, count: int) -> None:
        for i in range(1, count + 1):
            self.root.tasks[f"old-{i}"] = {
                "status": "completed", "completed_at": NOW - timedelta(days=40, seconds=i)}


class PostgresBackend(Backend):
    kind = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        self.connectors: list[Connector] = []

    async def _connect(self) -> Connector:
        db = await Connector.connect(self.url, max_size=4)
        self.connectors.append(db)
        return db

    async def open(self) -> RunStore[Any]:
        return PgRunStore(await self._connect())

    async def close(self, store: RunStore[Any]) -> None:
        assert isinstance(store, PgRunStore)
        store.db.pool.terminate()  # as when the process dies

    async def spawns(self) -> SpawnStore:
        return PgSpawnStore(await self._connect())

    async def _sql(self, query: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.url)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    async def outbox_rows(self) -> int:
        return int(await self._sql("SELECT count(*) FROM outbox"))

    async def outbox(self) -> OutboxStore:
        return PgOutboxStore(await self._connect())

    async def add_outbox_row(self, user_id: str, payload: str) -> int:
        return int(await self._sql("INSERT INTO outbox (user_id, event_type, payload) "
                                   "VALUES ($1, 'task.upserted', $2::jsonb) RETURNING outbox_id",
                                   user_id, payload))

    async def unpublished(self) -> int:
        return int(await self._sql("SELECT count(*) FROM outbox WHERE published_at IS NULL"))

    async def archive_occurrence(self, series_id: str, occurrence_key: str) -> None:
        await self._sql("INSERT INTO tasks_archive (task_id, user_id, version, title, status, "
                        "completed_at, reminders, series_id, occurrence_key, created_at, "
                        "updated_at, archived_at) VALUES ('archived-1', 'u1', 1, 't', "
                        "'completed', $3, '[]', $1, $2, $3, $3, $3)",
                        series_id, occurrence_key, NOW)

    async def seed_completed(self, count: int) -> None:
        await self._sql("INSERT INTO tasks (task_id, user_id, title, status, completed_at) "
                        "SELECT 'old-' || g, 'u1', 't', 'completed', "
                        "$1::timestamptz - interval '40 days' - g * interval '1 second' "
                        "FROM generate_series(1, $2::int) g", NOW, count)

    async def finish(self) -> None:
        for db in self.connectors:
            await db.close()


def make_backend(kind: str, url: str) -> BackendFactory:
    """A factory of fresh backends of ``kind`` ("memory" or "postgres" on ``url``)."""
    @asynccontextmanager
    async def make() -> AsyncIterator[Backend]:
        chosen: Backend = MemoryBackend() if kind == "memory" else PostgresBackend(url)
        try:
            yield chosen
        finally:
            await chosen.finish()
    return make


def run(backend: BackendFactory, scenario: Callable[[Backend], Awaitable[Any]]) -> Any:
    """Run ``scenario`` on a fresh backend in an event loop of its own."""
    async def go() -> Any:
        async with backend() as chosen:
            return await scenario(chosen)
    return asyncio.run(go())
