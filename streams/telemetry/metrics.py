"""Prometheus metrics of every process (names follow Prometheus conventions: seconds, totals).

Label values are bounded sets (role, kind, outcome): never user or task ids. They are
served with /healthz and /readyz by ``streams.telemetry.health``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS = Counter("cronorch_records_total", "Records consumed", ["role"])
EVENTS = Counter("cronorch_events_total", "Task events by outcome", ["outcome"])
NOTIFICATIONS = Counter("cronorch_notifications_total", "Notifications emitted", ["kind"])
MISSED = Counter("cronorch_fires_missed_total", "Fires past their catch-up window", ["kind"])
FIRES_HELD = Counter("cronorch_fires_held_total", "Tasks or users whose firing raised at a tick: "
                     "their later fires are held until they change", ["kind"])
DEAD_LETTERS = Counter("cronorch_dead_letters_total", "Records sent to the dead-letter topic",
                       ["role"])
TRANSACTIONS = Counter("cronorch_transactions_total", "Kafka transactions", ["role", "outcome"])
TRANSACTION_SECONDS = Histogram("cronorch_transaction_seconds", "Time to process and commit one "
                                "partition batch", ["role"],
                                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PARTITIONS = Gauge("cronorch_partitions_assigned", "Partitions owned by this process", ["role"])
WATERMARK = Gauge("cronorch_watermark_timestamp_seconds", "Last processed tick per partition",
                  ["partition"])
TICKS = Counter("cronorch_ticks_published_total", "Ticks published by the tick producer")
TICKS_REFUSED = Counter("cronorch_ticks_refused_total",
                        "Live ticks refused by the timeline agent: too far ahead of broker time")
TICK_LAG = Gauge("cronorch_tick_lag_seconds", "Wall clock minus the last published tick, "
                 "computed at scrape time (grows while ticks stop; 0 on a standby)")
FIRE_LATENESS = Histogram("cronorch_fire_lateness_seconds", "Commit time minus fire_at of "
                          "each emitted fire", ["kind"],
                          buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 10800))
PENDING_FIRES = Gauge("cronorch_pending_fires", "Fires waiting in a timeline partition's due "
                      "index", ["partition"])
CONSUMER_LAG = Gauge("cronorch_consumer_lag_records", "Records of a source partition not yet "
                     "processed (high watermark minus the next offset)", ["role", "partition"])
PROCESSOR_UP = Gauge("cronorch_processor_up", "1 while a processor runs, 0 once it stopped",
                     ["role"])
LAST_COMMIT = Gauge("cronorch_last_commit_timestamp_seconds", "When a processor last "
                    "committed a transaction", ["role"])


def declare_series() -> None:
    """Create the known label values at zero, so that ``increase()`` sees the first event."""
    for kind in ("reminder.due", "digest.daily", "task.spawn"):
        NOTIFICATIONS.labels(kind)
    for kind in ("reminder.due", "digest.daily", "task.spawn"):
        MISSED.labels(kind)
    for role in ("rekeyer", "timeline"):
        DEAD_LETTERS.labels(role)
        RECORDS.labels(role)
        for outcome in ("committed", "aborted"):
            TRANSACTIONS.labels(role, outcome)
    for outcome in ("applied", "stale"):
        EVENTS.labels(outcome)


# Maintenance jobs (job names come from the registry: a small, operator-controlled set).
JOB_RUNS = Counter("cronorch_job_runs_total", "Job run records (one per attempt or decision)",
                   ["job", "status"])
JOB_RUN_SECONDS = Histogram("cronorch_job_run_seconds", "Duration of one job attempt", ["job"],
                            buckets=(0.01, 0.05, 0.25, 1, 5, 15, 60, 300, 900, 3600))
JOB_TRIGGERS = Counter("cronorch_job_triggers_total", "Slots decided by the trigger agent",
                       ["job", "disposition"])
JOB_RETRIES = Counter("cronorch_job_retries_total", "Job attempts followed by a retry", ["job"])
JOB_ROWS = Counter("cronorch_job_rows_affected_total", "Rows moved or deleted by jobs", ["job"])
JOB_DUPLICATES = Counter("cronorch_job_duplicate_triggers_total",
                         "Triggers for a slot that was claimed before", ["job"])

# The tasks side: spawn sink, outbox relay, bootstrap.
SPAWNS = Counter("cronorch_spawns_total", "task.spawn commands applied by the spawn sink",
                 ["outcome"])  # inserted | duplicate | dead_letter
OUTBOX_PUBLISHED = Counter("cronorch_outbox_published_total",
                           "Outbox rows published to todo.task-events")
OUTBOX_WAKEUPS = Counter("cronorch_outbox_wakeups_total", "Relay passes by cause",
                         ["cause"])  # notify | poll


def observe_many(histogram: Histogram, amount: float, count: int) -> None:
    """``histogram.observe(amount)`` ``count`` times, in one step: a burst commits many
    fires of one instant, and observing each took a twentieth of its CPU.

    prometheus_client has no weighted observe; this adds to the same sum and bucket that
    ``observe`` does (its ``_sum``, ``_upper_bounds`` and ``_buckets``), and
    tests/unit/test_metrics.py holds the two to the same exposition, so a release that
    changes those internals fails there, not in production."""
    if count == 1:
        histogram.observe(amount)
        return
    histogram._raise_if_not_observable()  # type: ignore[no-untyped-call]
    histogram._sum.inc(amount * count)
    for i, bound in enumerate(histogram._upper_bounds):
        if amount <= bound:
            histogram._buckets[i].inc(count)
            break
