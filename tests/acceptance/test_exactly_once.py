"""Exactly-once under SIGKILL: faust-streaming's built-in guarantee against ours.

The same copy job (source → a sink topic the app does not consume) is killed with SIGKILL
while it is processing, restarted, and finally left to finish. An independent
``read_committed`` reader then counts the sink. faust-streaming 0.15.3's
``processing_guarantee="exactly_once"`` sends sink records outside the transaction, so the
reprocessing after a kill leaves committed duplicates (faust-streaming #177, #517, #323):
the first test pins that behaviour down, so that an upgrade that fixes it is noticed. Our
engine must show 0 duplicates and 0 missing under the same treatment.
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
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic

from streams import kafka
from streams.settings import Settings
from tests.support import ROOT, eventually

pytestmark = pytest.mark.kafka
RECORDS = 8000
RATE_PER_S = 160


def _start(engine: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.acceptance.eos_apps", engine],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


async def _feed(settings: Settings, src: str) -> None:
    """Publish RECORDS records at a steady pace, so that kills land on work in flight."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                linger_ms=5)
    await producer.start()
    try:
        for i in range(RECORDS):
            await producer.send(src, str(i).encode(), key=str(i).encode())
            if i % 100 == 99:
                await asyncio.sleep(100 / RATE_PER_S)
        await producer.flush()
    finally:
        await producer.stop()


async def _sink(settings: Settings, sink: str) -> Counter[bytes]:
    return Counter(r.value for r in await kafka.read_all(settings, [sink], timeout_s=60)
                   if r.value is not None)


def _run_with_kills(engine: str, settings: Settings, tmp_path: Path, *, kills: int,
                    until_duplicates: bool = False) -> tuple[Counter[bytes], int]:
    """Kill ``engine`` with SIGKILL ``kills`` times while it copies; return the sink and
    how many kills landed on a process that was making progress."""
    run = uuid.uuid4().hex[:8]
    src, sink = f"eos-{engine}-{run}.src", f"eos-{engine}-{run}.sink"
    env = {**os.environ, "SRC": src, "SINK": sink, "APP_ID": f"eos-{engine}-{run}",
           "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, "METRICS_PORT": "0"}
    log = tmp_path / f"{engine}.log"
    rng = random.Random(17)

    async def scenario() -> tuple[Counter[bytes], int]:
        async with kafka.admin(settings) as admin:
            await admin.create_topics([NewTopic(src, 3, 1), NewTopic(sink, 3, 1)])
        feeder = asyncio.create_task(_feed(settings, src))
        landed = 0
        for _ in range(kills):
            before = sum((await _sink(settings, sink)).values())
            proc = _start(engine, env, log)

            async def progressed(before: int = before) -> bool:
                counts = await _sink(settings, sink)
                return sum(counts.values()) > before + 50 or len(counts) >= RECORDS

            await eventually(progressed, 90, f"{engine} making progress")
            in_flight = len(await _sink(settings, sink)) < RECORDS
            await asyncio.sleep(rng.uniform(0, 1.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            landed += in_flight
            counts = await _sink(settings, sink)
            if not in_flight or (until_duplicates and any(c > 1 for c in counts.values())):
                break
        await feeder
        proc = _start(engine, env, log)
        try:
            async def finished() -> bool:
                return len(await _sink(settings, sink)) >= RECORDS

            await eventually(finished, 120, f"{engine} finishing")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        return await _sink(settings, sink), landed

    return asyncio.run(scenario())


def test_faust_builtin_exactly_once_duplicates_sink_output(settings: Settings,
                                                           tmp_path: Path) -> None:
    counts, landed = _run_with_kills("faust", settings, tmp_path, kills=4, until_duplicates=True)
    assert landed >= 1 and len(counts) == RECORDS
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates > 0, "faust-streaming kept exactly-once for sink topics: revisit engine.py"


def test_cronorch_engine_exactly_once_under_sigkill(settings: Settings, tmp_path: Path) -> None:
    counts, landed = _run_with_kills("cronorch", settings, tmp_path, kills=5)
    assert landed >= 5, f"only {landed} kills landed while records were in flight"
    assert len(counts) == RECORDS, f"{RECORDS - len(counts)} missing"
    duplicates = {v: c for v, c in counts.items() if c > 1}
    assert not duplicates, f"{len(duplicates)} duplicated"
