"""Exactly-once under SIGKILL: faust-streaming's built-in guarantee against ours.

The same copy job (source → a sink topic the app does not consume) is killed with SIGKILL
while it is processing, restarted, and finally left to finish. An independent
``read_committed`` reader then counts the sink. faust-streaming 0.15.3's
``processing_guarantee="exactly_once"`` sends sink records outside the transaction, so the
reprocessing after a kill leaves committed duplicates (faust-streaming #177, #517, #323):
the first test pins that behaviour down, so that an upgrade that fixes it is noticed.
faust-streaming with this project's transactional layer (streams/faust) and our own engine
must show 0 duplicates and 0 missing under the same treatment; the faust copy also writes
a table, whose changelog must hold each record exactly once too.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic

from streams.kafka import client as kafka
from streams.settings import Settings
from tests.acceptance import eos_apps
from tests.support import ROOT, eventually

pytestmark = pytest.mark.kafka
RECORDS = 8000
# Our engine is faster (batched sends): a longer backlog keeps ≥5 kills in flight.
CRONORCH_RECORDS = 48000
FANOUT = 50
FAUST_EOS_RECORDS = 6000
FAUST_EOS_FANOUT = 10


def _start(engine: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.acceptance.eos_apps", engine],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


async def _feed(settings: Settings, src: str, records: int) -> None:
    """Publish RECORDS records up front: the copy job then works through a backlog, busy
    sending for most of the time, so a kill lands between a transaction's first send and
    its commit: the window in which a sink outside the transaction leaks duplicates."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                linger_ms=20)
    await producer.start()
    try:
        for i in range(records):
            await producer.send(src, str(i).encode(), key=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _sink(settings: Settings, sink: str) -> Counter[bytes]:
    return Counter(r.value for r in await kafka.read_all(settings, [sink], timeout_s=120)
                   if r.value is not None)


async def _sink_end(settings: Settings, sink: str) -> int:
    client = kafka.consumer(settings, group_id=None)
    await client.start()
    try:
        ends = await client.end_offsets([TopicPartition(sink, p) for p in range(3)])
        return sum(ends.values())
    finally:
        await client.stop()


async def _watched(waiting: Awaitable[None], proc: subprocess.Popen[bytes], engine: str,
                   log: Path) -> None:
    """``waiting``; if it times out, the failure shows the tail of the app's log (the
    log itself lives in the test's tmp directory, gone with the CI machine's run). A
    faust worker is asked for the stacks of all its tasks first (mode's SIGUSR1)."""
    try:
        await waiting
    except AssertionError as exc:
        if engine.startswith("faust") and proc.poll() is None:
            proc.send_signal(signal.SIGWINCH)  # eos_apps: the commit bookkeeping
            proc.send_signal(signal.SIGUSR1)
            await asyncio.sleep(3)
        text = await asyncio.to_thread(log.read_text, errors="replace")
        tail = text.splitlines()[-400:]
        raise AssertionError(f"{exc}\n--- the app's log, last 400 lines ---\n"
                             + "\n".join(tail)) from None


def _run_with_kills(engine: str, settings: Settings, tmp_path: Path, *, kills: int,
                    until_duplicates: bool = False, fanout: int = 1,
                    records: int = RECORDS,
                    tables: tuple[str, ...] = ()) -> tuple[Counter[bytes], int]:
    """Kill ``engine`` with SIGKILL up to ``kills`` times while it copies; return what the
    sink (and each table's changelog) holds, and how many kills landed while the source was
    not fully consumed."""
    run = uuid.uuid4().hex[:8]
    src, sink = f"eos-{engine}-{run}.src", f"eos-{engine}-{run}.sink"
    app_id = f"eos-{engine}-{run}"
    group = app_id if engine.startswith("faust") else f"{app_id}-copy"
    env = {**os.environ, "SRC": src, "SINK": sink, "APP_ID": app_id,
           "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, "METRICS_PORT": "0",
           "FANOUT": str(fanout), "DATADIR": str(tmp_path / "data")}
    log = tmp_path / f"{engine}.log"
    rng = random.Random(17)

    async def consumed() -> int:
        client = kafka.consumer(settings, group_id=group)
        await client.start()
        try:
            return sum([(await client.committed(TopicPartition(src, p))) or 0 for p in range(3)])
        finally:
            await client.stop()

    async def scenario() -> tuple[Counter[bytes], int]:
        async with kafka.admin(settings) as admin:
            await admin.create_topics([NewTopic(src, 3, 1), NewTopic(sink, 3, 1)])
        await _feed(settings, src, records)
        landed = 0
        for _ in range(kills):
            before = await _sink_end(settings, sink)
            proc = _start(engine, env, log)

            async def busy(before: int = before) -> bool:
                return (await _sink_end(settings, sink) > before + 20 * fanout
                        or await consumed() >= records)

            try:
                await _watched(eventually(busy, 90, f"{engine} making progress"), proc, engine,
                               log)
                await asyncio.sleep(rng.uniform(0, 0.5))
            finally:  # also when it timed out: no process outlives its test
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            if await consumed() >= records:
                break
            landed += 1
            if until_duplicates and any(c > 1 for c in (await _sink(settings, sink)).values()):
                break
        proc = _start(engine, env, log)
        try:
            async def finished() -> bool:
                return await consumed() >= records

            await _watched(eventually(finished, 120, f"{engine} finishing"), proc, engine, log)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()  # reaped, or the next test fails on its ResourceWarning
        counts = await _sink(settings, sink)
        for table in tables:
            changelog = await _sink(settings, f"{app_id}-{table}-changelog")
            counts.update(b"%s:%s" % (table.encode(), value) for value in changelog.elements())
        return counts, landed

    return asyncio.run(scenario())


def test_faust_builtin_exactly_once_duplicates_sink_output(settings: Settings,
                                                           tmp_path: Path) -> None:
    counts, landed = _run_with_kills("faust", settings, tmp_path, kills=4, until_duplicates=True)
    assert landed >= 1 and len(counts) == RECORDS
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates > 0, "faust-streaming kept exactly-once for sink topics: revisit engine.py"


def test_faust_with_transactional_layer_exactly_once_under_sigkill(
        settings: Settings, tmp_path: Path) -> None:
    counts, landed = _run_with_kills("faust-eos", settings, tmp_path, kills=5,
                                     fanout=FAUST_EOS_FANOUT, records=FAUST_EOS_RECORDS,
                                     tables=("copies",))
    assert landed >= 5, f"only {landed} kills landed while records were in flight"
    # Before stop 18 nearly every restart skipped 100-300 records per partition as its
    # recovery ended (streams/faust/transport.py, Consumer.resume_partitions).
    skipped = [line for line in (tmp_path / "faust-eos.log").read_text().splitlines()
               if line.startswith(eos_apps.SKIPPED)]
    assert not skipped, skipped[:5]
    expected = FAUST_EOS_RECORDS * FAUST_EOS_FANOUT + FAUST_EOS_RECORDS  # sink + changelog
    assert len(counts) == expected, f"{expected - len(counts)} missing"
    duplicates = {v: c for v, c in counts.items() if c > 1}
    assert not duplicates, f"{len(duplicates)} duplicated"


def test_cronorch_engine_exactly_once_under_sigkill(settings: Settings, tmp_path: Path) -> None:
    counts, landed = _run_with_kills("cronorch", settings, tmp_path, kills=5, fanout=FANOUT,
                                     records=CRONORCH_RECORDS)
    assert landed >= 5, f"only {landed} kills landed while records were in flight"
    expected = CRONORCH_RECORDS * FANOUT
    assert len(counts) == expected, f"{expected - len(counts)} missing"
    duplicates = {v: c for v, c in counts.items() if c > 1}
    assert not duplicates, f"{len(duplicates)} duplicated"
