"""In-memory twins of the store ports (``streams.stores``).

    MemoryRunStore    the job runner's ``RunStore``: job runs, pause state, job locks, on top
                      of ``datastore.MemoryDataStore`` (the kinds' tables); stores opened
                      with ``sibling()`` share one database
    MemorySpawnStore  the spawn sink's ``SpawnStore``: instances and their outbox rows
    MemoryOutboxStore the relay's ``OutboxStore``: the outbox rows (a spawn store's, or
                      its own), published per user by one relay at a time, wake-ups

They behave as the PostgreSQL adapters do where a caller can tell (claims ``ON CONFLICT DO
NOTHING``, lock exclusivity and waiting, sessions that end with their store, idempotent
replays, batches all or nothing, the tables' CHECK constraints, a user's rows published by
one relay at a time and marked only once published); one contract suite per port
(tests/integration/test_*_store_contract.py) runs against twin and PostgreSQL. A lock handle is a
session of the store that opened it: it stays alive (as a pooled connection does) until the
store is closed, which is how a test plays a runner that went away.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from streams.errors import DatabaseError
from streams.stores import (
    Claim,
    OutboxRow,
    OutboxStore,
    RunEnd,
    RunStore,
    SpawnedTask,
    SpawnStore,
)
from streams.testing.datastore import MemoryDataStore

RUN_STATUSES = frozenset({"queued", "running", "partial", "succeeded", "failed", "skipped",
                          "missed"})
RUN_TRIGGERS = frozenset({"schedule", "manual", "backfill", "undo"})
ABANDONED = "the runner that claimed this slot went away before finishing it"


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
    publishing: set[int] = field(default_factory=set)  # rows whose record is being published
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
            "session": None if lock is None else lock.session,
            "records": None if claim.record is None else [claim.record]}
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
        if end.record is not None:
            _append(row, end.record)
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

    async def sweep_abandoned(self, runner_id: str, now: datetime,
                              record: Callable[[Mapping[str, Any]], bytes]
                              ) -> list[dict[str, Any]]:
        gone = sorted((r for r in self.tables.runs.values()
                       if r["status"] in ("queued", "running") and r["runner_id"] != runner_id
                       and r["session"] not in self.tables.alive),
                      key=lambda r: (r["scheduled_for"], r["job"]))
        picked = [_pick(r, "job", "scheduled_for", "kind", "trigger", "attempt") for r in gone]
        for row, seen in zip(gone, picked, strict=True):
            row.update(status="failed", finished_at=now, error_class="Abandoned",
                       error_message=ABANDONED)
            _append(row, record(seen))
        return picked

    async def stage_record(self, job: str, scheduled_for: datetime, runner_id: str,
                           record: bytes) -> bool:
        row = self._ours(job, scheduled_for, runner_id)
        if row is None:
            return False
        _append(row, record)
        return True

    async def publish_records(self, publish: Callable[[list[bytes]], Awaitable[None]], *,
                              limit: int, job: str | None = None,
                              scheduled_for: datetime | None = None) -> int:
        rows = sorted((r for r in self.tables.runs.values()
                       if r["records"] is not None and id(r) not in self.tables.publishing
                       and (job is None or (r["job"], r["scheduled_for"]) == (
                           job, scheduled_for))),
                      key=lambda r: (r["finished_at"] is not None,
                                     r["finished_at"] or r["scheduled_for"],
                                     r["scheduled_for"], r["job"]))[:limit]
        if not rows:
            return 0
        # Held while ``publish`` runs, as PostgreSQL's row locks are (SKIP LOCKED).
        self.tables.publishing.update(id(r) for r in rows)
        try:
            taken = [list(r["records"]) for r in rows]
            flat = [record for records in taken for record in records]
            await publish(flat)
            for row, records in zip(rows, taken, strict=True):
                # PostgreSQL's append waits for the row lock and lands after the clear.
                row["records"] = row["records"][len(records):] or None
        finally:
            self.tables.publishing.difference_update(id(r) for r in rows)
        return len(flat)

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
        return [{k: _copy(v) for k, v in r.items() if k not in ("session", "records")}
                for r in rows]

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


def _append(row: dict[str, Any], record: bytes) -> None:
    row["records"] = [*(row["records"] or ()), record]


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



class MemoryListener:
    """A wake-up subscription of a ``MemoryOutboxStore``."""

    def __init__(self, store: MemoryOutboxStore, on_notify: Callable[[], None]) -> None:
        self.store = store
        self.on_notify = on_notify
        self.open = True

    def alive(self) -> bool:
        return self.open

    async def close(self) -> None:
        self.open = False
        if self in self.store.listeners:
            self.store.listeners.remove(self)


@dataclass
class MemoryOutboxStore:
    """The in-memory twin of ``OutboxStore``; ``add`` is a writer's committed insert."""

    rows: list[OutboxRow] = field(default_factory=list)
    published: dict[int, datetime] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)  # users a relay is publishing right now
    listeners: list[MemoryListener] = field(default_factory=list)

    def add(self, user_id: str, payload: str, event_type: str = "task.upserted") -> int:
        outbox_id = len(self.rows) + 1
        self.rows.append(OutboxRow(outbox_id, user_id, event_type, payload))
        for listener in list(self.listeners):  # the NOTIFY at commit
            listener.on_notify()
        return outbox_id

    def _unpublished(self) -> list[OutboxRow]:
        return [r for r in self.rows if r.outbox_id not in self.published]

    async def outbox_pending_users(self, scan: int) -> list[str]:
        users: list[str] = []
        for row in self._unpublished()[:scan]:
            if row.user_id not in users:
                users.append(row.user_id)
        return users

    async def outbox_unpublished(self) -> int:
        return len(self._unpublished())

    async def publish_outbox(self, user_id: str, limit: int,
                             publish: Callable[[list[OutboxRow]], Awaitable[None]],
                             clock: Callable[[], datetime]) -> int | None:
        if user_id in self.busy:
            return None
        self.busy.add(user_id)
        try:
            rows = [r for r in self._unpublished() if r.user_id == user_id][:limit]
            if not rows:
                return 0
            await publish(rows)
            at = clock()
            self.published.update((r.outbox_id, at) for r in rows)
            return len(rows)
        finally:
            self.busy.discard(user_id)

    async def listen(self, channel: str, on_notify: Callable[[], None]) -> MemoryListener:
        listener = MemoryListener(self, on_notify)
        self.listeners.append(listener)
        return listener


if TYPE_CHECKING:  # mypy proves the twins implement the ports
    _run_store: RunStore[MemoryLock] = MemoryRunStore()
    _spawn_store: SpawnStore = MemorySpawnStore()
    _outbox_store: OutboxStore = MemoryOutboxStore()
