"""The maintenance jobs' domain model: a job, its retry and overlap policies, the built-in
kinds and their parameters, and the registry that holds the jobs.

Values only: the YAML file is read and checked by ``streams.jobs.registry``, decisions are
made by ``streams.jobs.decisions``. Pure: no IO, no clock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from zoneinfo import ZoneInfo

from streams.errors import ConfigError
from streams.timecore.cron import CronExpression
from streams.timecore.localtime import RFC5545, DstPolicy, zone
from streams.timecore.window import DailyWindow

MAX_ATTEMPTS = 20
DEFAULT_BATCH_TIMEOUT_S = 300


class Overlap(StrEnum):
    """What a slot does when the previous run of its job is still going."""

    SKIP = "skip"  # record the new slot as skipped
    BUFFER_ONE = "buffer_one"  # run it after the current one; a third one is skipped
    ALLOW = "allow"  # run concurrently


class Coalesce(StrEnum):
    """Which of several slots due at once (after a gap) run."""

    LATEST = "latest"
    EARLIEST = "earliest"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class Param:
    """A kind's parameter: its type (``int`` or ``float``), default and inclusive bounds."""

    type: type
    default: int | float
    lo: int | float
    hi: int | float


@dataclass(frozen=True, slots=True)
class KindSpec:
    """A built-in kind: whether it is heavy (owns the database for a while) and its limits."""

    heavy: bool
    min_interval_s: int
    params: Mapping[str, Param]
    summary: str


KINDS: Mapping[str, KindSpec] = MappingProxyType({
    "archive_completed": KindSpec(
        heavy=True, min_interval_s=3600,
        params=MappingProxyType({
            "older_than_days": Param(int, 30, 1, 3650),
            "batch_size": Param(int, 1000, 1, 100_000),
        }),
        summary="move tasks completed more than older_than_days ago into tasks_archive"),
    "purge_expired": KindSpec(
        heavy=True, min_interval_s=3600,
        params=MappingProxyType({
            "archive_retention_days": Param(int, 365, 1, 36_500),
            "job_runs_retention_days": Param(int, 90, 1, 36_500),
            "dead_letters_retention_days": Param(int, 30, 1, 36_500),
            "outbox_retention_days": Param(int, 7, 1, 36_500),
            "batch_size": Param(int, 1000, 1, 100_000),
        }),
        summary="delete archived tasks, job runs, dead letters and published outbox rows "
                "past their retention"),
    "noop": KindSpec(
        heavy=False, min_interval_s=60,
        params=MappingProxyType({
            "sleep_s": Param(float, 0.0, 0.0, 3600.0),
            "fail_attempts": Param(int, 0, 0, MAX_ATTEMPTS),
        }),
        summary="touch nothing; wait sleep_s; the first fail_attempts attempts fail "
                "retriably (drills, smoke tests)"),
})


@dataclass(frozen=True, slots=True)
class Retries:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(max, base·2^(n-1)))."""

    max_attempts: int = 3
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    kind: str
    schedule: CronExpression
    timezone: str = "UTC"
    dst_policy: DstPolicy = RFC5545
    params: Mapping[str, int | float] = field(default_factory=lambda: MappingProxyType({}))
    timeout_s: int = 600
    overlap: Overlap = Overlap.SKIP
    catchup_window_s: int = 3600
    coalesce: Coalesce = Coalesce.LATEST
    retries: Retries = Retries()
    paused: bool = False
    run_window: DailyWindow | None = None  # starts only inside; stops between batches at its end
    batch_timeout_s: int = DEFAULT_BATCH_TIMEOUT_S  # one batch (one transaction) at most
    batch_pause_s: float = 0.0  # pacing: the runner waits this long between two batches

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.timezone)

    def window_containing(self, at: datetime) -> tuple[datetime, datetime] | None:
        """The run window ``at`` is in; ``(at, never)`` for a job without a window."""
        if self.run_window is None:
            return at, datetime.max.replace(tzinfo=UTC)
        return self.run_window.containing(at, self.tz, self.dst_policy)

    def windows(self, after: datetime) -> Iterator[tuple[datetime, datetime]]:
        """The run windows not closed at ``after``, in order (none without a window)."""
        if self.run_window is None:
            return iter(())
        return self.run_window.windows(after, self.tz, self.dst_policy)

    @property
    def heavy(self) -> bool:
        return KINDS[self.kind].heavy

    def fires(self, after: datetime) -> Iterator[datetime]:
        """Slot instants strictly after ``after``, increasing (UTC)."""
        return self.schedule.fires(after, self.tz, self.dst_policy)


@dataclass(frozen=True, slots=True)
class Registry:
    jobs: tuple[Job, ...]

    def get(self, name: str) -> Job:
        for job in self.jobs:
            if job.name == name:
                return job
        raise ConfigError("jobs", f"no job named {name!r}; known: "
                          f"{', '.join(j.name for j in self.jobs) or '(none)'}")

    def names(self) -> list[str]:
        return [j.name for j in self.jobs]
