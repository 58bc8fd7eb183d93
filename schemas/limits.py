"""The bounds every input record is held to (docs/contracts.md, "Limits (v1.1)").

Owns the numbers only. ``schemas.events.TASK_EVENT_ADAPTER`` and
``schemas.ticks.TIMELINE_ADAPTER`` (what records are decoded with) enforce them, the models
themselves do not (state stored before the limits must still load), the codec checks the
record size before parsing, and dead letters keep a bounded prefix of what they quarantine.
A record past any bound is dead-lettered whole, never applied in part. Imports nothing of
ours; must not import faust, aiokafka, asyncpg or ``streams``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

# Whole input record (the Kafka value), checked before JSON parsing.
MAX_RECORD_BYTES = 64 * 1024
# Task text and lists.
MAX_TITLE_CHARS = 1_000
MAX_REMINDERS = 50
MAX_ID_CHARS = 200
MAX_VERSION = 2**63 - 1  # a PostgreSQL bigint
MAX_RRULE_CHARS = 500
MAX_ZONE_CHARS = 64  # the longest IANA name is 32
# A ``before_minutes`` reminder: at most one year (366 days) before the due.
MAX_BEFORE_MINUTES = 366 * 24 * 60
# Instants (after conversion to UTC) and local dates an input may carry: [EARLIEST, LATEST).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
EARLIEST_DATE = date(1970, 1, 2)
LATEST_DATE = date(2199, 12, 31)
# What a dead letter keeps of the record it quarantines (the rest is summarised by its size
# and SHA-256), so a letter always fits the dead-letter topic.
DEAD_LETTER_VALUE_BYTES = 16 * 1024
DEAD_LETTER_KEY_BYTES = 1_024
# The default ``max.message.bytes`` of a topic (Kafka's broker default, 1 MiB + 12 bytes,
# rounded down): no output this service writes may exceed it.
MAX_OUTPUT_BYTES = 1_000_000
