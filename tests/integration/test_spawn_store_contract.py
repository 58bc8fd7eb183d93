"""The ``SpawnStore`` contract, one suite run against the in-memory twin and PostgreSQL.

Proves ``streams.testing.stores.MemorySpawnStore`` behaves as ``streams.postgres.spawns``
where the spawn sink can tell: a replayed batch changes nothing, an archived occurrence
counts as present, and a batch the store rejects stores nothing (one transaction).
"""

from __future__ import annotations

from datetime import date

import pytest

from streams.errors import DatabaseError
from streams.stores import SpawnedTask
from tests.integration.backends import Backend, BackendFactory, run
from tests.integration.jobdb import NOW

pytestmark = pytest.mark.postgres


def _spawned(n: int, *, task_id: str | None = None, series_id: str = "series") -> SpawnedTask:
    day = date(2026, 3, n)
    return SpawnedTask(task_id=task_id or f"task-{series_id}-{n}", user_id="u1",
                       title=f"t{n}", due_at=None, due_date=day, reminders_json="[]",
                       series_id=series_id, occurrence_key=day.isoformat(), created_at=NOW,
                       event_json='{"type": "task.upserted"}')


def test_a_replayed_spawn_batch_changes_nothing(backend: BackendFactory) -> None:
    async def scenario(b: Backend) -> None:
        store = await b.spawns()
        batch = [_spawned(1), _spawned(2), _spawned(1)]
        assert await store.insert_spawned(batch) == [True, True, False]
        assert await store.insert_spawned(batch) == [False, False, False]
        assert await b.outbox_rows() == 2
        # Another id for an occurrence already spawned is a duplicate too.
        assert await store.insert_spawned([_spawned(2, task_id="other")]) == [False]
        assert await b.outbox_rows() == 2

    run(backend, scenario)


def test_an_archived_occurrence_counts_as_present(backend: BackendFactory) -> None:
    async def scenario(b: Backend) -> None:
        await b.archive_occurrence("series", _spawned(3).occurrence_key)
        store = await b.spawns()
        assert await store.insert_spawned([_spawned(3), _spawned(4)]) == [False, True]
        assert await b.outbox_rows() == 1

    run(backend, scenario)


def test_a_rejected_spawn_batch_stores_nothing(backend: BackendFactory) -> None:
    async def scenario(b: Backend) -> None:
        store = await b.spawns()
        assert await store.insert_spawned([_spawned(1)]) == [True]
        clash = _spawned(2, task_id=_spawned(1).task_id)  # same id, another occurrence
        with pytest.raises(DatabaseError) as info:
            await store.insert_spawned([_spawned(5), clash])
        assert info.value.sqlstate == "23505"
        assert await b.outbox_rows() == 1
        assert await store.insert_spawned([_spawned(5)]) == [True]  # it was rolled back

    run(backend, scenario)
