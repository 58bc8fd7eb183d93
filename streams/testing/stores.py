"""In-memory twins of the store ports (``streams.stores``) and of the kinds' ``DataStore``.

    MemoryDataStore   the built-in kinds' tables (tasks, archive, purge targets)
    MemoryRunStore    the job runner's ``RunStore``: job runs, pause state, job locks, on top
                      of MemoryDataStore; stores opened with ``sibling()`` share one database
    MemorySpawnStore  the spawn sink's ``SpawnStore``: instances and their outbox rows

They behave as the PostgreSQL adapters do where a caller can tell (claims ``ON CONFLICT DO
NOTHING``, lock exclusivity and waiting, sessions that end with their store, idempotent
replays, batches all or nothing, the tables' CHECK constraints);
tests/integration/test_store_contract.py runs one suite against both. A lock handle is a
session of the store that opened it: it stays alive (as a pooled connection does) until the
store is closed, which is how a test plays a runner that went away.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from streams.errors import DatabaseError
from streams.jobs.decisions import Touch
from streams.stores import Claim, OutboxRow, RunEnd, RunStore, SpawnedTask, SpawnStore

RUN_STATUSES = frozenset({"queued", "running", "partial", "succeeded", "failed", "skipped",
                          "missed"})
RUN_TRIGGERS = frozenset({"schedule", "manual", "backfill", "undo"})
ABANDONED = "the runner that claimed this slot went away before finishing it"


@dataclass
class MemoryDataStore:
    """The in-memory twin of ``DataStore``: tasks as dicts keyed by ``task_id``.

    ``tasks`` rows hold ``status`` and ``completed_at``; ``archive`` rows add
    ``archived_at``; ``job_runs``, ``dead_letters`` and ``outbox`` (published rows) hold the
    instant purge compares.
    """

    tasks: dict[str, dict[str, object]] = field(default_factory=dict)
    archive: dict[str, dict[str, object]] = field(default_factory=dict)
    job_runs: dict[str, datetime] = field(default_factory=dict)
    dead_letters: dict[str, datetime] = field(default_factory=dict)
    outbox: dict[str, datetime] = field(default_factory=dict)

    def _touch(self, instants: list[datetime], blocked: int = 0) -> Touch:
        return Touch(len(instants), min(instants, default=None), max(instants, default=None),
                     blocked)

    def _eligible(self, cutoff: datetime) -> list[str]:
        rows = [(t["completed_at"], k) for k, t in self.tasks.items()
                if t["status"] == "completed" and isinstance(t["completed_at"], datetime)
                and t["completed_at"] < cutoff]
        return [k for _, k in sorted(rows)]

    async def archive_counts(self, cutoff: datetime) -> dict[str, int]:
        return {"tasks": len(self.tasks), "eligible": len(self._eligible(cutoff)),
                "tasks_archive": len(self.archive)}

    async def archive_batch(self, cutoff: datetime, batch_size: int,
                            archived_at: datetime, tag: str | None = None) -> int:
        keys = self._eligible(cutoff)[:batch_size]
        for key in keys:
            self.archive[key] = {**self.tasks.pop(key), "archived_at": archived_at,
                                 "archive_run_id": tag}
        return len(keys)

    async def archive_preview(self, cutoff: datetime) -> Touch:
        return self._touch([_instant(self.tasks[k]["completed_at"])
                            for k in self._eligible(cutoff)])

    def _tagged(self, tag: str) -> tuple[list[str], list[str]]:
        """(movable, blocked) keys of rows archived by ``tag``, in task id order."""
        movable: list[str] = []
        blocked: list[str] = []
        for key in sorted(k for k, row in self.archive.items()
                          if row.get("archive_run_id") == tag):
            (blocked if key in self.tasks else movable).append(key)
        return movable, blocked

    async def undo_batch(self, tag: str, batch_size: int) -> int:
        keys = self._tagged(tag)[0][:batch_size]
        for key in keys:
            row = dict(self.archive.pop(key))
            row.pop("archived_at", None)
            row.pop("archive_run_id", None)
            self.tasks[key] = row
        return len(keys)

    async def undo_preview(self, tag: str) -> Touch:
        movable, blocked = self._tagged(tag)
        return self._touch([_instant(self.archive[k]["completed_at"])
                            for k in movable + blocked], len(blocked))

    async def purge_preview(self, cutoffs: Mapping[str, datetime]) -> dict[str, Touch]:
        out: dict[str, Touch] = {}
        for target, cutoff in cutoffs.items():
            table = self._table(target)
            instants = [_instant(self.archive[k]["archived_at"]) if target == "tasks_archive"
                        else _instant(table[k]) for k in self._expired(target, cutoff)]
            out[target] = self._touch(instants)
        return out

    def _expired(self, target: str, cutoff: datetime) -> list[str]:
        if target == "tasks_archive":
            return [k for k, row in self.archive.items()
                    if isinstance(row["archived_at"], datetime) and row["archived_at"] < cutoff]
        return [k for k, at in self._table(target).items()
                if isinstance(at, datetime) and at < cutoff]

    async def purge_counts(self, cutoffs: Mapping[str, datetime]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for target, cutoff in cutoffs.items():
            counts[target] = len(self._table(target))
            counts[f"{target}_expired"] = len(self._expired(target, cutoff))
        return counts

    async def purge_batch(self, target: str, cutoff: datetime, batch_size: int) -> int:
        keys = self._expired(target, cutoff)[:batch_size]
        table = self._table(target)
        for key in keys:
            del table[key]
        return len(keys)

    def _table(self, target: str) -> dict[str, object] | dict[str, datetime] | dict[
            str, dict[str, object]]:
        if target == "tasks_archive":
            return self.archive
        return {"job_runs": self.job_runs, "dead_letters": self.dead_letters,
                "outbox": self.outbox}[target]


def _instant(value: object) -> datetime:
    assert isinstance(value, datetime)
    return value


@dataclass(frozen=True, slots=True)
class MemoryLock:
    """A session of a ``MemoryRunStore``: what ``JobLock`` is to PostgreSQL."""

    session: int


@dataclass
class JobTables:
    """The job tables and lock table of one in-memory database."""

    runs: dict[tuple[str, datetime], dict[str, Any]] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    locks: dict[str, dict[int, bool]] = field(default_factory=dict)  # job → session → shared
    alive: set[int] = field(default_factory=set)
    sessions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    changed: asyncio.Condition | None = None  # made in the running loop, on first wait

    def condition(self) -> asyncio.Condition:
        if self.changed is None:
            self.changed = asyncio.Condition()
        return self.changed

    def free(self, job: str, session: int, *, shared: bool) -> bool:
        others = [s for holder, s in self.locks.get(job, {}).items() if holder != session]
        return all(others) if shared else not others

    async def notify(self) -> None:
        cond = self.condition()
        async with cond:
            cond.notify_all()


@dataclass
class MemoryRunStore(MemoryDataStore):
    """The in-memory twin of ``RunStore`` (and, through its base, of ``DataStore``)."""

    tables: JobTables = field(default_factory=JobTables)
    opened: set[int] = field(default_factory=set)  # the sessions this store opened

    def sibling(self) -> MemoryRunStore:
        """Another store (another process's pool) on the same database."""
        return MemoryRunStore(tasks=self.tasks, archive=self.archive, job_runs=self.job_runs,
                              dead_letters=self.dead_letters, outbox=self.outbox,
                              tables=self.tables)

    async def close(self) -> None:
        """Close the pool: its sessions end and their locks go with them."""
        for session in self.opened:
            self.tables.alive.discard(session)
            for holders in self.tables.locks.values():
                holders.pop(session, None)
        self.opened.clear()
        await self.tables.notify()

    # --- job locks --------------------------------------------------------------------

    async def waiting_connection(self) -> MemoryLock:
        session = next(self.tables.sessions)
        self.tables.alive.add(session)
        self.opened.add(session)
        return MemoryLock(session)

    async def job_lock(self, job: str, *, shared: bool, wait: bool) -> MemoryLock | None:
        lock = await self.waiting_connection()
        if wait or self.tables.free(job, lock.session, shared=shared):
            await self.wait_lock_on(lock, job, shared=shared)
            return lock
        return None

    async def wait_lock_on(self, lock: MemoryLock, job: str, *, shared: bool) -> None:
        cond = self.tables.condition()
        async with cond:
            await cond.wait_for(lambda: self.tables.free(job, lock.session, shared=shared))
        self.tables.locks.setdefault(job, {})[lock.session] = shared

    async def release(self, lock: MemoryLock | None) -> None:
        """Back to the pool: the session lives on, its locks do not."""
        if lock is None:
            return
        for holders in self.tables.locks.values():
            holders.pop(lock.session, None)
        await self.tables.notify()

    # --- slots and runs ---------------------------------------------------------------

    def _row(self, job: str, scheduled_for: datetime) -> dict[str, Any] | None:
        return self.tables.runs.get((job, scheduled_for))

    def _ours(self, job: str, scheduled_for: datetime, runner_id: str) -> dict[str, Any] | None:
        row = self._row(job, scheduled_for)
        if row is None or row["runner_id"] != runner_id or row["status"] not in (
                "queued", "running"):
            return None
        return row

    async def claim(self, claim: Claim, lock: MemoryLock | None, *,
                    finished_at: datetime | None = None) -> bool:
        _check(claim.status, claim.trigger)
        key = (claim.job, claim.scheduled_for)
        if key in self.tables.runs:
            return False
        self.tables.runs[key] = {
            "job": claim.job, "scheduled_for": claim.scheduled_for, "kind": claim.kind,
            "trigger": claim.trigger, "trigger_id": claim.trigger_id, "tick_at": claim.tick_at,
            "attempt": 0, "status": claim.status, "started_at": None,
            "finished_at": finished_at, "duration_ms": None, "processed": 0, "affected": 0,
            "before": {}, "after": {}, "error_class": None, "error_message": claim.note,
            "runner_id": claim.runner_id, "progress": {}, "undoes": claim.undoes,
            "session": None if lock is None else lock.session}
        return True

    async def start_attempt(self, job: str, scheduled_for: datetime, attempt: int,
                            started_at: datetime, lock: MemoryLock, runner_id: str) -> bool:
        row = self._ours(job, scheduled_for, runner_id)
        if row is None:
            return False
        row.update(status="running", attempt=attempt, session=lock.session,
                   started_at=row["started_at"] or started_at)
        return True

    async def finish(self, job: str, scheduled_for: datetime, runner_id: str,
                     end: RunEnd) -> bool:
        row = self._ours(job, scheduled_for, runner_id)
        if row is None:
            return False
        _check(end.status, row["trigger"])
        row.update(status=end.status, attempt=end.attempt,
                   started_at=row["started_at"] or end.started_at, finished_at=end.finished_at,
                   duration_ms=end.duration_ms, processed=end.processed, affected=end.affected,
                   before=dict(end.before), after=dict(end.after), error_class=end.error_class,
                   error_message=end.error_message, progress=dict(end.progress))
        return True

    def _take(self, row: dict[str, Any], runner_id: str, lock: MemoryLock) -> None:
        row.update(status="running", runner_id=runner_id, session=lock.session,
                   finished_at=None)

    async def partial_runs(self) -> list[dict[str, Any]]:
        rows = sorted((r for r in self.tables.runs.values() if r["status"] == "partial"),
                      key=lambda r: (r["scheduled_for"], r["job"]))
        return [_pick(r, "job", "scheduled_for", "kind", "trigger", "attempt") for r in rows]

    async def reclaim_partial(self, job: str, scheduled_for: datetime, runner_id: str,
                              lock: MemoryLock) -> dict[str, Any] | None:
        row = self._row(job, scheduled_for)
        if row is None or row["status"] != "partial":
            return None
        self._take(row, runner_id, lock)
        return _pick(row, "attempt", "processed", "affected", "before", "progress")

    async def reclaim_abandoned(self, job: str, scheduled_for: datetime, runner_id: str,
                                lock: MemoryLock) -> int | None:
        row = self._row(job, scheduled_for)
        if row is None or row["status"] != "failed" or row["error_class"] != "Abandoned":
            return None
        self._take(row, runner_id, lock)
        row.update(error_class=None, error_message=None)
        return int(row["attempt"])

    async def sweep_abandoned(self, runner_id: str, now: datetime) -> list[dict[str, Any]]:
        gone = sorted((r for r in self.tables.runs.values()
                       if r["status"] in ("queued", "running") and r["runner_id"] != runner_id
                       and r["session"] not in self.tables.alive),
                      key=lambda r: (r["scheduled_for"], r["job"]))
        for row in gone:
            row.update(status="failed", finished_at=now, error_class="Abandoned",
                       error_message=ABANDONED)
        return [_pick(r, "job", "scheduled_for", "kind", "trigger", "attempt") for r in gone]

    async def waiting_exists(self, job: str) -> bool:
        return any(r["job"] == job and r["status"] == "queued"
                   for r in self.tables.runs.values())

    async def run_row(self, job: str, scheduled_for: datetime) -> dict[str, Any] | None:
        row = self._row(job, scheduled_for)
        return None if row is None else _pick(
            row, "job", "scheduled_for", "kind", "trigger", "attempt", "status", "processed",
            "affected", "progress", "undoes")

    async def runs(self, job: str) -> list[dict[str, Any]]:
        rows = sorted((r for r in self.tables.runs.values() if r["job"] == job),
                      key=lambda r: r["scheduled_for"])
        return [{k: _copy(v) for k, v in r.items() if k != "session"} for r in rows]

    async def last_runs(self) -> dict[str, dict[str, Any]]:
        last: dict[str, dict[str, Any]] = {}
        for row in sorted(self.tables.runs.values(), key=lambda r: r["scheduled_for"]):
            last[row["job"]] = _pick(row, "job", "scheduled_for", "trigger", "status",
                                     "attempt", "finished_at")
        return last

    # --- pause state ------------------------------------------------------------------

    async def job_state(self, job: str) -> tuple[bool, str | None, datetime | None]:
        state = self.tables.states.get(job)
        if state is None:
            return False, None, None
        return bool(state["paused"]), state["reason"], state["resume_from"]

    async def job_states(self) -> dict[str, dict[str, Any]]:
        return {job: dict(self.tables.states[job]) for job in sorted(self.tables.states)}

    def _state(self, job: str) -> dict[str, Any]:
        return self.tables.states.setdefault(
            job, {"job": job, "paused": False, "reason": None, "resume_from": None})

    async def pause(self, job: str, reason: str) -> None:
        self._state(job).update(paused=True, reason=reason)

    async def resume(self, job: str, *, from_now: bool) -> datetime | None:
        state = self._state(job)
        state.update(paused=False, reason=None)
        if from_now:
            state["resume_from"] = None
        resume_from: datetime | None = state["resume_from"]
        return resume_from

    async def defer(self, job: str, scheduled_for: datetime) -> None:
        state = self.tables.states.get(job)
        if state is not None and state["paused"]:
            state["resume_from"] = min(state["resume_from"] or scheduled_for, scheduled_for)

    async def clear_resume_from(self, job: str) -> None:
        state = self.tables.states.get(job)
        if state is not None and not state["paused"]:
            state["resume_from"] = None


def _check(status: str, trigger: str) -> None:
    """The CHECK constraints of job_runs."""
    if status not in RUN_STATUSES or trigger not in RUN_TRIGGERS:
        raise DatabaseError(f"CheckViolationError (23514): job_runs status {status!r} or "
                            f"trigger {trigger!r}", "23514")


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


def _pick(row: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: _copy(row[k]) for k in keys}


@dataclass
class MemorySpawnStore:
    """The in-memory twin of ``SpawnStore``: instances by ``task_id``, their outbox rows."""

    tasks: dict[str, SpawnedTask] = field(default_factory=dict)
    # Occurrences whose instance was archived: they count as present, as in PostgreSQL.
    archived: set[tuple[str, str]] = field(default_factory=set)
    outbox: list[OutboxRow] = field(default_factory=list)

    async def insert_spawned(self, tasks: Sequence[SpawnedTask]) -> list[bool]:
        """All or nothing, as one transaction: a rejected row stores nothing of the batch."""
        present = {(t.series_id, t.occurrence_key) for t in self.tasks.values()} | self.archived
        staged: dict[str, SpawnedTask] = {}
        out: list[bool] = []
        for task in tasks:
            key = (task.series_id, task.occurrence_key)
            if key in present:  # ON CONFLICT (series_id, occurrence_key) DO NOTHING
                out.append(False)
                continue
            if task.task_id in self.tasks or task.task_id in staged:
                raise DatabaseError('UniqueViolationError (23505): duplicate key value '
                                    'violates unique constraint "tasks_pkey"', "23505")
            staged[task.task_id] = task
            present.add(key)
            out.append(True)
        first = len(self.outbox) + 1
        for outbox_id, task in enumerate(staged.values(), start=first):
            self.outbox.append(OutboxRow(outbox_id, task.user_id, "task.upserted",
                                         task.event_json))
        self.tasks.update(staged)
        return out


if TYPE_CHECKING:  # mypy proves the twins implement the ports
    _run_store: RunStore[MemoryLock] = MemoryRunStore()
    _spawn_store: SpawnStore = MemorySpawnStore()
