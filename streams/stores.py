"""The store ports: what the job runner, the spawn sink and the relay need from a database.

    RunStore[L]   the job runner: slot claims, job locks (opaque handles ``L``), the run
                  rows (``Claim`` in, ``RunEnd`` out), pause state, plus the
                  ``DataStore`` its kinds run against
    SpawnStore    the spawn sink: task instances and their outbox rows, idempotently
    OutboxStore   the relay: unpublished outbox rows per user, marked once published

Each port is a ``typing.Protocol`` with the values it exchanges (``Claim``, ``SpawnedTask``,
``OutboxRow``). ``streams.postgres`` implements them (``runs``, ``spawns``, ``outbox``);
``streams.testing.stores`` holds in-memory twins of the first two, and
tests/integration/test_store_contract.py runs one suite against twin and PostgreSQL.

Must not import a driver or read the clock: instants are passed in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol, TypeVar

from streams.jobs.decisions import DataStore

L = TypeVar("L")


@dataclass(frozen=True, slots=True)
class Claim:
    """A slot's row as the runner claims it (at most once ever per job and slot)."""

    job: str
    scheduled_for: datetime
    kind: str
    trigger: str
    trigger_id: str
    tick_at: datetime | None
    status: str  # 'running' | 'queued' | 'partial' | 'skipped' | 'missed'
    runner_id: str
    note: str | None = None
    undoes: str | None = None  # an undo run: the run it undoes
    record: bytes | None = None  # a slot decided at its claim: its run-log record, to publish


@dataclass(frozen=True, slots=True)
class RunEnd:
    """How an attempt of a claimed slot ended, as its row records it."""

    status: str  # 'succeeded' | 'failed' | 'partial'
    attempt: int
    started_at: datetime | None  # the first attempt's start: kept if the row has one
    finished_at: datetime
    duration_ms: int | None
    processed: int
    affected: int
    before: Mapping[str, int]
    after: Mapping[str, int]
    error_class: str | None
    error_message: str | None
    progress: Mapping[str, Any] = field(default_factory=dict)
    record: bytes | None = None  # the run-log record of this end, appended to the row's


class RunStore(DataStore, Protocol[L]):
    """The job runner's port. A lock handle ``L`` is a session: it holds (or waits for) one
    job's lock, and a claimed row remembers its session, so a row whose session is gone
    belongs to a runner that went away (``sweep_abandoned``)."""

    async def job_lock(self, job: str, *, shared: bool, wait: bool) -> L | None:
        """Take a job's lock on a session of its own; None if busy and not ``wait``."""

    async def waiting_connection(self) -> L:
        """A session whose identity a queued slot carries while it waits for the lock."""

    async def wait_lock_on(self, lock: L, job: str, *, shared: bool) -> None: ...

    async def release(self, lock: L | None) -> None:
        """End the session (and the lock it holds); None is a no-op."""

    async def claim(self, claim: Claim, lock: L | None, *,
                    finished_at: datetime | None = None) -> bool:
        """Insert the slot's row; False if the slot was claimed before (by anyone, ever)."""

    async def start_attempt(self, job: str, scheduled_for: datetime, attempt: int,
                            started_at: datetime, lock: L, runner_id: str) -> bool:
        """Mark the slot running for ``attempt``; False if it is no longer ours to run."""

    async def finish(self, job: str, scheduled_for: datetime, runner_id: str,
                     end: RunEnd) -> bool:
        """Record how the run ended; False if it was not ours (queued or running) any more."""

    async def partial_runs(self) -> list[dict[str, Any]]:
        """Runs waiting for their next window, oldest slot first."""

    async def reclaim_partial(self, job: str, scheduled_for: datetime, runner_id: str,
                              lock: L) -> dict[str, Any] | None:
        """Take a partial run to resume it on ``lock``'s session: its attempt, counts so far
        and progress; None if another runner took it first."""

    async def reclaim_abandoned(self, job: str, scheduled_for: datetime, runner_id: str,
                                lock: L) -> int | None:
        """Take over a slot failed as abandoned; the attempt it had reached, None if taken."""

    async def sweep_abandoned(self, runner_id: str, now: datetime,
                              record: Callable[[Mapping[str, Any]], bytes]
                              ) -> list[dict[str, Any]]:
        """Fail every queued or running slot of another runner whose session is gone, each
        with ``record(row)`` (its run-log record) stored in the same transaction."""

    async def stage_record(self, job: str, scheduled_for: datetime, runner_id: str,
                           record: bytes) -> bool:
        """Append a run-log record (a failed attempt about to be retried) to the slot's
        unpublished ones; False if the slot is not ours (queued or running) any more."""

    async def publish_records(self, publish: Callable[[list[bytes]], Awaitable[None]], *,
                              limit: int, job: str | None = None,
                              scheduled_for: datetime | None = None) -> int:
        """Hand the stored, unpublished run-log records (rows oldest end first, each row's
        in the order they were appended; of one slot if ``job`` is given) to ``publish`` and
        clear them once it returned, in one transaction; rows another runner is publishing
        are skipped. Returns how many were published;
        if ``publish`` raises, none is cleared."""

    async def waiting_exists(self, job: str) -> bool: ...

    async def run_row(self, job: str, scheduled_for: datetime) -> dict[str, Any] | None: ...

    async def runs(self, job: str) -> list[dict[str, Any]]: ...

    async def last_runs(self) -> dict[str, dict[str, Any]]: ...

    async def job_state(self, job: str) -> tuple[bool, str | None, datetime | None]:
        """(paused, reason, resume_from): the first slot deferred while paused."""

    async def job_states(self) -> dict[str, dict[str, Any]]: ...

    async def pause(self, job: str, reason: str) -> None: ...

    async def resume(self, job: str, *, from_now: bool) -> datetime | None:
        """Unpause; returns the first deferred slot still to catch up (None with from_now)."""

    async def defer(self, job: str, scheduled_for: datetime) -> None:
        """While paused: remember the earliest slot deferred."""

    async def clear_resume_from(self, job: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SpawnedTask:
    """A new task row from a spawn, with the JSON of its task.upserted outbox event."""

    task_id: str
    user_id: str
    title: str
    due_at: datetime | None
    due_date: date | None
    reminders_json: str
    series_id: str
    occurrence_key: str
    created_at: datetime
    event_json: str


class SpawnStore(Protocol):
    """The spawn sink's port."""

    async def insert_spawned(self, tasks: Sequence[SpawnedTask]) -> list[bool]:
        """Insert instances (each with its outbox row) all or nothing; True where new. An
        occurrence already present (or archived) changes nothing; a row the store rejects
        for good raises ``DatabaseError`` and nothing of the batch is stored."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    outbox_id: int
    user_id: str
    event_type: str
    payload: str  # the event's JSON text, published as is


class Listening(Protocol):
    """A wake-up subscription; ``alive`` is False once it is lost."""

    def alive(self) -> bool: ...

    async def close(self) -> None: ...


class OutboxStore(Protocol):
    """The relay's port."""

    async def outbox_pending_users(self, scan: int) -> list[str]:
        """The users of the oldest ``scan`` unpublished rows, oldest first."""

    async def publish_outbox(self, user_id: str, limit: int,
                             publish: Callable[[list[OutboxRow]], Awaitable[None]],
                             clock: Callable[[], datetime]) -> int | None:
        """Publish a user's oldest unpublished rows and mark them; None if another relay
        holds the user. Nothing is marked if ``publish`` raises."""

    async def listen(self, channel: str, on_notify: Callable[[], None]) -> Listening: ...
