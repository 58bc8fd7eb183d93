"""Copy apps for the exactly-once comparison: source topic → sink topic.

``python -m tests.acceptance.eos_apps faust`` runs faust-streaming with its own
``processing_guarantee="exactly_once"``; ``… faust-eos`` runs faust-streaming with this
project's transactional layer (``broker="cronorch://…"``, streams/faust), whose copy also
writes each record to a table, so that its changelog is checked too; ``… cronorch`` runs
the copy on this project's engine. The sink is a topic the app never consumes, as
todo.notifications is for the worker.
Environment: SRC, SINK, APP_ID, KAFKA_BOOTSTRAP_SERVERS, FANOUT, DATADIR.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterable
from typing import Any

from streams.kafka.client import Output, Record
from streams.kafka.engine import Processor
from streams.settings import Settings
from streams.telemetry import logs


def run_faust() -> None:
    import faust

    app = faust.App(
        os.environ["APP_ID"], broker=f"kafka://{os.environ['KAFKA_BOOTSTRAP_SERVERS']}",
        store="memory://", processing_guarantee="exactly_once", web_enabled=False,
        broker_commit_every=50, broker_commit_interval=0.5,
        consumer_auto_offset_reset="earliest", datadir=os.environ.get("DATADIR", "."),
    )
    source = app.topic(os.environ["SRC"], value_serializer="raw", key_serializer="raw")
    sink = app.topic(os.environ["SINK"], value_serializer="raw", key_serializer="raw")

    @app.agent(source)
    async def copy(stream):  # type: ignore[no-untyped-def]
        async for value in stream:
            await sink.send(value=value)

    # The CLI turns the web server back on (port 6066) unless told not to.
    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
    app.main()


SKIPPED = "SKIPPED RECORDS"


def run_faust_eos() -> None:
    import faust

    fanout = int(os.environ.get("FANOUT", "1"))
    app = faust.App(
        os.environ["APP_ID"], broker=f"cronorch://{os.environ['KAFKA_BOOTSTRAP_SERVERS']}",
        store="memory://", processing_guarantee="exactly_once", web_enabled=False,
        broker_commit_every=50, broker_commit_interval=0.5,
        consumer_auto_offset_reset="earliest", datadir=os.environ.get("DATADIR", "."),
        # A SIGKILLed member holds its partitions until its session expires.
        broker_session_timeout=6, broker_heartbeat_interval=1,
        key_serializer="raw", value_serializer="raw",
    )
    source = app.topic(os.environ["SRC"], value_serializer="raw", key_serializer="raw")
    sink = app.topic(os.environ["SINK"], value_serializer="raw", key_serializer="raw")
    copies = app.Table("copies", partitions=3)

    @app.task
    async def dump_on_sigwinch() -> None:
        # The test sends SIGWINCH to a run that stalls: the commit bookkeeping, logged.
        asyncio.get_running_loop().add_signal_handler(signal.SIGWINCH, _dump_state, app)

    last: dict[int, int] = {}  # partition -> offset of the last event seen

    @app.agent(source)
    async def copy(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            # The source holds no transaction markers and nothing rebalances within one
            # process, so offsets only ever step by one: a jump is records skipped.
            p, offset = event.message.partition, event.message.offset
            if p in last and offset > last[p] + 1:
                print(f"{SKIPPED} partition {p}: {last[p] + 1}..{offset - 1}",
                      file=sys.stderr, flush=True)
            last[p] = offset
            # The table write (faust's buffered send_soon) comes first, so that it is
            # often made while the partition commits and must wait for the next
            # transaction. Fan-out widens each transaction, so that kills land between
            # its first send and its commit.
            copies[event.key] = event.value
            for j in range(fanout):
                await sink.send(key=event.key, value=event.value if fanout == 1 else
                                b"%s-%d" % (event.value, j))

    # The CLI turns the web server back on (port 6066) unless told not to. At info, the
    # log says where a stalled run stood (the test shows its tail when one times out).
    sys.argv = [sys.argv[0], "worker", "-l", "info", "--without-web"]
    app.main()


def _dump_state(app: Any) -> None:
    consumer = app.consumer
    lines = [f"STATE flow_active={consumer.flow_active} "
             f"flow_control={app.flow_control.is_active()} "
             f"commit_fut={consumer._commit_fut} generation={app.consumer_generation_id}"]
    for tp in sorted(consumer.assignment()):
        acked = consumer._acked.get(tp, [])
        unacked = sorted(m.offset for m in list(consumer._unacked_messages) if m.tp == tp)
        lines.append(
            f"STATE {tp.topic}:{tp.partition} committed={consumer._committed_offset.get(tp)} "
            f"read={consumer._read_offset.get(tp)} acked={acked[:8]}..{len(acked)} "
            f"unacked={unacked[:8]}..{len(unacked)} gap={consumer._gap.get(tp)} "
            f"active={tp in consumer._active_partitions} "
            f"paused={tp in consumer._paused_partitions}")
    for tp, txn in getattr(consumer.transactions, "transactions", {}).items():
        dirty = sorted(txn.dirty)
        lines.append(
            f"STATE txn {tp.topic}:{tp.partition} cut={txn.cut} dirty={dirty[:3]}..{dirty[-3:]} "
            f"committed={txn.committed} begun={txn.begun} sealed={txn.sealed} "
            f"inflight={txn.inflight} held={len(txn.held)} buffered={len(txn.buffered)} "
            f"opened={txn.opened.is_set()} locked={txn.lock.locked()} failure={txn.failure!r}")
    print("\n".join(lines), file=sys.stderr, flush=True)


class Copy:
    changelog_topic = None

    def assign(self, partition: int, changelog: Iterable[Record]) -> None:
        pass

    def revoke(self, partition: int) -> None:
        pass

    def process(self, partition: int, records: list[Record]) -> list[Output]:
        # Fan-out widens each transaction, so that kills land between its first send and
        # its commit: the window in which a non-transactional sink would leak duplicates.
        fanout = int(os.environ.get("FANOUT", "1"))
        return [Output(os.environ["SINK"], r.key, r.value if fanout == 1 else
                       b"%s-%d" % (r.value or b"", j))
                for r in records for j in range(fanout)]


def run_cronorch() -> None:
    settings = Settings.from_env().model_copy(update={"app_id": os.environ["APP_ID"]})

    async def main() -> None:
        logs.configure("INFO")
        await Processor(settings, "copy", os.environ["SRC"], Copy()).run(asyncio.Event())

    asyncio.run(main())


if __name__ == "__main__":
    {"faust": run_faust, "faust-eos": run_faust_eos, "cronorch": run_cronorch}[sys.argv[1]]()
