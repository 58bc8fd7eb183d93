"""The outbox relay: PostgreSQL ``outbox`` rows → ``todo.task-events``, in order per user.

    Todo API / spawn sink ──(same transaction as the change)──► outbox
    outbox ──relay (any number)──► todo.task-events (key user_id)

A pass takes the users of the oldest unpublished rows; for each, in one PostgreSQL
transaction, it tries the user's advisory lock (``pg_try_advisory_xact_lock``; a user another
relay holds is skipped, never waited for), reads that user's unpublished rows in ``outbox_id``
order, sends them with the idempotent producer keyed by ``user_id``, waits until the broker
acknowledged every one, and only then marks them published and commits. One user's rows are
therefore published by one relay at a time, in order, and a later relay only sees what is
still unpublished once the earlier one committed. Any number of relays is safe.

Delivery is at-least-once: a crash (or a lost connection) after the acknowledgement and
before the commit publishes those rows again. Consumers de-duplicate by version: the worker
ignores an event whose version is not newer than the one it applied (DESIGN §4).
Per-user order is ``outbox_id`` order, which is commit order for writers that lock the
changed row (a task's next version cannot be written before its previous one committed).

Wake-up: a trigger on ``outbox`` notifies channel ``cronorch_outbox`` at commit; the relay
LISTENs on a dedicated connection and also polls every ``poll_interval_s`` in case a
notification is lost (a dropped LISTEN connection is re-opened on the next pass).
A row Kafka can never take (over ``max_message_bytes``, or refused for good) goes to the
dead letters instead (source ``outbox``, offset its ``outbox_id``) and is marked published,
so one bad row never blocks its user or the users after it.

Owns the loop and the Kafka side; every SQL statement is in the PostgreSQL adapter. The
clock is read only for ``published_at`` and a dead letter's ``failed_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from streams import codec, retry
from streams.errors import RecordRejected, SchedulerError
from streams.kafka import client as kafka
from streams.kafka.client import Output
from streams.kafka.engine import letter_key
from streams.postgres.connector import Connector
from streams.postgres.outbox import PgOutboxStore
from streams.processes import lifecycle
from streams.settings import Settings
from streams.stores import Listening, OutboxRow, OutboxStore
from streams.telemetry import metrics
from streams.telemetry.logs import fields

log = logging.getLogger("cronorch.relay")
CHANNEL = "cronorch_outbox"
BACKOFF = retry.Backoff(base_s=0.5, cap_s=30.0)


class Relay:
    """Publishes outbox rows; IO through ``db`` and ``producer``, time through ``clock``."""

    def __init__(self, settings: Settings, db: OutboxStore, producer: Any, *,
                 clock: Callable[[], datetime], batch_size: int = 500,
                 scan: int = 1000) -> None:
        self.settings = settings
        self.db = db
        self.producer = producer
        self.clock = clock
        self.batch_size = batch_size
        self.scan = scan
        self.counts: Counter[str] = Counter()

    async def _publish(self, rows: list[OutboxRow]) -> None:
        outputs = [self._output(r) for r in rows]
        try:
            await kafka.send(self.producer, outputs)
        except RecordRejected:
            # One row the broker refuses for good (too large for the topic, invalid) must
            # not hold its user, nor the users after it, forever: find it and dead-letter it.
            # Rows sent before it may be sent twice (at-least-once; versions de-duplicate).
            for row, out in zip(rows, outputs, strict=True):
                await self._send_or_dead_letter(row, out)

    def _output(self, row: OutboxRow) -> Output:
        key, value = row.user_id.encode(), row.payload.encode()
        if len(key) + len(value) <= self.settings.max_message_bytes:
            return Output(self.settings.topics.task_events, key, value)
        return self._dead_letter(row, f"outbox row of {len(key) + len(value)} bytes is over "
                                      f"max.message.bytes ({self.settings.max_message_bytes})")

    async def _send_or_dead_letter(self, row: OutboxRow, out: Output) -> None:
        try:
            await kafka.send(self.producer, [out])
            return
        except RecordRejected as exc:
            if out.topic == self.settings.topics.dead_letters:
                raise
            refused = type(exc.__cause__ or exc).__name__
        letter = self._dead_letter(row, f"refused by Kafka: {refused}")
        await kafka.send(self.producer, [letter])

    def _dead_letter(self, row: OutboxRow, reason: str) -> Output:
        """A dead letter for an outbox row (source ``outbox``, offset its ``outbox_id``)."""
        log.warning("outbox row dead-lettered", extra=fields(
            outbox_id=row.outbox_id, reason=reason))
        self.counts["dead_letters"] += 1
        metrics.DEAD_LETTERS.labels("relay").inc()
        letter = codec.dead_letter(reason, topic="outbox", partition=0, offset=row.outbox_id,
                                   key=row.user_id.encode(), value=row.payload.encode(),
                                   failed_at=self.clock())
        return Output(self.settings.topics.dead_letters, letter_key(row.user_id.encode()),
                      codec.dumps(letter))

    async def pass_once(self) -> int:
        """One batch for each user with unpublished rows that no other relay holds."""
        published = 0
        for user_id in await self.db.outbox_pending_users(self.scan):
            count = await self.db.publish_outbox(user_id, self.batch_size, self._publish,
                                                 self.clock)
            if count is None:
                self.counts["users_busy"] += 1
                continue
            published += count
        self.counts["published"] += published
        metrics.OUTBOX_PUBLISHED.inc(published)
        return published

    async def drain(self) -> int:
        """Passes until one publishes nothing; returns the rows published."""
        total = 0
        while count := await self.pass_once():
            total += count
        return total


async def relay_loop(relay: Relay, stop: asyncio.Event, *, poll_interval_s: float,
                     listen: bool = True, rng: random.Random | None = None) -> None:
    """Drain, then sleep until notified, ``poll_interval_s`` passed, or ``stop``."""
    rng = rng or random.Random()
    wake = asyncio.Event()
    listener: Listening | None = None
    failures = 0
    try:
        while not stop.is_set():
            if listen and (listener is None or not listener.alive()):
                listener = await _listen(relay.db, wake, listener)
            wake.clear()  # before the pass: a notification during it means "pass again"
            try:
                published = await relay.drain()
            except SchedulerError as exc:
                if not exc.retriable:
                    raise
                relay.counts["retries"] += 1
                log.warning("unavailable: relay pass retried", extra=fields(
                    error_class=type(exc).__name__, error_message=str(exc)[:300]))
                failures += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), BACKOFF.delay_s(failures, rng))
                continue
            failures = 0
            if published:
                log.debug("outbox rows published", extra=fields(rows=published))
            cause = await _sleep(wake, stop, poll_interval_s)
            metrics.OUTBOX_WAKEUPS.labels(cause).inc()
            relay.counts[f"wakeups_{cause}"] += 1
    finally:
        if listener is not None:
            await listener.close()


async def _listen(db: OutboxStore, wake: asyncio.Event,
                  old: Listening | None) -> Listening | None:
    if old is not None:
        await old.close()
        log.warning("LISTEN connection lost: re-opening it")
    try:
        listener = await db.listen(CHANNEL, wake.set)
    except SchedulerError as exc:
        if not exc.retriable:
            raise
        return None  # polling covers the gap; the next pass tries again
    wake.set()  # rows may have arrived while nobody listened
    return listener


async def _sleep(wake: asyncio.Event, stop: asyncio.Event, timeout_s: float) -> str:
    waits = {asyncio.ensure_future(wake.wait()): "notify",
             asyncio.ensure_future(stop.wait()): "stop"}
    done, pending = await asyncio.wait(waits, timeout=timeout_s,
                                       return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if not done:
        return "poll"
    return "notify" if any(waits[t] == "notify" for t in done) else "stop"


async def run(settings: Settings, *, poll_interval_s: float = 1.0, batch_size: int = 500,
              listen: bool = True, stop: asyncio.Event | None = None,
              clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
    """``cronorch relay``: publish the outbox until SIGTERM/SIGINT (or ``stop``)."""
    stop = await lifecycle.start(settings, stop)
    db = await Connector.open(settings)
    producer = kafka.producer(settings, None)
    relay = Relay(settings, PgOutboxStore(db), producer, clock=clock, batch_size=batch_size)
    started = time.monotonic()
    try:
        await db.wait_for_schema()
        await kafka.start(producer)
        log.info("relay started", extra=fields(poll_interval_s=poll_interval_s, listen=listen,
                                               batch_size=batch_size))
        summary = lifecycle.every(30, lambda: _summary("relay summary", relay, started))
        try:
            await relay_loop(relay, stop, poll_interval_s=poll_interval_s, listen=listen)
        finally:
            summary.cancel()
    finally:
        await kafka.stop_quietly(producer)
        await db.close()
        _summary("relay stopped", relay, started)


def _summary(event: str, relay: Relay, started: float) -> None:
    c = relay.counts
    log.info(event, extra=fields(
        published=c["published"], users_busy=c["users_busy"], retries=c["retries"],
        wakeups_notify=c["wakeups_notify"], wakeups_poll=c["wakeups_poll"],
        duration_s=round(time.monotonic() - started, 3)))
