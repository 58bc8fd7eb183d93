"""Maintenance-job records: triggers on ``scheduler.job-triggers`` (written by the trigger
agent, read by the job runner) and runs on ``scheduler.job-runs`` (written by the runner).

Owns their shapes only; the registry, cron and the runner live elsewhere. A run's
``error_message`` is the runner's business to keep free of task titles. Must not import
faust, aiokafka, asyncpg or ``streams``.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from pydantic import Field, StrictBool

from schemas.values import Count, InputModel, Instant, NonEmptyStr, OutputModel

JobTriggerKind: TypeAlias = Literal["schedule", "manual", "backfill"]
JobDisposition: TypeAlias = Literal["run", "coalesced", "missed"]
# A run's trigger: a JobTrigger's, or ``undo`` (``cronorch jobs undo``, added in v1.3).
JobRunTrigger: TypeAlias = Literal["schedule", "manual", "backfill", "undo"]
ProgressValue: TypeAlias = str | int | list[str] | None


class JobTrigger(InputModel):
    """A slot (job, scheduled_for) decided at tick ``tick_at``; the runner claims it at most
    once. ``disposition`` ``run`` runs it; ``coalesced`` and ``missed`` (added in v1.2, absent
    means ``run``) only record it, so every decided slot has its row in the run log.
    ``late``: decided more than one tick grid step after the slot (a gap in the ticks)."""

    type: Literal["job.trigger"] = "job.trigger"
    trigger_id: NonEmptyStr
    job: NonEmptyStr
    scheduled_for: Instant
    tick_at: Instant
    trigger: JobTriggerKind
    disposition: JobDisposition = "run"
    late: StrictBool = False


class JobRun(OutputModel):
    """One attempt at a slot, as recorded in the run log.

    Added in v1.3: status ``partial`` (stopped between batches at its run window's end, or
    claimed outside its window; the next window resumes it) with ``progress`` saying where
    it stopped; trigger ``undo`` with ``undoes``, the archive run it moved back."""

    type: Literal["job.run"] = "job.run"
    run_id: NonEmptyStr
    job: NonEmptyStr
    kind: NonEmptyStr
    scheduled_for: Instant
    trigger: JobRunTrigger
    attempt: int = Field(ge=1, strict=True)
    started_at: Instant | None
    finished_at: Instant | None
    duration_ms: Count | None
    status: Literal["succeeded", "failed", "skipped", "missed", "partial"]
    processed: Count = 0
    affected: Count = 0
    before: dict[str, int] = Field(default_factory=dict)
    after: dict[str, int] = Field(default_factory=dict)
    error_class: str | None = None
    error_message: str | None = None
    progress: dict[str, ProgressValue] = Field(default_factory=dict)
    undoes: str | None = None
