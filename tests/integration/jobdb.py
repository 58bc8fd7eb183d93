"""Shared by the integration tests of the job runner on PostgreSQL: the registry job they
run, set-based fixture data (completed and open tasks), and runners on stores of their own.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from schemas import JobRun
from streams.jobs import registry
from streams.postgres.connector import Connector
from streams.postgres.runs import PgRunStore
from streams.processes.runner import Runner

NOW = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)


def make_job(kind: str = "archive_completed", **overrides: Any) -> registry.Job:
    raw = {"name": "archive", "kind": kind,
           "schedule": "0 * * * *" if kind != "noop" else "* * * * *", **overrides}
    return registry.parse({"jobs": [raw]}).jobs[0]


async def seed(url: str, completed_old: int, completed_recent: int = 0, open_: int = 0) -> None:
    """Set-based fixture data: old completed, recently completed and open tasks."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("""
            INSERT INTO tasks (task_id, user_id, title, status, completed_at, due_at)
            SELECT 'old-' || g, 'u' || (g % 997), 'title ' || g, 'completed',
                   $1::timestamptz - (g % 300 + 31) * interval '1 day' - g * interval '1 second',
                   NULL
              FROM generate_series(1, $2::int) g""", NOW, completed_old)
        await conn.execute("""
            INSERT INTO tasks (task_id, user_id, title, status, completed_at)
            SELECT 'recent-' || g, 'u' || g, 't', 'completed', $1::timestamptz - interval '2 days'
              FROM generate_series(1, $2::int) g""", NOW, completed_recent)
        await conn.execute("""
            INSERT INTO tasks (task_id, user_id, title, status)
            SELECT 'open-' || g, 'u' || g, 't', 'open' FROM generate_series(1, $1::int) g""",
                           open_)
    finally:
        await conn.close()


async def ids(url: str) -> tuple[set[str], set[str]]:
    conn = await asyncpg.connect(url)
    try:
        tasks = {r[0] for r in await conn.fetch("SELECT task_id FROM tasks")}
        archive = {r[0] for r in await conn.fetch("SELECT task_id FROM tasks_archive")}
        dupes = await conn.fetchval(
            "SELECT count(*) FROM (SELECT task_id FROM tasks_archive GROUP BY task_id "
            "HAVING count(*) > 1) d")
        assert dupes == 0
        return tasks, archive
    finally:
        await conn.close()


async def run_store(url: str, **pool: Any) -> PgRunStore:
    """The job runner's store on a pool of its own (close with ``store.db.close()``)."""
    return PgRunStore(await Connector.connect(url, **pool))


def make_runner(reg: registry.Registry, db: PgRunStore, emitted: list[JobRun], *,
            seed: int = 1, runner_id: str | None = None) -> Runner:
    async def emit(run: JobRun) -> None:
        emitted.append(run)

    return Runner(reg, db, clock=lambda: datetime.now(UTC), rng=random.Random(seed), emit=emit,
                  runner_id=runner_id)


class WallClock:
    """The runner's clock, moved by the test and by the pacing between batches."""

    def __init__(self, at: datetime, pause_moves: timedelta) -> None:
        self.at = at
        self.pause_moves = pause_moves

    def __call__(self) -> datetime:
        return self.at

    async def sleep(self, _: float) -> None:
        self.at += self.pause_moves


def appender(into: list[JobRun]) -> Any:
    async def emit(run: JobRun) -> None:
        into.append(run)
    return emit
