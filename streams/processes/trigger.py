"""The job trigger agent: scheduler.ticks → scheduler.job-triggers, exactly once.

    scheduler.ticks ──trigger agent (exactly-once, engine.Processor)──► scheduler.job-triggers
                                    └──► scheduler.job-trigger-changelog (the last tick decided)

The agent turns ticks into slots with ``jobs.slots_due`` (time comes from ticks only), one
tick at a time against the tick before it, so every slot is decided at the first tick at or
after it whatever the consumer's batches: a replay of the tick log gives the same triggers.
Coalesced and missed slots are triggers too; the runner (``streams.processes.runner``)
records them as rows. Owns the agent's state (watermark per partition, the next slot of each
job derived from it); reads no clock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from schemas import JobTrigger, Tick
from schemas.wire import dumps
from streams import codec
from streams.errors import InvalidEvent
from streams.jobs import decisions as jobs
from streams.jobs.model import Job, Registry
from streams.kafka.client import Output, Record
from streams.kafka.engine import dead_letter, decode_all
from streams.settings import Settings
from streams.telemetry import metrics
from streams.telemetry.logs import fields

log = logging.getLogger("cronorch.jobs")


WATERMARK = b"w"  # the trigger agent's changelog key: the last tick it decided


class TriggerAgent:
    """scheduler.ticks → one JobTrigger per decided slot (key: job name).

    Each tick is decided on its own, against the tick before it, whatever the batch it came
    in: the previous tick is committed to its changelog in the same transaction as the
    triggers and the offset, so a restart or a rebalance resumes from exactly that tick.
    """

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.changelog_topic: str | None = settings.topics.job_trigger_changelog
        self.watermarks: dict[int, datetime] = {}
        # Derived from the watermark, never persisted: the first slot of each job after it,
        # so a tick that makes nothing due costs a comparison instead of a cron walk.
        self.next_slots: dict[tuple[int, str], datetime | None] = {}

    def assign(self, partition: int, changelog: Iterable[Record]) -> None:
        self.revoke(partition)
        for record in changelog:
            if record.key != WATERMARK or record.value is None:
                continue
            try:
                item = codec.decode_timeline(record.value)
            except InvalidEvent as exc:
                log.warning("trigger agent changelog record ignored", extra=fields(
                    offset=record.offset, reason=exc.reason))
                continue
            if isinstance(item, Tick):
                self.watermarks[partition] = item.tick_at

    def revoke(self, partition: int) -> None:
        self.watermarks.pop(partition, None)
        for key in [k for k in self.next_slots if k[0] == partition]:
            del self.next_slots[key]

    def process(self, partition: int, records: list[Record]) -> list[Output]:
        decoded, outputs = decode_all(self.settings, "trigger", records, codec.decode_timeline)
        before = watermark = self.watermarks.get(partition)
        grid = timedelta(seconds=self.settings.tick_interval_s)
        for record, item in decoded:
            if not isinstance(item, Tick):
                outputs.append(dead_letter(self.settings, record,
                                           f"expected a tick, got '{item.type}'"))
                continue
            refusal = codec.tick_refusal(item, record.timestamp_ms,
                                         self.settings.tick_max_ahead_s)
            if refusal is not None:  # one wrong clock reading decides no slot (as timeline)
                log.warning("live tick refused", extra=fields(offset=record.offset))
                metrics.TICKS_REFUSED.inc()
                outputs.append(dead_letter(self.settings, record, refusal))
                continue
            # The very first tick has no predecessor in the log: one grid step before it.
            previous = watermark or item.tick_at - grid
            if item.tick_at <= previous:
                continue  # a duplicate or older tick decides nothing (as in the timeline)
            outputs += self._decide(partition, previous, item.tick_at)
            watermark = item.tick_at
        if watermark is not None and watermark != before:
            self.watermarks[partition] = watermark
            outputs.append(Output(self.settings.topics.job_trigger_changelog, WATERMARK,
                                  codec.encode_tick(watermark), partition))
        return outputs

    def _decide(self, partition: int, previous: datetime, tick_at: datetime) -> list[Output]:
        outputs: list[Output] = []
        for job in self.registry.jobs:
            key = (partition, job.name)
            if key not in self.next_slots:
                self.next_slots[key] = next(job.fires(previous), None)
            upcoming = self.next_slots[key]
            if upcoming is None or upcoming > tick_at:
                continue
            due = jobs.slots_due(job, previous, tick_at, self.settings.tick_interval_s)
            self.next_slots[key] = due.following
            outputs += triggers(self.settings, job, due, tick_at)
        return outputs


def triggers(settings: Settings, job: Job, due: jobs.DueSlots,
             tick_at: datetime) -> list[Output]:
    """One JobTrigger for every slot of ``job`` that tick ``tick_at`` decided; coalesced and
    missed slots are sent too, for the runner to record."""
    outputs: list[Output] = []
    for slot in due.slots:
        metrics.JOB_TRIGGERS.labels(job.name, slot.disposition.value).inc()
        trigger = JobTrigger(trigger_id=jobs.trigger_id(job.name, slot.scheduled_for),
                             job=job.name, scheduled_for=slot.scheduled_for, tick_at=tick_at,
                             trigger="schedule", disposition=slot.disposition.value,
                             late=slot.late)
        outputs.append(Output(settings.topics.job_triggers, job.name.encode(), dumps(trigger)))
    if due.uncounted_missed:
        log.warning("job slots missed beyond the enumeration bound", extra=fields(
            job=job.name, missed=due.uncounted_missed, tick_at=jobs.z(tick_at)))
    return outputs
