"""Maintenance jobs: the pure decisions, and the built-in kinds written against a port.

Owns
- which slots of a job a tick makes due (those after the previous tick), and what
  happens to each (on time within the tick grid, late within the catch-up window, missed
  beyond it; coalesce ``latest | earliest | all``): ``slots_due``;
- what a slot does when its job is still running (overlap ``skip | buffer_one | allow``):
  ``overlap_action``;
- whether and how long to wait before another attempt (exponential backoff with full
  jitter, cap, retriable errors only): ``retry_decision``;
- deterministic ids for triggers and runs;
- the built-in kinds (``archive_completed``, ``purge_expired``, ``noop``) as orchestration
  of batches over the ``DataStore`` port; ``streams.testing.stores.MemoryDataStore`` is its
  in-memory twin and ``streams.postgres.runs.PgRunStore`` the real one (one contract suite
  runs against both);
- stopping between batches when the caller says so (a run window closing: ``Proceed``),
  what a stopped run records (``Outcome.progress``) and how the next window resumes it;
- undoing an archive run (``undo_archive``, rows tagged with ``archive_tag``) and what a run
  or an undo would touch (``preview``, ``undo_preview``) without touching it.

Must not read the clock or draw randomness of its own (time and a ``random.Random`` are
passed in), and must not import a driver: IO happens behind the port.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from streams.errors import InvalidInput, TransientError
from streams.jobs.model import Coalesce, Job, Overlap, Retries
from streams.retry import Backoff
from streams.timecore.instants import format_instant, parse_instant

MAX_SLOTS = 1000  # slots enumerated per decision; a longer gap is reported as a count


class Disposition(StrEnum):
    RUN = "run"
    COALESCED = "coalesced"  # due at once with another slot that runs instead (status skipped)
    MISSED = "missed"  # older than the catch-up window when it became due


@dataclass(frozen=True, slots=True)
class SlotDecision:
    scheduled_for: datetime
    disposition: Disposition
    late_s: float  # the deciding tick minus the slot
    late: bool = False  # later than one tick grid step: the ticks had a gap before it


@dataclass(frozen=True, slots=True)
class DueSlots:
    """The slots of one job that became due in ``(after, until]``, oldest first."""

    slots: tuple[SlotDecision, ...]
    uncounted_missed: int = 0  # slots beyond ``MAX_SLOTS`` that were not enumerated
    following: datetime | None = None  # the first slot after ``until``: the next to decide

    @property
    def to_run(self) -> list[datetime]:
        return [s.scheduled_for for s in self.slots if s.disposition is Disposition.RUN]


def slots_due(job: Job, after: datetime, until: datetime, grid_s: float = 0.0) -> DueSlots:
    """Decide the slots in ``(after, until]`` at tick ``until``, ``after`` being the tick
    before it.

    Called once per tick, so every slot S is decided at the first tick T ≥ S, and the
    decision is a function of the tick log alone. S is late by ``T - S``: on time up to
    ``grid_s`` (the tick grid: a slot between two grid ticks waits for the next one), late
    up to ``catchup_window_s``, missed beyond both. Of the slots that are not missed,
    ``coalesce`` picks the latest, the earliest or all; the others are coalesced away.
    Without a gap in the ticks a tick makes at most the slots of one grid step due, all on
    time.
    """
    window = timedelta(seconds=max(job.catchup_window_s, grid_s))
    fires: list[datetime] = []
    uncounted = 0
    following = None
    for fire in job.fires(after):
        if fire > until:
            following = fire
            break
        if len(fires) == MAX_SLOTS:
            # Keep the newest MAX_SLOTS: the candidates are at the end.
            fires.pop(0)
            uncounted += 1
        fires.append(fire)
    candidates = [f for f in fires if until - f <= window]
    if job.coalesce is Coalesce.LATEST:
        chosen = set(candidates[-1:])
    elif job.coalesce is Coalesce.EARLIEST:
        chosen = set(candidates[:1])
    else:
        chosen = set(candidates)
    decisions = []
    for fire in fires:
        late_s = (until - fire).total_seconds()
        if fire in chosen:
            disposition = Disposition.RUN
        elif until - fire <= window:
            disposition = Disposition.COALESCED
        else:
            disposition = Disposition.MISSED
        decisions.append(SlotDecision(fire, disposition, late_s, late_s > grid_s))
    return DueSlots(tuple(decisions), uncounted, following)


class OverlapAction(StrEnum):
    RUN = "run"  # the job is idle (or overlap allows concurrency): run now
    WAIT = "wait"  # buffer_one: run when the current run ends
    SKIP = "skip"  # record the slot as skipped


def overlap_action(policy: Overlap, *, running: bool, waiting: bool) -> OverlapAction:
    """What a new slot does, given whether a run of its job is going and one is waiting."""
    if policy is Overlap.ALLOW or not running:
        return OverlapAction.RUN
    if policy is Overlap.BUFFER_ONE and not waiting:
        return OverlapAction.WAIT
    return OverlapAction.SKIP


@dataclass(frozen=True, slots=True)
class RetryDecision:
    retry: bool
    delay_s: float = 0.0
    reason: str = ""


def backoff(retries: Retries) -> Backoff:
    """The job's retry policy as the one backoff (exponential, full jitter)."""
    return Backoff(base_s=retries.base_delay_s, cap_s=retries.max_delay_s)


def backoff_cap_s(retries: Retries, attempt: int) -> float:
    """The upper bound of the wait after failed attempt ``attempt`` (1-based)."""
    return backoff(retries).bound_s(attempt)


def retry_decision(retries: Retries, attempt: int, *, retriable: bool,
                   rng: random.Random) -> RetryDecision:
    """After failed attempt ``attempt``: retry after uniform(0, cap) seconds (full jitter)?"""
    if not retriable:
        return RetryDecision(False, reason="not retriable")
    if attempt >= retries.max_attempts:
        return RetryDecision(False, reason=f"attempts exhausted ({retries.max_attempts})")
    return RetryDecision(True, backoff(retries).delay_s(attempt, rng))


def z(at: datetime) -> str:
    """An instant as RFC 3339 UTC with ``Z`` (ids, logs)."""
    return format_instant(at)


def trigger_id(job: str, scheduled_for: datetime, trigger: str = "schedule") -> str:
    """The same slot always gets the same id (duplicates are recognisable downstream)."""
    base = f"{job}@{z(scheduled_for)}"
    return base if trigger == "schedule" else f"{base}/{trigger}"


def run_id(job: str, scheduled_for: datetime, attempt: int) -> str:
    return f"{job}@{z(scheduled_for)}#{attempt}"


def archive_tag(job: str, scheduled_for: datetime) -> str:
    """The id every row an archive run moves carries: the slot, across its attempts and
    windows (``job@scheduled_for``, the run id without ``#attempt``)."""
    return f"{job}@{z(scheduled_for)}"


def parse_run_id(text: str) -> tuple[str, datetime]:
    """``job@scheduled_for`` or ``job@scheduled_for#attempt`` → (job, scheduled_for);
    ValueError naming what is wrong."""
    job, at, rest = text.partition("@")
    if not at or not job:
        raise ValueError(f"run id {text!r} is not job@scheduled_for[#attempt]")
    instant = rest.split("#", 1)[0]
    try:
        return job, parse_instant(instant)
    except InvalidInput as exc:
        raise ValueError(f"run id {text!r}: {exc}") from None


# --- built-in kinds --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Touch:
    """What a run would touch in one table: how many rows, the oldest and newest of them
    (by the instant the job compares); ``blocked``: rows an undo cannot move back."""

    rows: int
    oldest: datetime | None
    newest: datetime | None
    blocked: int = 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows,
                               "oldest": None if self.oldest is None else z(self.oldest),
                               "newest": None if self.newest is None else z(self.newest)}
        if self.blocked:
            out["blocked"] = self.blocked
        return out


class DataStore(Protocol):
    """What the built-in kinds need from the database. Each batch is one transaction."""

    async def archive_counts(self, cutoff: datetime) -> dict[str, int]: ...

    async def archive_batch(self, cutoff: datetime, batch_size: int,
                            archived_at: datetime, tag: str | None = None) -> int: ...

    async def archive_preview(self, cutoff: datetime) -> Touch: ...

    async def purge_counts(self, cutoffs: Mapping[str, datetime]) -> dict[str, int]: ...

    async def purge_batch(self, target: str, cutoff: datetime, batch_size: int) -> int: ...

    async def purge_preview(self, cutoffs: Mapping[str, datetime]) -> dict[str, Touch]: ...

    async def undo_batch(self, tag: str, batch_size: int, after: str) -> tuple[int, str | None]:
        """Move back the movable rows among the next ``batch_size`` rows of run ``tag``
        after task id ``after``: (rows moved, the task id to go on after, or None when that
        page was the run's last)."""
        ...

    async def undo_preview(self, tag: str) -> Touch: ...


PURGE_TARGETS = {  # target → the param holding its retention in days
    "tasks_archive": "archive_retention_days",
    "job_runs": "job_runs_retention_days",
    "dead_letters": "dead_letters_retention_days",
    "outbox": "outbox_retention_days",  # published rows only: unpublished ones are never purged
}


@dataclass(slots=True)
class Outcome:
    processed: int = 0
    affected: int = 0
    batches: int = 0
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    stopped: bool = False  # stopped between batches (the window closed): to be resumed
    progress: dict[str, Any] = field(default_factory=dict)  # where it stopped, what is done


Sleep = Callable[[float], Awaitable[None]]
Proceed = Callable[[], Awaitable[bool]]  # before each batch: False stops the run there


async def _always() -> bool:
    return True


def cutoffs_of(job: Job, scheduled_for: datetime) -> dict[str, datetime]:
    """The instant each target of a purge compares against, relative to the slot."""
    return {t: scheduled_for - timedelta(days=int(job.params[p]))
            for t, p in PURGE_TARGETS.items()}


async def run_kind(job: Job, store: DataStore, scheduled_for: datetime, attempt: int,
                   sleep: Sleep, *, proceed: Proceed = _always,
                   progress: Mapping[str, Any] | None = None) -> Outcome:
    """Run one attempt of ``job`` for its slot ``scheduled_for`` (the slot is "now").

    ``proceed`` is asked before every batch; when it says no the outcome is ``stopped`` with
    ``progress`` saying where. ``progress`` from a stopped run resumes it (a purge skips the
    targets it finished; an archive's cutoff is the slot's, so it picks up the rest).
    """
    if job.kind == "archive_completed":
        return await archive_completed(store, scheduled_for, int(job.params["older_than_days"]),
                                       int(job.params["batch_size"]),
                                       tag=archive_tag(job.name, scheduled_for), proceed=proceed)
    if job.kind == "purge_expired":
        done = (progress or {}).get("done_targets", [])
        return await purge_expired(store, cutoffs_of(job, scheduled_for),
                                   int(job.params["batch_size"]), proceed=proceed,
                                   done=[str(t) for t in done] if isinstance(done, list) else [])
    if job.kind == "noop":
        await sleep(float(job.params["sleep_s"]))
        if attempt <= int(job.params["fail_attempts"]):
            raise TransientError(f"noop drill: attempt {attempt} fails on purpose")
        return Outcome()
    raise AssertionError(job.kind)  # the registry admits only known kinds


async def archive_completed(store: DataStore, now: datetime, older_than_days: int,
                            batch_size: int, *, tag: str | None = None,
                            proceed: Proceed = _always) -> Outcome:
    """Move tasks completed before ``now - older_than_days`` into the archive, batch by batch,
    each row tagged with ``tag`` (the run, for ``undo_archive``).

    Re-running is a no-op once nothing is eligible; a batch interrupted by a failure rolls
    back whole, so a retry continues where the last committed batch ended. Stopped by
    ``proceed``, the progress says the oldest row left (where the next window resumes).
    """
    cutoff = now - timedelta(days=older_than_days)
    outcome = Outcome(before=await store.archive_counts(cutoff))
    while True:
        if not await proceed():
            left = await store.archive_preview(cutoff)
            outcome.stopped = True
            outcome.progress = {"stopped_at": "tasks", "rows_left": left.rows,
                                "next_completed_at": None if left.oldest is None
                                else z(left.oldest)}
            break
        moved = await store.archive_batch(cutoff, batch_size, now, tag)
        outcome.batches += 1
        outcome.processed += moved
        outcome.affected += moved
        if moved < batch_size:
            break
    outcome.after = await store.archive_counts(cutoff)
    return outcome


async def purge_expired(store: DataStore, cutoffs: Mapping[str, datetime],
                        batch_size: int, *, proceed: Proceed = _always,
                        done: list[str] | None = None) -> Outcome:
    """Delete what is past its retention from each target, batch by batch; the targets in
    ``done`` (finished in an earlier window) are skipped."""
    finished = list(done or [])
    outcome = Outcome(before=await store.purge_counts(cutoffs))
    for target, cutoff in cutoffs.items():
        if target in finished:
            continue
        while True:
            if not await proceed():
                outcome.stopped = True
                outcome.progress = {"stopped_at": target, "done_targets": finished}
                outcome.after = await store.purge_counts(cutoffs)
                return outcome
            deleted = await store.purge_batch(target, cutoff, batch_size)
            outcome.batches += 1
            outcome.processed += deleted
            outcome.affected += deleted
            if deleted < batch_size:
                break
        finished.append(target)
    outcome.after = await store.purge_counts(cutoffs)
    return outcome


async def undo_archive(store: DataStore, tag: str, batch_size: int, *,
                       proceed: Proceed = _always) -> Outcome:
    """Move the rows archive run ``tag`` archived back into tasks, batch by batch (one
    transaction each). Idempotent: a second undo finds nothing tagged and moves nothing. Rows
    whose task id or occurrence is in tasks again stay archived and are counted ``blocked``."""
    outcome = Outcome(before=_undo_counts(await store.undo_preview(tag)))
    after: str | None = ""
    while after is not None:
        if not await proceed():
            outcome.stopped = True
            break
        moved, after = await store.undo_batch(tag, batch_size, after)
        outcome.batches += 1
        outcome.processed += moved
        outcome.affected += moved
    outcome.after = _undo_counts(await store.undo_preview(tag))
    return outcome


def _undo_counts(touch: Touch) -> dict[str, int]:
    return {"archived_by_run": touch.rows, "blocked": touch.blocked}


async def preview(job: Job, store: DataStore, scheduled_for: datetime) -> dict[str, Touch]:
    """What a run of ``job`` for ``scheduled_for`` would touch, per table; touches nothing."""
    if job.kind == "archive_completed":
        cutoff = scheduled_for - timedelta(days=int(job.params["older_than_days"]))
        return {"tasks": await store.archive_preview(cutoff)}
    if job.kind == "purge_expired":
        return await store.purge_preview(cutoffs_of(job, scheduled_for))
    return {}
