"""The spawn sink's store on PostgreSQL: spawned task instances with their outbox rows.

Implements ``streams.stores.SpawnStore``: one transaction per batch; ``spawn_task`` inserts
the row with ``ON CONFLICT (series_id, occurrence_key) DO NOTHING`` (an occurrence archived
since counts as present) and writes the task.upserted outbox row only when the row is new.
"""

from __future__ import annotations

from collections.abc import Sequence

from streams.postgres.connector import Connector, queries
from streams.stores import SpawnedTask


class PgSpawnStore:
    """The spawn sink's ``SpawnStore`` on a ``Connector``."""

    def __init__(self, db: Connector) -> None:
        self.db = db

    async def insert_spawned(self, tasks: Sequence[SpawnedTask]) -> list[bool]:
        """Insert instances (and their outbox rows) in one transaction; True where new."""
        q = queries()["spawn_task"]
        out: list[bool] = []
        async with self.db.transaction() as conn:
            for t in tasks:
                outbox_id = await conn.fetchval(
                    q, t.task_id, t.user_id, t.title, t.due_at, t.due_date, t.reminders_json,
                    t.series_id, t.occurrence_key, t.created_at, t.event_json)
                out.append(outbox_id is not None)
        return out
