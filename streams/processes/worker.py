"""The scheduling worker: the re-keyer and the timeline agent, each exactly-once.

    todo.task-events ──re-keyer──► scheduler.timeline ◄── tick producer
                                         │
                                  timeline agent (PartitionState per partition)
                                         ├──► todo.notifications (reminder.due, digest.daily)
                                         ├──► todo.task-commands (task.spawn)
                                         ├──► scheduler.state-changelog (p)
                                         └──► scheduler.dead-letters

Both are thin handlers for ``engine.Processor``: decode → apply → encode. The flow of a
record is plain functions in ``state``/``planning``; nothing here decides when things fire.
``run(runtime="faust")`` hosts the same handlers as faust agents instead
(``streams.faust.worker.Processor``, the engine's twin on the cronorch:// transport).

Per-record isolation: an error one record's content causes while it is decoded, applied or
planned never leaves a handler. The record goes to the dead letters with a reason, what it
changed in the partition's state is put back, and the rest of the batch goes on; errors of
the infrastructure (``engine.caused_by_record`` is False) still reach the engine.

Time sanity: a live tick more than ``tick_max_ahead_s`` ahead of its record's broker
timestamp (the timeline topic is LogAppendTime) is one wrong clock reading; applying it would
move the watermark past fires that would then never go out. It is refused, dead-lettered,
logged and counted (``cronorch_ticks_refused_total``, alerted on). Range ticks are taken as
they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from schemas import TaskDeleted, TaskSpawn, TaskUpserted, Tick, UserSettings
from streams import codec
from streams.errors import ConfigError
from streams.kafka import client as kafka
from streams.kafka.client import Output, Record
from streams.kafka.engine import (
    Processor,
    caused_by_record,
    dead_letter,
    decode_all,
    failure_reason,
)
from streams.processes import collector, lifecycle
from streams.settings import Settings
from streams.telemetry import metrics
from streams.telemetry.logs import fields
from streams.timeline.changelog import restore, snapshot
from streams.timeline.outputs import ReminderFired
from streams.timeline.state import Effects, PartitionState

log = logging.getLogger("cronorch.worker")


class Rekeyer:
    """todo.task-events → scheduler.timeline, keyed and partitioned by user_id; the bytes go
    on unchanged. A record it cannot route is dead-lettered here, with its task-events
    coordinates; one it routes but that fails validation, by the timeline agent."""

    def __init__(self, settings: Settings, timeline_partitions: int) -> None:
        self.changelog_topic: str | None = None
        self.settings = settings
        self.partitions = timeline_partitions
        self.counts: Counter[str] = Counter()
        # aiokafka's murmur2 is pure Python (about 1.7 µs a key); a user sends many events.
        self.partition_of: dict[bytes, int] = {}

    def assign(self, partition: int, changelog: Iterable[Record]) -> None:
        pass

    def revoke(self, partition: int) -> None:
        pass

    def process(self, partition: int, records: list[Record]) -> list[Output]:
        # Reads only the user id; the timeline agent validates the event (codec docstring).
        decoded, outputs = decode_all(self.settings, "rekeyer", records,
                                      codec.route_task_event)
        self.counts["dead_letters"] += len(outputs)
        for record, key in decoded:
            target = self.partition_of.get(key)
            if target is None:
                if len(self.partition_of) >= 16_384:  # about 2 MB at most
                    self.partition_of.clear()
                target = self.partition_of[key] = kafka.partition_for(key, self.partitions)
            outputs.append(Output(self.settings.topics.timeline, key, record.value, target))
            self.counts["rekeyed"] += 1
        return outputs


class TimelineAgent:
    """Per partition: task/user state, due index and watermark; ticks fire what is due.

    ``restored`` is called after each partition's state is restored (the worker freezes it
    there: ``collector.settle``)."""

    def __init__(self, settings: Settings, *,
                 restored: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.restored = restored
        self.changelog_topic: str | None = settings.topics.state_changelog
        self.states: dict[int, PartitionState] = {}
        # How many fires of each (kind, fire_at) the batches in flight hold, per partition:
        # observed as lateness once the engine has committed them (``committed``), never
        # before. The faust runtime processes several batches (one event each) per
        # transaction. Counted, not listed: a burst fires many on few instants.
        self.fired: dict[int, Counter[tuple[str, datetime]]] = {}
        self.counts: Counter[str] = Counter()

    def assign(self, partition: int, changelog: Iterable[Record]) -> None:
        state = PartitionState(partition, reminder_catchup_s=self.settings.reminder_catchup_s,
                               digest_catchup_s=self.settings.digest_catchup_s,
                               spawn_catchup_s=self.settings.spawn_catchup_s,
                               retention_s=self.settings.state_retention_s)
        restore(state, ((r.key.decode(), r.value) for r in changelog if r.key is not None))
        self.states[partition] = state
        self.counts["restored_tasks"] += len(state.tasks)
        if self.restored is not None:
            self.restored()

    def revoke(self, partition: int) -> None:
        self.states.pop(partition, None)
        self.fired.pop(partition, None)
        # The new owner reports this partition's watermark and pending fires from now on.
        with contextlib.suppress(KeyError):
            metrics.WATERMARK.remove(str(partition))
        with contextlib.suppress(KeyError):
            metrics.PENDING_FIRES.remove(str(partition))

    def committed(self, partition: int, committed_at_s: float) -> None:
        """The engine committed ``partition``'s batch at ``committed_at_s``: its fires are out
        (read_committed), so their lateness is known."""
        fired = self.fired.pop(partition, None)
        for (kind, fire_at), count in (fired or {}).items():
            metrics.observe_many(metrics.FIRE_LATENESS.labels(kind),
                                 max(0.0, committed_at_s - fire_at.timestamp()), count)

    def process(self, partition: int, records: list[Record]) -> list[Output]:
        state = self.states[partition]
        effects = Effects()
        decoded, outputs = decode_all(self.settings, "timeline", records, codec.decode_timeline)
        effects.counts["dead_letters"] += len(outputs)
        for record, item in decoded:
            if isinstance(item, Tick):
                refusal = self._refusal(record, item)
                if refusal is not None:
                    log.warning("live tick refused", extra=fields(
                        partition=partition, offset=record.offset, reason=refusal))
                    metrics.TICKS_REFUSED.inc()
                    effects.counts["ticks_refused"] += 1
                    self._reject(record, refusal, outputs, effects)
                    continue
                try:
                    effects.merge(state.tick(item.tick_at))
                    self._log_held(partition, record.offset, state)
                except Exception as exc:
                    if not caused_by_record(exc):
                        raise
                    # The class only: a message may quote the record (a title).
                    log.error("tick failed", extra=fields(
                        partition=partition, offset=record.offset,
                        error_class=type(exc).__name__))
                    self._reject(record, failure_reason(exc, "tick"), outputs, effects)
            else:
                undo = _Undo(state, item)
                try:
                    effects.merge(state.apply(item))
                except Exception as exc:
                    if not caused_by_record(exc):
                        raise
                    undo.restore()
                    log.warning("event failed", extra=fields(
                        partition=partition, offset=record.offset,
                        error_class=type(exc).__name__))
                    self._reject(record, failure_reason(exc, "applying"), outputs, effects)
        topics = self.settings.topics
        fired: Counter[tuple[str, datetime]] = Counter()
        notifications = topics.notifications
        for out in effects.outputs:
            if isinstance(out, ReminderFired):  # built without pydantic (timeline.outputs)
                outputs.append(Output(notifications, out.user_id.encode(), out.wire()))
            else:
                topic = (topics.task_commands if isinstance(out, TaskSpawn) else notifications)
                outputs.append(Output(topic, out.user_id.encode(), codec.dumps(out)))
            fired[out.type, out.fire_at] += 1
        kinds: Counter[str] = Counter()
        for (kind, _), n in fired.items():
            kinds[kind] += n
        self.fired.setdefault(partition, Counter()).update(fired)
        for kind, n in kinds.items():
            metrics.NOTIFICATIONS.labels(kind).inc(n)
        metrics.PENDING_FIRES.labels(str(partition)).set(len(state.index))
        for key in sorted(effects.dirty):
            outputs.append(Output(topics.state_changelog, key.encode(), snapshot(state, key),
                                  partition))
        if state.watermark is not None:
            metrics.WATERMARK.labels(str(partition)).set(state.watermark.timestamp())
        for name in ("applied", "stale"):
            if effects.counts[name]:
                metrics.EVENTS.labels(name).inc(effects.counts[name])
        if effects.counts["missed"]:
            metrics.MISSED.labels("reminder.due").inc(effects.counts["missed"])
        if effects.counts["missed_digests"]:
            metrics.MISSED.labels("digest.daily").inc(effects.counts["missed_digests"])
        if effects.counts["missed_spawns"]:
            metrics.MISSED.labels("task.spawn").inc(effects.counts["missed_spawns"])
        self.counts.update(effects.counts)
        return outputs

    @staticmethod
    def _log_held(partition: int, offset: int, state: PartitionState) -> None:
        """The keys whose firing raised at this tick: the tick went on without them."""
        if not state.failures:
            return
        for key, error_class in state.failures:
            kind = "user" if key.startswith("u|") else "task"
            metrics.FIRES_HELD.labels(kind).inc()
            # Not the key itself (user ids may be e-mail addresses), nor the message (it may
            # quote a title): the key's hash finds it among the state changelog's keys.
            log.error("firing failed: this key's later fires are held until it changes",
                      extra=fields(partition=partition, offset=offset, kind=kind,
                                   key_sha256=hashlib.sha256(key.encode()).hexdigest()[:16],
                                   error_class=error_class))
        state.failures.clear()

    def _refusal(self, record: Record, tick: Tick) -> str | None:
        """Why a live tick is refused, or None: too far ahead of the broker's clock."""
        return codec.tick_refusal(tick, record.timestamp_ms, self.settings.tick_max_ahead_s)

    def _reject(self, record: Record, reason: str, outputs: list[Output],
                effects: Effects) -> None:
        outputs.append(dead_letter(self.settings, record, reason))
        metrics.DEAD_LETTERS.labels("timeline").inc()
        effects.counts["dead_letters"] += 1


class _Undo:
    """What applying ``event`` may replace in ``state``, to put back if it fails."""

    def __init__(self, state: PartitionState,
                 event: TaskUpserted | TaskDeleted | UserSettings) -> None:
        self.state = state
        if isinstance(event, UserSettings):
            self.user_id, self.key = event.user_id, None
            self.user = state.users.get(event.user_id)
            return
        user_id = event.task.user_id if isinstance(event, TaskUpserted) else event.user_id
        task_id = event.task.task_id if isinstance(event, TaskUpserted) else event.task_id
        self.user_id, self.key = user_id, f"t|{user_id}|{task_id}"
        self.task = state.tasks.get(self.key)
        self.listed = self.key in state.user_tasks.get(user_id, ())

    def restore(self) -> None:
        state = self.state
        if self.key is None:
            if self.user is None:
                state.users.pop(self.user_id, None)
            else:
                state.users[self.user_id] = self.user
            return
        if self.task is None:
            state.tasks.pop(self.key, None)
        else:
            state.tasks[self.key] = self.task
        if not self.listed:
            state.user_tasks.get(self.user_id, set()).discard(self.key)


RUNTIMES = ("native", "faust")


async def run(settings: Settings, stop: asyncio.Event | None = None, *,
              runtime: str = "native") -> None:
    """Run until SIGTERM/SIGINT (or ``stop``); logs an execution summary every 30 s and at exit.

    ``runtime`` hosts the same handlers on this project's engine (``native``, the default:
    faster) or as faust agents with the project's transactional layer (``faust``)."""
    if runtime not in RUNTIMES:
        raise ConfigError("runtime", f"must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    stop = await lifecycle.start(settings, stop)
    partitions = await kafka.partition_count(settings, settings.topics.timeline)
    rekeyer = Rekeyer(settings, partitions)
    agent = TimelineAgent(settings, restored=collector.settle)
    engine: Any = Processor
    if runtime == "faust":
        from streams.faust import worker as faust_worker

        engine = faust_worker.Processor
    collector.configure()  # after the imports: what they loaded is frozen
    processors = [
        engine(settings, "rekeyer", settings.topics.task_events, rekeyer),
        engine(settings, "timeline", settings.topics.timeline, agent),
    ]
    started = time.monotonic()
    log.info("worker started", extra=fields(timeline_partitions=partitions, runtime=runtime))

    summary = lifecycle.every(
        30, lambda: _summary("worker summary", rekeyer, agent, started))
    tasks = {p.name: asyncio.create_task(p.run(stop)) for p in processors}
    try:
        await lifecycle.supervise(stop, tasks)
    finally:
        summary.cancel()
        _summary("worker stopped", rekeyer, agent, started)


def _summary(event: str, rekeyer: Rekeyer, agent: TimelineAgent, started: float) -> None:
    counts = agent.counts
    log.info(event, extra=fields(
        processed=counts["applied"] + counts["stale"] + counts["ticks"] + counts["ticks_ignored"],
        notified=counts["notified"] + counts["digests"], spawned=counts["spawned"],
        missed=counts["missed"] + counts["missed_digests"] + counts["missed_spawns"],
        stale=counts["stale"], tombstones=counts["tombstones"],
        errors=counts["dead_letters"] + rekeyer.counts["dead_letters"],
        rekeyed=rekeyer.counts["rekeyed"], duration_s=round(time.monotonic() - started, 3),
    ))
