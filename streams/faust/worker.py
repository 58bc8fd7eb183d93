"""Partition handlers as faust agents: the runtime behind ``cronorch worker --runtime faust``.

:class:`Processor` is this runtime's twin of ``streams.kafka.engine.Processor``: built the
same way (settings, role, source topic, a ``PartitionHandler``) and run the same way
(``run(stop)``), so the worker hosts the same pure handlers — the re-keyer and the timeline
agent — on either. What it owns:

- **One faust app per role**, whose id is the role's consumer group (``<app>-<role>``): the
  committed offsets, the lag KEDA scales on and the checks of ``cronorch backfill`` are the
  same whichever runtime runs, and a worker can be switched from one runtime to the other
  on the same topics without losing its place. faust's assignor protocol differs from
  aiokafka's, so the broker refuses a group mixing both: switch by stopping one, then
  starting the other. A refused faust member would wait forever; it exits instead when it
  has not joined in ``JOIN_TIMEOUT_S`` (the engine's consumer raises at once).
- **Transactions** through the ``cronorch://`` transport (``streams.faust.transport``), with
  the engine's per-partition producers: the same client settings and the same transactional
  ids (``<app>-<role>-<p>``), so either runtime fences what the other left open.
- **One event at a time**: the agent hands each event to ``handler.process(p, [record])``,
  fits the outputs to ``max.message.bytes`` (``engine.fit``) and sends them; the transport
  puts them into p's transaction, and faust commits p's offset in that transaction every
  commit interval. faust's per-event acks are what the transport's commit accounting
  stands on (an event is acked only once all its sends are made), hence no ``take()``.
- **State**: no faust Table. On the first event of p after an assignment, p's changelog
  partition is read ``read_committed`` and given to ``handler.assign`` off the event loop;
  the changelog records are the handler's own outputs, so they are the engine's keys and
  bytes and either runtime restores what the other wrote. Restoring in the agent rather
  than in the assignment callback keeps it out of the rebalance listener, and faust's
  revoke waits for the event in flight (its restore included) before handing p over. A
  revoke drops p's state (``handler.revoke``); faust's eager rebalances revoke everything,
  so, as on the engine, every rebalance restores the partitions it assigns.
- **Failures**: an error no record caused (the engine would reset the partition and retry)
  aborts every open transaction and crashes the app; ``run`` raises it, the process exits
  non-zero and is restarted, and the next owner restores from the changelog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from typing import Any

import faust
from faust.types import TP

from streams.errors import ComponentStopped
from streams.faust import transport
from streams.kafka import client as kafka
from streams.kafka.client import Record
from streams.kafka.engine import REQUEST_TIMEOUT_S, PartitionHandler, fit
from streams.settings import Settings
from streams.telemetry import health, metrics
from streams.telemetry.logs import fields

log = logging.getLogger("cronorch.faust")
STOP_TIMEOUT_S = 20.0  # a faust app's stop commits what its agents finished: bounded
# faust commits on its own timer; the engine commits once per fetched batch, at most
# ``commit_interval_ms`` apart. This is the closest faust knob, with a floor that keeps a
# transaction per partition from costing more than the work it commits.
MIN_COMMIT_INTERVAL_S = 0.25
COMMIT_EVERY = 2000  # events; the engine's largest batch
# A member that has not completed a join by then is not going to: the broker refuses it
# for good when the group's members use another assignor (the other runtime's workers),
# and faust then waits forever. Exiting lets it be restarted and try again; a slow join
# is bounded by the rebalance timeout, well below this.
JOIN_TIMEOUT_S = 120.0


class _Transactions(transport.TransactionManager):
    """The transport's transaction manager with the engine's producers and ids."""

    app: _App

    def __init__(self, transport: Any, **kwargs: Any) -> None:
        super().__init__(transport, **kwargs)
        self.role = self.app.processor.role

    def partition_producer(self, tp: TP) -> Any:
        settings = self.app.processor.settings
        return kafka.producer(settings,
                              settings.transactional_id(self.app.processor.role, tp.partition))

    def on_committed(self, tp: TP, offset: int) -> None:
        highwater: int | None = None
        # Only for the lag metric: a partition the client no longer has (a revoke under
        # way) must not turn a good commit into a failure.
        with contextlib.suppress(Exception):
            highwater = self.consumer.highwater(tp)
        self.app.processor.committed(tp.partition, offset, highwater)


class _Transport(transport.Transport):
    TransactionManager = _Transactions


class _App(faust.App):
    """A faust app bound to the processor that hosts its agent."""

    processor: Processor

    def _new_transport(self) -> Any:
        # The cronorch:// scheme resolves to the plain transport; this app's consumer needs
        # the subclass above (faust builds the transaction manager from the consumer's).
        return _Transport(self.conf.broker_consumer, self)


def _credentials(settings: Settings) -> Any:
    """The broker credentials of ``settings`` in faust's terms (None for PLAINTEXT)."""
    options = kafka.connection(settings)
    context = options.get("ssl_context")
    if "sasl_mechanism" in options:
        return faust.SASLCredentials(
            username=options["sasl_plain_username"], password=options["sasl_plain_password"],
            ssl_context=context, mechanism=options["sasl_mechanism"])
    if context is not None:
        return faust.SSLCredentials(context)
    return None


class Processor:
    """One role's faust app and agent, hosting ``handler`` (see the module docstring)."""

    def __init__(self, settings: Settings, role: str, source_topic: str,
                 handler: PartitionHandler) -> None:
        self.settings = settings
        self.role = role
        self.name = f"faust {role}"
        self.source_topic = source_topic
        self.handler = handler
        self.app: _App | None = None
        self.restored: set[int] = set()
        self.restoring: set[int] = set()
        self.joined = False
        self.crashed: BaseException | None = None
        self.ended = False
        self.events = 0
        health.HEALTH.register(self)

    # --- health (called from the HTTP thread: plain reads only) --------------------------

    def alive(self) -> str | None:
        if self.crashed is not None:
            return f"faust app crashed: {type(self.crashed).__name__}"
        return "stopped" if self.ended else None

    def ready(self) -> str | None:
        if not self.joined:
            return "no partitions assigned yet"
        if self.restoring:
            return f"restoring partitions {sorted(self.restoring)}"
        return None

    # --- the app -----------------------------------------------------------------------

    def _build(self, datadir: str) -> _App:
        settings = self.settings
        hosts = [h.strip() for h in settings.kafka_bootstrap_servers.split(",") if h.strip()]
        app = _App(
            settings.group_id(self.role),
            broker=[f"cronorch://{host}" for host in hosts],
            broker_credentials=_credentials(settings),
            processing_guarantee="exactly_once",
            store="memory://", datadir=datadir, autodiscover=False, web_enabled=False,
            # The topics are the lifecycle's (``ensure_topics``); no assignor leader topic.
            topic_allow_declare=False, topic_disable_leader=True,
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=max(settings.commit_interval_ms / 1000,
                                       MIN_COMMIT_INTERVAL_S),
            broker_commit_every=COMMIT_EVERY,
            broker_session_timeout=settings.session_timeout_ms / 1000,
            broker_heartbeat_interval=1.0,
            key_serializer="raw", value_serializer="raw",
        )
        app.processor = self
        source = app.topic(self.source_topic, key_serializer="raw", value_serializer="raw")
        app.agent(source, name=f"cronorch.{self.role}")(self._agent)
        app.on_partitions_revoked.connect(self._revoked)
        app.on_partitions_assigned.connect(self._assigned)
        return app

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop``; raises when the app crashes or stops on its own.
        Cancelling it stops the app, bounded in time (what is not committed is aborted)."""
        with tempfile.TemporaryDirectory(prefix=f"cronorch-faust-{self.role}-") as datadir:
            app = self.app = self._build(datadir)
            # faust's own Worker sets this; without it faust runs no transactions at all.
            app.in_worker = True
            starting = asyncio.ensure_future(app.start())
            stopping = asyncio.ensure_future(stop.wait())
            ended = asyncio.ensure_future(app.wait_until_stopped())
            metrics.PROCESSOR_UP.labels(self.role).set(1)
            loop = asyncio.get_running_loop()
            join_by = loop.time() + JOIN_TIMEOUT_S
            try:
                waiting = {starting, stopping, ended}
                while not (stopping.done() or ended.done()):
                    done, waiting = await asyncio.wait(
                        waiting, timeout=None if self.joined else 1.0,
                        return_when=asyncio.FIRST_COMPLETED)
                    if starting in done and starting.exception() is not None:
                        raise starting.exception()  # type: ignore[misc]
                    if not self.joined and loop.time() > join_by:
                        raise ComponentStopped(self.name, (
                            f"did not join group {app.conf.id} in {JOIN_TIMEOUT_S:.0f} s "
                            "(workers of the other runtime in the group?)"))
                if app.crashed:
                    self.crashed = app.crash_reason or ComponentStopped(self.name, "crashed")
                    raise self.crashed
                if not stop.is_set():
                    raise ComponentStopped(self.name, "stopped on its own")
            finally:
                metrics.PROCESSOR_UP.labels(self.role).set(0)
                for task in (starting, stopping, ended):
                    task.cancel()
                with contextlib.suppress(Exception, asyncio.TimeoutError):
                    await asyncio.wait_for(app.stop(), STOP_TIMEOUT_S)
                self.ended = True

    # --- rebalances (faust's signals, sent inside its rebalance callbacks) -------------

    def _revoked(self, sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        revoked: set[TP] = args[0]
        for tp in revoked:
            if tp.topic == self.source_topic:
                self.restored.discard(tp.partition)
                self.handler.revoke(tp.partition)
        log.info("partitions revoked", extra=fields(
            role=self.role, partitions=sorted(tp.partition for tp in revoked
                                              if tp.topic == self.source_topic)))

    def _assigned(self, sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        assigned: set[TP] = args[0]
        self.joined = True
        log.info("partitions assigned", extra=fields(
            role=self.role, partitions=sorted(tp.partition for tp in assigned
                                              if tp.topic == self.source_topic)))

    # --- the agent ---------------------------------------------------------------------

    async def _agent(self, stream: Any) -> None:
        async for event in stream.events():
            try:
                await self._handle(event.message)
            except Exception as exc:
                # What the engine would reset p for; here nothing more may commit.
                log.error("processing failed: aborting and stopping", exc_info=exc,
                          extra=fields(role=self.role, partition=event.message.partition,
                                       offset=event.message.offset))
                assert self.app is not None
                transactions = self.app.consumer.transactions
                if isinstance(transactions, transport.TransactionManager):
                    await transactions.fail(exc)
                else:
                    await self.app.crash(exc)
                return

    async def _handle(self, message: Any) -> None:
        p = message.partition
        if p not in self.restored:
            await self._restore(p)
        # faust keeps the broker timestamp in seconds; the handlers date dead letters and
        # judge ticks by the record's milliseconds, as the engine hands them over.
        record = Record(message.topic, p, message.offset, message.key, message.value,
                        round(message.timestamp * 1000))
        outputs = fit(self.settings, self.role, p, record, self.handler.process(p, [record]))
        assert self.app is not None
        producer = self.app.producer
        for out in outputs:
            await producer.send(out.topic, out.key, out.value, out.partition, None, None)
        self.events += 1
        metrics.RECORDS.labels(self.role).inc()

    async def _restore(self, p: int) -> None:
        """p's state from its changelog partition. The transport started p's producer when
        p was assigned, fencing (and aborting) whatever a previous owner left open, so the
        changelog read here is the state that p's committed offset stands on."""
        started = time.monotonic()
        self.restoring.add(p)
        try:
            entries: list[Record] = []
            topic = self.handler.changelog_topic
            if topic is not None:
                await kafka.read_partition(self.settings, topic, p, entries.append,
                                           stall_timeout_s=REQUEST_TIMEOUT_S)
            # Rebuilding a large state takes seconds of CPU: off the event loop, so that
            # heartbeats and the health endpoint go on.
            await asyncio.to_thread(self.handler.assign, p, entries)
        finally:
            self.restoring.discard(p)
        self.restored.add(p)
        log.info("partition restored", extra=fields(
            role=self.role, partition=p, changelog_records=len(entries),
            duration_s=round(time.monotonic() - started, 3)))

    def committed(self, p: int, offset: int, highwater: int | None) -> None:
        """p's transaction committed up to ``offset``: its outputs are readable
        ``read_committed`` now."""
        committed_at_s = time.time()
        on_commit = getattr(self.handler, "committed", None)
        if on_commit is not None:
            on_commit(p, committed_at_s)
        metrics.LAST_COMMIT.labels(self.role).set(committed_at_s)
        if highwater is not None:  # the lag the "no commits while lagging" alert reads
            metrics.CONSUMER_LAG.labels(self.role, str(p)).set(max(0, highwater - offset))


__all__ = ["Processor"]
