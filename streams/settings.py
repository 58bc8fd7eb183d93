"""The one frozen settings object, built at the edge from the environment.

Every key maps one-to-one to an environment variable (upper-case, see ``ENV``) and to a
Helm value under ``config:`` in deploy/helm/cronorch/values.yaml. With no environment at
all the defaults point at the local stack started by ``cronorch dev up``.
Nothing here is read at import time: call ``Settings.from_env()``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from streams.errors import ConfigError


class Topics(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    task_events: str = "todo.task-events"
    timeline: str = "scheduler.timeline"
    ticks: str = "scheduler.ticks"
    notifications: str = "todo.notifications"
    task_commands: str = "todo.task-commands"
    dead_letters: str = "scheduler.dead-letters"
    state_changelog: str = "scheduler.state-changelog"
    job_triggers: str = "scheduler.job-triggers"
    job_runs: str = "scheduler.job-runs"


class Settings(BaseModel):
    """Process settings; ``ENV`` lists the environment variable of each field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kafka_bootstrap_servers: str = "127.0.0.1:19092"
    database_url: SecretStr = SecretStr("postgresql://cronorch@127.0.0.1:15432/cronorch")
    app_id: str = Field("cronorch", pattern=r"^[a-z0-9][a-z0-9.-]*$")
    topics: Topics = Topics()
    task_events_partitions: int = Field(6, ge=1)
    timeline_partitions: int = Field(6, ge=1)
    replication_factor: int = Field(1, ge=1)
    tick_interval_s: int = Field(1, ge=1, le=3600)
    tick_catchup_max_s: int = Field(6 * 3600, ge=0)
    commit_interval_ms: int = Field(100, ge=0, le=60_000)
    transaction_timeout_ms: int = Field(60_000, ge=1_000)
    session_timeout_ms: int = Field(6_000, ge=6_000, le=1_800_000)
    reminder_catchup_s: int = Field(15 * 60, ge=0)
    digest_catchup_s: int = Field(3 * 3600, ge=0)
    metrics_port: int = Field(9108, ge=0, le=65535)
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build from ``environ`` (default ``os.environ``); a bad value names its variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        topics: dict[str, str] = {}
        for field, var in ENV.items():
            if var in env:
                values[field] = env[var]
        for field in Topics.model_fields:
            var = f"TOPIC_{field.upper()}"
            if var in env:
                topics[field] = env[var]
        if topics:
            values["topics"] = Topics(**topics)
        try:
            return cls(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            var = ENV.get(loc, loc.upper())
            raise ConfigError(var, first["msg"]) from None

    def group_id(self, role: str) -> str:
        return f"{self.app_id}-{role}"

    def transactional_id(self, role: str, partition: int | None = None) -> str:
        suffix = "" if partition is None else f"-{partition}"
        return f"{self.app_id}-{role}{suffix}"


ENV: dict[str, str] = {
    "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "database_url": "DATABASE_URL",
    "app_id": "CRONORCH_APP_ID",
    "task_events_partitions": "TASK_EVENTS_PARTITIONS",
    "timeline_partitions": "TIMELINE_PARTITIONS",
    "replication_factor": "REPLICATION_FACTOR",
    "tick_interval_s": "TICK_INTERVAL_S",
    "tick_catchup_max_s": "TICK_CATCHUP_MAX_S",
    "commit_interval_ms": "COMMIT_INTERVAL_MS",
    "transaction_timeout_ms": "TRANSACTION_TIMEOUT_MS",
    "session_timeout_ms": "SESSION_TIMEOUT_MS",
    "reminder_catchup_s": "REMINDER_CATCHUP_S",
    "digest_catchup_s": "DIGEST_CATCHUP_S",
    "metrics_port": "METRICS_PORT",
    "log_level": "LOG_LEVEL",
}
