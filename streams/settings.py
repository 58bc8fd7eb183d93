"""The one frozen settings object, built at the edge from the environment.

Every key maps one-to-one to an environment variable (upper-case, see ``ENV``) and to a
Helm value under ``config:`` in deploy/helm/cronorch/values.yaml. With no environment at
all the defaults point at the local stack started by ``cronorch dev up``.
Nothing here is read at import time: call ``Settings.from_env()``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

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
    job_trigger_changelog: str = "scheduler.job-trigger-changelog"


# Below this a tick every partition must commit costs more than it saves in lateness.
MIN_TICK_INTERVAL_S = 0.05


class Settings(BaseModel):
    """Process settings; ``ENV`` lists the environment variable of each field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kafka_bootstrap_servers: str = "127.0.0.1:19092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: str = ""  # empty: the system's trusted CAs
    kafka_ssl_certfile: str = ""  # client certificate (mutual TLS), with kafka_ssl_keyfile
    kafka_ssl_keyfile: str = ""
    database_url: SecretStr = SecretStr("postgresql://cronorch@127.0.0.1:15432/cronorch")
    pg_statement_timeout_ms: int = Field(300_000, ge=0)
    pg_idle_in_transaction_timeout_ms: int = Field(60_000, ge=0)
    pg_command_timeout_s: int = Field(330, ge=0)
    # The job runner's own pool, apart from the user-facing processes': every running or
    # queued run holds one connection (its lock), and the batches and claims share the rest.
    job_db_pool_size: int = Field(10, ge=2, le=100)
    app_id: str = Field("cronorch", pattern=r"^[a-z0-9][a-z0-9.-]*$")
    topics: Topics = Topics()
    task_events_partitions: int = Field(6, ge=1)
    timeline_partitions: int = Field(6, ge=1)
    replication_factor: int = Field(1, ge=1)
    min_insync_replicas: int = Field(1, ge=1)
    # The tick grid. Fire lateness is the grid's wait (up to one step) plus the tick's
    # processing, so a p99 under a second needs a sub-second step: 0.25 s keeps it near
    # half a second (docs/performance.md, "fire lateness"); each tick is a record in every
    # timeline partition and a transaction per partition, about 0.05 of a core for an
    # idle worker at this step.
    tick_interval_s: float = Field(0.25, ge=MIN_TICK_INTERVAL_S, le=3600)
    tick_catchup_max_s: int = Field(6 * 3600, ge=0)
    commit_interval_ms: int = Field(100, ge=0, le=60_000)
    transaction_timeout_ms: int = Field(60_000, ge=1_000)
    session_timeout_ms: int = Field(6_000, ge=6_000, le=1_800_000)
    reminder_catchup_s: int = Field(15 * 60, ge=0)
    digest_catchup_s: int = Field(3 * 3600, ge=0)
    spawn_catchup_s: int = Field(7 * 24 * 3600, ge=0)
    state_retention_s: int = Field(7 * 24 * 3600, ge=0)
    # The topics' max.message.bytes: no output is written larger (docs/contracts.md, Limits).
    max_message_bytes: int = Field(1_000_000, ge=65_536)
    # A live tick more than this ahead of its record's broker timestamp is refused.
    tick_max_ahead_s: int = Field(300, ge=1)
    metrics_port: int = Field(9108, ge=0, le=65535)
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    @field_validator("tick_interval_s")
    @classmethod
    def _whole_milliseconds(cls, value: float) -> float:
        if abs(value * 1000 - round(value * 1000)) > 1e-6:
            raise ValueError("a tick interval is a whole number of milliseconds (e.g. 0.25)")
        return round(value, 3)

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
            settings = cls(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            var = ENV.get(loc, loc.upper())
            raise ConfigError(var, first["msg"]) from None
        settings.check_kafka_security()
        if settings.min_insync_replicas > settings.replication_factor:
            raise ConfigError("MIN_INSYNC_REPLICAS", f"{settings.min_insync_replicas} exceeds "
                              f"REPLICATION_FACTOR {settings.replication_factor}: every "
                              "acks=all write would fail")
        return settings

    def check_kafka_security(self) -> None:
        """Reject a Kafka security setting that cannot work, naming its variable."""
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_"):
            if not self.kafka_sasl_username:
                raise ConfigError("KAFKA_SASL_USERNAME", f"is required with {protocol}")
            if not self.kafka_sasl_password.get_secret_value():
                raise ConfigError("KAFKA_SASL_PASSWORD", f"is required with {protocol}")
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            missing = "KAFKA_SSL_KEYFILE" if self.kafka_ssl_certfile else "KAFKA_SSL_CERTFILE"
            raise ConfigError(missing, "a client certificate needs both its certificate and key")
        tls = protocol in ("SSL", "SASL_SSL")
        for field in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            if getattr(self, field) and not tls:
                raise ConfigError(ENV[field], f"is set but KAFKA_SECURITY_PROTOCOL is {protocol} "
                                  "(TLS files need SSL or SASL_SSL)")

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default ``os.environ``) with exactly these settings in it: the
        environment a subprocess needs to build the same ``Settings`` (tests, benchmarks)."""
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if k not in ENV.values() and not k.startswith("TOPIC_")}
        for field, var in ENV.items():
            value = getattr(self, field)
            env[var] = (value.get_secret_value() if isinstance(value, SecretStr)
                        else str(value))
        for field in Topics.model_fields:
            env[f"TOPIC_{field.upper()}"] = getattr(self.topics, field)
        return env

    def group_id(self, role: str) -> str:
        return f"{self.app_id}-{role}"

    def transactional_id(self, role: str, partition: int | None = None) -> str:
        suffix = "" if partition is None else f"-{partition}"
        return f"{self.app_id}-{role}{suffix}"


ENV: dict[str, str] = {
    "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "kafka_security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "kafka_sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "kafka_sasl_username": "KAFKA_SASL_USERNAME",
    "kafka_sasl_password": "KAFKA_SASL_PASSWORD",
    "kafka_ssl_cafile": "KAFKA_SSL_CAFILE",
    "kafka_ssl_certfile": "KAFKA_SSL_CERTFILE",
    "kafka_ssl_keyfile": "KAFKA_SSL_KEYFILE",
    "database_url": "DATABASE_URL",
    "pg_statement_timeout_ms": "PG_STATEMENT_TIMEOUT_MS",
    "pg_idle_in_transaction_timeout_ms": "PG_IDLE_IN_TRANSACTION_TIMEOUT_MS",
    "pg_command_timeout_s": "PG_COMMAND_TIMEOUT_S",
    "job_db_pool_size": "JOB_DB_POOL_SIZE",
    "app_id": "CRONORCH_APP_ID",
    "task_events_partitions": "TASK_EVENTS_PARTITIONS",
    "timeline_partitions": "TIMELINE_PARTITIONS",
    "replication_factor": "REPLICATION_FACTOR",
    "min_insync_replicas": "MIN_INSYNC_REPLICAS",
    "tick_interval_s": "TICK_INTERVAL_S",
    "tick_catchup_max_s": "TICK_CATCHUP_MAX_S",
    "commit_interval_ms": "COMMIT_INTERVAL_MS",
    "transaction_timeout_ms": "TRANSACTION_TIMEOUT_MS",
    "session_timeout_ms": "SESSION_TIMEOUT_MS",
    "reminder_catchup_s": "REMINDER_CATCHUP_S",
    "digest_catchup_s": "DIGEST_CATCHUP_S",
    "spawn_catchup_s": "SPAWN_CATCHUP_S",
    "state_retention_s": "STATE_RETENTION_S",
    "max_message_bytes": "MAX_MESSAGE_BYTES",
    "tick_max_ahead_s": "TICK_MAX_AHEAD_S",
    "metrics_port": "METRICS_PORT",
    "log_level": "LOG_LEVEL",
}
