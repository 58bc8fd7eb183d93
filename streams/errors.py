"""Every exception cronorch raises on purpose, under one root.

    SchedulerError                 root; ``retriable`` says whether trying again can help
    ├── InvalidInput               a record or value that can never be processed
    │   ├── InvalidEvent           a Kafka record that fails decoding/validation (→ dead letters)
    │   └── InvalidSchedule        a bad RRULE, cron expression, zone or DST policy
    ├── ConfigError                a bad setting or job registry entry (names the key path)
    ├── InfrastructureError        the local stack (Kafka jars, PostgreSQL binaries, ports)
    ├── DatabaseError              PostgreSQL rejected a statement (constraint, syntax, rights)
    ├── Fenced                     another instance owns the partition now (zombie fencing)
    ├── Rejected                   Kafka refused for good: retrying cannot help
    │   ├── RecordRejected         one record (too large, invalid): dead-letter it, go on
    │   └── NotAuthorized          the credentials lack a right: stop with a clear error
    ├── ComponentStopped           a long-running part of a process ended on its own: exit
    ├── Refused                    an operator command that cannot go ahead (``jobs undo``)
    ├── OutsideTransaction         a send under exactly-once that no source partition owns
    └── TransientError             retriable: connection loss, timeouts, serialization failures
        ├── BrokerUnavailable
        └── DatabaseUnavailable

This module imports nothing of ours.
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Root of every error raised on purpose."""

    retriable: bool = False


class InvalidInput(SchedulerError):
    """Input that can never be processed, however often it is retried."""


class InvalidEvent(InvalidInput):
    """A record that failed decoding or validation; ``reason`` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidSchedule(InvalidInput):
    """A schedule (RRULE, cron, zone, DST policy) that is malformed.

    ``field`` names the part at fault (``"minute"``, ``"BYMONTHDAY"``, ``"timezone"``),
    ``reason`` says why; ``str(err)`` is ``"<field>: <reason>"`` unless the field is empty.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


class Refused(SchedulerError):
    """An operator command that cannot go ahead as asked: an unknown run, a kind that
    cannot be undone, a run still in progress, a job's lock held by a run."""


class ConfigError(SchedulerError):
    """A setting or registry entry that is rejected; ``path`` is the key path at fault."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


class InfrastructureError(SchedulerError):
    """The local stack cannot be set up or started (a taken port, a failed download)."""


class DatabaseError(SchedulerError):
    """PostgreSQL refused a statement in a way a retry cannot fix; ``sqlstate`` says how."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class TransientError(SchedulerError):
    """A failure that may pass: retry with backoff."""

    retriable = True


class BrokerUnavailable(TransientError):
    """Kafka could not be reached or refused a request in a retriable way."""


class DatabaseUnavailable(TransientError):
    """PostgreSQL could not be reached, or a serialization failure/deadlock/timeout aborted."""


class Fenced(SchedulerError):
    """Another instance took over a partition (its producer fenced ours): give it up."""


class Rejected(SchedulerError):
    """Kafka refused a request in a way no retry can fix."""


class RecordRejected(Rejected):
    """The broker (or the client, before sending) refused one record: too large, invalid."""


class NotAuthorized(Rejected):
    """The principal lacks a right (topic, group, transactional id, cluster)."""


class ComponentStopped(SchedulerError):
    """A part of a process that must run until asked to stop (a processor, a consumer loop)
    ended on its own; the process exits non-zero so that its supervisor restarts it."""

    def __init__(self, component: str, how: str) -> None:
        super().__init__(f"{component} {how}")
        self.component = component


class OutsideTransaction(SchedulerError):
    """Under exactly-once, a send made outside the processing of an event (or for an event
    of a partition this process does not own): no transaction could make it exactly once."""
