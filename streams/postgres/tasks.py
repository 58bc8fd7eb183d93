"""The bootstrap's store on PostgreSQL: read-only snapshots of the Todo tables.

``snapshot()`` opens one REPEATABLE READ, read-only transaction; inside it ``Snapshot`` runs
the ``snapshot_*`` named queries, large ones through a server-side cursor, so every chunk
comes from the same instant of the database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from streams.postgres.connector import Connector, queries, translated


class Snapshot:
    """Named queries inside one REPEATABLE READ, read-only transaction."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def fetchrow(self, name: str, *args: Any) -> dict[str, Any]:
        async with translated():
            return dict(await self.conn.fetchrow(queries()[name], *args))

    async def chunks(self, name: str, size: int,
                     *args: Any) -> AsyncIterator[list[dict[str, Any]]]:
        """The query's rows through a server-side cursor, ``size`` at a time."""
        async with translated():
            cursor = await self.conn.cursor(queries()[name], *args)
        while True:
            async with translated():
                rows = await cursor.fetch(size)
            if not rows:
                return
            yield [dict(r) for r in rows]


class PgTaskStore:
    """Consistent read-only views of the tasks and user settings (``cronorch bootstrap``)."""

    def __init__(self, db: Connector) -> None:
        self.db = db

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Snapshot]:
        """One consistent, read-only view of the database for the ``with`` block."""
        async with self.db.transaction(isolation="repeatable_read", readonly=True) as conn:
            yield Snapshot(conn)
