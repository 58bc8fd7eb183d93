"""The ``DataStore`` contract, run against the in-memory twin and PostgreSQL: archive,
purge, undo and previews, batch by batch, stopping between batches and resuming."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from streams.jobs import decisions as jobs
from streams.testing.datastore import MemoryDataStore
from tests.integration.jobdb import (
    NOW,
    run_store,
    seed,
)

pytestmark = pytest.mark.postgres


# --- the DataStore contract, run against the twin and the real database ----------------------


@pytest.fixture(params=["memory", "postgres"])
def store_factory(request: pytest.FixtureRequest) -> Callable[[], Any]:
    if request.param == "memory":
        @asynccontextmanager
        async def memory() -> AsyncIterator[jobs.DataStore]:
            store = MemoryDataStore()
            for i in range(1, 51):
                store.tasks[f"old-{i}"] = {"status": "completed",
                                           "completed_at": NOW - timedelta(days=31 + i)}
            store.tasks["recent-1"] = {"status": "completed",
                                       "completed_at": NOW - timedelta(days=2)}
            store.tasks["open-1"] = {"status": "open", "completed_at": None}
            yield store
        return memory
    url = request.getfixturevalue("database")

    @asynccontextmanager
    async def real() -> AsyncIterator[jobs.DataStore]:
        await seed(url, 50, 1, 1)
        db = await run_store(url)
        try:
            yield db
        finally:
            await db.db.close()
    return real


def test_datastore_contract_archive(store_factory: Callable[[], Any]) -> None:
    async def go() -> tuple[jobs.Outcome, jobs.Outcome]:
        async with store_factory() as store:
            first = await jobs.archive_completed(store, NOW, 30, 20)
            second = await jobs.archive_completed(store, NOW, 30, 20)
            return first, second

    first, second = asyncio.run(go())
    assert (first.affected, first.batches) == (50, 3)
    assert first.before == {"tasks": 52, "eligible": 50, "tasks_archive": 0}
    assert first.after == {"tasks": 2, "eligible": 0, "tasks_archive": 50}
    assert second.affected == 0 and second.after == first.after


@pytest.mark.parametrize("kind", ["memory", "postgres"])
def test_datastore_contract_purge_outbox(kind: str, request: pytest.FixtureRequest) -> None:
    """Published outbox rows past retention go; younger and unpublished ones stay."""
    cutoffs = {t: NOW - timedelta(days=d) for t, d in
               {"tasks_archive": 365, "job_runs": 90, "dead_letters": 30, "outbox": 7}.items()}

    url = "" if kind == "memory" else request.getfixturevalue("database")

    async def go() -> jobs.Outcome:
        if kind == "memory":
            store = MemoryDataStore()
            store.outbox = {"1": NOW - timedelta(days=8), "2": NOW - timedelta(days=1)}
            return await jobs.purge_expired(store, cutoffs, 10)
        conn = await asyncpg.connect(url)
        try:
            await conn.executemany(
                "INSERT INTO outbox (user_id, event_type, payload, published_at) "
                "VALUES ('u', 'task.upserted', '{}', $1)",
                [(NOW - timedelta(days=8),), (NOW - timedelta(days=1),), (None,)])
        finally:
            await conn.close()
        db = await run_store(url)
        try:
            return await jobs.purge_expired(db, cutoffs, 10)
        finally:
            await db.db.close()

    outcome = asyncio.run(go())
    assert outcome.affected == 1
    assert (outcome.before["outbox_expired"], outcome.after["outbox_expired"]) == (1, 0)
    assert outcome.before["outbox"] - outcome.after["outbox"] == 1


def _stop_after(batches: int) -> jobs.Proceed:
    """A window that closes after ``batches`` batches."""
    asked = 0

    async def proceed() -> bool:
        nonlocal asked
        asked += 1
        return asked <= batches

    return proceed


def test_datastore_contract_archive_stops_between_batches_and_resumes(
        store_factory: Callable[[], Any]) -> None:
    async def go() -> tuple[jobs.Outcome, jobs.Outcome, jobs.Touch]:
        async with store_factory() as store:
            first = await jobs.archive_completed(store, NOW, 30, 20, tag="a@1",
                                                 proceed=_stop_after(1))
            rest = await jobs.archive_completed(store, NOW, 30, 20, tag="a@1")
            return first, rest, await store.undo_preview("a@1")

    first, rest, tagged = asyncio.run(go())
    assert first.stopped and (first.affected, first.batches) == (20, 1)
    oldest_left = NOW - timedelta(days=31 + 30)  # the 30 youngest of old-1..50 are left
    assert first.progress["stopped_at"] == "tasks" and first.progress["rows_left"] == 30
    assert first.progress["next_completed_at"] is not None
    assert datetime.fromisoformat(str(first.progress["next_completed_at"])) <= oldest_left + \
        timedelta(days=1)
    assert not rest.stopped and rest.affected == 30
    assert tagged.rows == 50 and tagged.blocked == 0


def test_datastore_contract_previews_touch_nothing(store_factory: Callable[[], Any]) -> None:
    cutoffs = {t: NOW - timedelta(days=d) for t, d in
               {"tasks_archive": 365, "job_runs": 90, "dead_letters": 30, "outbox": 7}.items()}

    async def go() -> tuple[jobs.Touch, jobs.Touch, dict[str, jobs.Touch], dict[str, int]]:
        async with store_factory() as store:
            archive = await store.archive_preview(NOW - timedelta(days=30))
            none = await store.archive_preview(NOW - timedelta(days=3650))
            purge = await store.purge_preview(cutoffs)
            return archive, none, purge, await store.archive_counts(NOW - timedelta(days=30))

    archive, none, purge, counts = asyncio.run(go())
    assert archive.rows == 50
    assert archive.newest is not None and archive.newest <= NOW - timedelta(days=32)
    assert archive.oldest is not None and archive.oldest <= NOW - timedelta(days=81)
    assert none == jobs.Touch(0, None, None)
    assert {t: p.rows for t, p in purge.items()} == dict.fromkeys(cutoffs, 0)
    assert counts["eligible"] == 50  # nothing moved


def test_datastore_contract_undo_moves_back_once(store_factory: Callable[[], Any]) -> None:
    async def go() -> tuple[jobs.Outcome, jobs.Outcome, jobs.Outcome, dict[str, int]]:
        async with store_factory() as store:
            await jobs.archive_completed(store, NOW, 30, 20, tag="a@1")
            await jobs.archive_completed(store, NOW + timedelta(days=60), 30, 20, tag="a@2")
            first = await jobs.undo_archive(store, "a@1", 15)
            second = await jobs.undo_archive(store, "a@1", 15)
            other = await jobs.undo_archive(store, "a@404", 15)
            return first, second, other, await store.archive_counts(NOW)

    first, second, other, counts = asyncio.run(go())
    # a@1 archived the 50 old tasks; a@2 (60 days later) the recent one.
    assert first.before == {"archived_by_run": 50, "blocked": 0}
    assert (first.affected, first.batches) == (50, 4)
    assert first.after == {"archived_by_run": 0, "blocked": 0}
    assert second.affected == 0 and other.affected == 0
    assert counts["tasks_archive"] == 1 and counts["tasks"] == 51


@pytest.mark.parametrize("kind", ["memory", "postgres"])
def test_datastore_contract_undo_pages_past_blocked_rows(kind: str,
                                                          request: pytest.FixtureRequest) -> None:
    """Rows whose task id is in tasks again stay archived; the undo pages past them (keyset
    on the task id), so every movable row goes back, and a second undo reads only them."""
    url = "" if kind == "memory" else request.getfixturevalue("database")
    back = ["old-2", "old-17", "old-33"]

    async def reopen(store: Any) -> None:
        if isinstance(store, MemoryDataStore):
            for key in back:
                store.tasks[key] = {"status": "open", "completed_at": None}
            return
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("INSERT INTO tasks (task_id, user_id, title, status) "
                               "SELECT unnest($1::text[]), 'u', 't', 'open'", back)
        finally:
            await conn.close()

    async def go() -> tuple[jobs.Outcome, jobs.Outcome]:
        if kind == "memory":
            store: Any = MemoryDataStore()
            for i in range(1, 51):
                store.tasks[f"old-{i}"] = {"status": "completed",
                                           "completed_at": NOW - timedelta(days=31 + i)}
        else:
            await seed(url, 50)
            store = await run_store(url)
        try:
            await jobs.archive_completed(store, NOW, 30, 50, tag="a@1")
            await reopen(store)
            return (await jobs.undo_archive(store, "a@1", 10),
                    await jobs.undo_archive(store, "a@1", 10))
        finally:
            if not isinstance(store, MemoryDataStore):
                await store.db.close()

    first, second = asyncio.run(go())
    assert first.before == {"archived_by_run": 50, "blocked": 3}
    assert (first.affected, first.batches) == (47, 6)  # five full pages, then an empty one
    assert first.after == {"archived_by_run": 3, "blocked": 3}
    assert (second.affected, second.batches) == (0, 1)
    assert second.after == first.after


def test_datastore_contract_purge_stops_and_skips_finished_targets(
        store_factory: Callable[[], Any]) -> None:
    cutoffs = {t: NOW + timedelta(days=1) for t in jobs.PURGE_TARGETS}

    async def go() -> tuple[jobs.Outcome, jobs.Outcome]:
        async with store_factory() as store:
            await jobs.archive_completed(store, NOW, 30, 100, tag="a@1")
            first = await jobs.purge_expired(store, cutoffs, 20, proceed=_stop_after(2))
            rest = await jobs.purge_expired(
                store, cutoffs, 20, done=list(first.progress.get("done_targets", [])))
            return first, rest

    first, rest = asyncio.run(go())
    assert first.stopped and first.affected == 40
    assert first.progress == {"stopped_at": "tasks_archive", "done_targets": []}
    assert not rest.stopped and rest.after["tasks_archive"] == 0
