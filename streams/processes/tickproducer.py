"""The tick producer: the only code that reads the wall clock.

Each tick ``{type: "tick", tick_at}`` lies on a fixed grid (multiples of ``step`` seconds
since the epoch) and is written, in one transaction, to ``scheduler.ticks`` and to every
partition of ``scheduler.timeline``.

- Live mode resumes after the last tick in ``scheduler.ticks``: ticks missed while it was
  down are published first (at most ``tick_catchup_max_s`` of them), so coverage has no gap.
- Range mode publishes a historical window as fast as the broker takes it and exits. Its
  ticks are marked ``source: "range"``: an operator's explicit choice of time, taken as it is
  by the timeline agent, while a live tick far ahead of the broker's clock is refused there.
- Live producers elect one leader through a Kafka consumer group (``Lease``); the others
  stand by and take over, gaplessly, when it dies. All producers also share one
  transactional id, so a zombie leader is fenced. Duplicate or older ticks are harmless
  anyway: a tick at or before a partition's watermark does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from schemas import Tick
from streams import codec
from streams.errors import Fenced, InvalidEvent
from streams.kafka import client as kafka
from streams.kafka.client import Output, Record, TopicPartition
from streams.processes import lifecycle
from streams.settings import Settings
from streams.telemetry import metrics
from streams.telemetry.logs import fields

log = logging.getLogger("cronorch.tick")
BATCH = 500


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def grid_floor(at: datetime, step_s: float) -> datetime:
    """The grid instant at or before ``at``: a multiple of ``step_s`` since the epoch,
    counted in whole microseconds so that a fractional step (0.25 s) never drifts."""
    step_us = round(step_s * 1_000_000)
    elapsed_us = (at - _EPOCH) // _MICROSECOND
    return _EPOCH + elapsed_us // step_us * step_us * _MICROSECOND


async def last_tick(settings: Settings) -> datetime | None:
    """The latest committed tick in ``scheduler.ticks``, or None if it is empty.

    A record that is not a tick is skipped (logged), and so is a tick further ahead of its
    record's broker timestamp than ``tick_max_ahead_s``: resuming after one wrong clock
    reading would stall the live grid until real time caught up with it."""
    client = kafka.consumer(settings, group_id=None)
    await client.start()
    try:
        tp = TopicPartition(settings.topics.ticks, 0)
        client.assign([tp])
        end = (await client.end_offsets([tp]))[tp]
        client.seek(tp, max(0, end - 2 * BATCH))
        latest: datetime | None = None
        while await client.position(tp) < end:
            batch = await client.getmany(tp, timeout_ms=1000)
            for msg in batch.get(tp, []):
                at = _resumable(settings, kafka.to_record(msg))
                if at is not None and (latest is None or at > latest):
                    latest = at
        return latest
    finally:
        await client.stop()


def _resumable(settings: Settings, record: Record) -> datetime | None:
    try:
        tick = codec.decode_timeline(record.value)
    except InvalidEvent as exc:
        log.warning("not a tick in the ticks topic: skipped", extra=fields(
            offset=record.offset, reason=exc.reason))
        return None
    if not isinstance(tick, Tick):
        return None
    if record.timestamp_ms >= 0:
        broker_at = datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
        if tick.tick_at - broker_at > timedelta(seconds=settings.tick_max_ahead_s):
            log.warning("tick far ahead of its broker time: not resumed from", extra=fields(
                offset=record.offset, tick_at=tick.tick_at.isoformat(),
                broker_at=broker_at.isoformat()))
            return None
    return tick.tick_at


class TickPublisher:
    """Publishes batches of ticks transactionally; ``role`` names the transactional id, so a
    range run (``tick-range``) never fences the live producer (``tick``) and vice versa."""

    def __init__(self, settings: Settings, role: str = "tick") -> None:
        self.settings = settings
        self.producer = kafka.producer(settings, settings.transactional_id(role))
        self.partitions = 0
        self.source = "range" if role == "tick-range" else "live"

    async def start(self) -> None:
        self.partitions = await kafka.partition_count(self.settings, self.settings.topics.timeline)
        await kafka.start(self.producer)

    async def stop(self) -> None:
        await kafka.stop_quietly(self.producer)

    async def publish(self, ticks: list[datetime]) -> None:
        """Publish ``ticks`` in one transaction (all partitions, plus scheduler.ticks)."""
        topics = self.settings.topics
        async with kafka.translated(), self.producer.transaction():
            targets = [(topics.ticks, 0),
                       *((topics.timeline, p) for p in range(self.partitions))]
            await kafka.send_all(self.producer, (
                Output(topic, None, codec.encode_tick(at, source=self.source), partition)
                for at in ticks for topic, partition in targets
            ))
        metrics.TICKS.inc(len(ticks))


async def publish_range(settings: Settings, start: datetime, end: datetime,
                        step_s: float) -> int:
    """Publish ticks start, start+step, … ≤ end; return how many."""
    publisher = TickPublisher(settings, "tick-range")
    await publisher.start()
    count = 0
    try:
        at, batch = start, []
        while at <= end:
            batch.append(at)
            if len(batch) == BATCH:
                await publisher.publish(batch)
                count += len(batch)
                batch = []
            at += timedelta(seconds=step_s)
        if batch:
            await publisher.publish(batch)
            count += len(batch)
    finally:
        await publisher.stop()
    return count


class Lease(kafka.RebalanceListener):  # type: ignore[misc]
    """Leadership among live tick producers, held through Kafka's group protocol.

    Every live producer joins the group ``<app>-tick`` on ``scheduler.ticks`` (one
    partition); the member assigned that partition publishes, the others wait. When the
    leader dies its session expires and another member takes over, resuming after the last
    tick in the log. Fencing by the shared transactional id stays as a second line.
    """

    def __init__(self, settings: Settings) -> None:
        self.held = False
        self.lock = asyncio.Lock()
        self.consumer = kafka.consumer(settings, group_id=settings.group_id("tick"),
                                       session_timeout_ms=6_000, heartbeat_interval_ms=1_000)
        self.topic = settings.topics.ticks

    async def on_partitions_revoked(self, revoked: object) -> None:
        async with self.lock:  # never in the middle of a publish
            self.held = False

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.held = bool(assigned)
        log.info("tick lease", extra=fields(held=self.held))

    async def start(self) -> None:
        self.consumer.subscribe([self.topic], listener=self)
        await self.consumer.start()

    async def poll(self) -> bool:
        """Keep the membership alive; True while this process holds the lease."""
        await self.consumer.getmany(timeout_ms=0)
        return self.held

    async def stop(self) -> None:
        await self.consumer.stop()


async def run_live(settings: Settings, step_s: float, *,
                   clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                   stop: asyncio.Event | None = None) -> None:
    stop = await lifecycle.start(settings, stop, ensure_topics=False)
    lease = Lease(settings)
    await lease.start()
    try:
        while not stop.is_set():
            if not await lease.poll():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
                continue
            publisher = TickPublisher(settings)
            await publisher.start()
            try:
                await _live_loop(settings, publisher, lease, step_s, clock, stop)
            except Fenced:
                backoff_s = step_s * random.uniform(2, 5)
                log.warning("tick producer fenced by another one; backing off",
                            extra=fields(backoff_s=round(backoff_s, 2)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff_s)
            finally:
                await publisher.stop()
    finally:
        await lease.stop()


async def _live_loop(settings: Settings, publisher: TickPublisher, lease: Lease, step_s: float,
                     clock: Callable[[], datetime], stop: asyncio.Event) -> None:
    """Publish on the grid while this process holds the lease."""
    step = timedelta(seconds=step_s)
    last = await last_tick(settings)
    now = clock()
    nxt = grid_floor(now, step_s) if last is None else last + step
    oldest = grid_floor(now - timedelta(seconds=settings.tick_catchup_max_s), step_s)
    if nxt < oldest:
        log.warning("tick gap beyond the catch-up bound skipped",
                    extra=fields(skipped_from=nxt.isoformat(), skipped_to=oldest.isoformat()))
        nxt = oldest
    if last is not None and nxt <= now:
        log.info("tick catch-up", extra=fields(resume_from=nxt.isoformat()))
    ahead = timedelta(seconds=settings.tick_max_ahead_s)
    published: list[datetime] = [] if last is None else [last]
    # Computed when Prometheus scrapes: it grows while ticks stop, whatever this loop does.
    metrics.TICK_LAG.set_function(
        lambda: (clock() - published[-1]).total_seconds() if published else 0.0)
    try:
        await _publish_grid(publisher, lease, step, nxt, ahead, step_s, clock, stop, published)
    finally:
        metrics.TICK_LAG.set_function(lambda: 0.0)  # a standby publishes nothing


async def _publish_grid(publisher: TickPublisher, lease: Lease, step: timedelta, nxt: datetime,
                        ahead: timedelta, step_s: float, clock: Callable[[], datetime],
                        stop: asyncio.Event, published: list[datetime]) -> None:
    while not stop.is_set() and await lease.poll():
        now = clock()
        if nxt - now > ahead:
            # The grid ran ahead on a clock reading that was wrong (the timeline refused
            # those ticks): waiting for real time to catch up would stall every fire.
            log.warning("clock is behind the published grid: resuming from now", extra=fields(
                grid_at=nxt.isoformat(), now=now.isoformat()))
            nxt = grid_floor(now, step_s) + step
        due: list[datetime] = []
        while nxt <= now and len(due) < BATCH:
            due.append(nxt)
            nxt += step
        if due:
            async with lease.lock:
                if not lease.held:
                    return
                await publisher.publish(due)
            published[:] = [due[-1]]
            continue
        wait_s = min(0.5, max(0.0, (nxt - clock()).total_seconds()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait_s)
