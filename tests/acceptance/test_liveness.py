"""Liveness and clean shutdown against the real broker (this machine's private stack only).

The worker starts on a changelog big enough that its first restore takes seconds; then:
- Kafka is killed inside that first restore and brought back: the worker must either
  process again within 60 s of the broker's return or exit non-zero — never stay up idle
  (it used to: a cancellation inside aiokafka's rebalance listener ended the timeline
  consumer's group coordinator);
- SIGTERM during the restore, during the reset loop that follows a broker loss, and while
  it works through a backlog (batches in flight), ends it within 30 s.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from streams.cli import devstack
from streams.kafka import client as kafka
from streams.processes import tickproducer
from streams.settings import Settings
from streams.testing import changelog
from tests.support import Proc, committed_total, eventually, lags, publish, read_json

pytestmark = pytest.mark.kafka

TASKS_PER_PARTITION = 20_000
RECOVERY_S = 60
STOP_S = 30
OUTAGE_S = 10


def _events(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    found = []
    for line in log.read_bytes().splitlines():
        if line.startswith(b"{"):
            try:
                found.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return found


def _count(log: Path, event: str, role: str | None = "timeline") -> int:
    return sum(1 for e in _events(log)
               if e.get("event") == event and role in (None, e.get("role")))


def _wait_log(log: Path, event: str, timeout_s: float, role: str | None = "timeline") -> None:
    asyncio.run(eventually(lambda: _count(log, event, role) > 0, timeout_s,
                           f"{event!r} ({role}) in {log.name}"))


def _seed(settings: Settings) -> int:
    async def go() -> int:
        partitions = await kafka.partition_count(settings, settings.topics.state_changelog)
        counts = [await changelog.write(settings, p, TASKS_PER_PARTITION)
                  for p in range(partitions)]
        return partitions if all(counts) else 0

    return asyncio.run(go())


def _wait_exit(worker: Proc, timeout_s: float) -> tuple[int, float]:
    assert worker.proc is not None
    started = time.monotonic()
    code = worker.proc.wait(timeout_s)
    return code, time.monotonic() - started


def test_broker_lost_during_first_restore(settings: Settings, stack: devstack.Stack,
                                          tmp_path: Path) -> None:
    partitions = _seed(settings)
    log = tmp_path / "worker.log"
    worker = Proc(settings, "worker", log=log).start()
    try:
        _wait_log(log, "partitions assigned", 120)
        devstack.stop_kafka(stack, sig=signal.SIGKILL)
        restored_at_stop = _count(log, "partition restored")
        assert restored_at_stop < partitions, "the broker must go away inside the restore"
        time.sleep(OUTAGE_S)  # the outage itself, not a wait for a condition
        devstack.start_kafka(stack)
        back = time.monotonic()

        async def recovered() -> str:
            await kafka.wait_ready(settings, timeout_s=RECOVERY_S)
            # Ticks just past the first restored reminders: each partition's task 0 fires.
            first = changelog.T0 + timedelta(days=365)
            await tickproducer.publish_range(settings, first, first + timedelta(seconds=5), 1)

            async def fired_or_exited() -> bool:
                if not worker.alive():
                    return True
                got = await read_json(settings, settings.topics.notifications)
                tasks = {n["task_id"] for n in got if n["type"] == "reminder.due"}
                return {f"t{p}-0" for p in range(partitions)} <= tasks

            await eventually(fired_or_exited, RECOVERY_S - (time.monotonic() - back),
                             "the worker to process again or exit")
            return "exited" if not worker.alive() else "recovered"

        outcome = asyncio.run(recovered())
        if outcome == "exited":
            assert worker.proc is not None and worker.proc.returncode != 0, \
                log.read_text()[-3000:]
        print(f"\nbroker killed with {restored_at_stop}/{partitions} partitions restored; "
              f"{outcome} {time.monotonic() - back:.1f} s after its return")
    finally:
        devstack.start_kafka(stack)
        worker.kill(signal.SIGTERM)


def test_sigterm_during_restore_and_reset_loop(settings: Settings, stack: devstack.Stack,
                                               tmp_path: Path) -> None:
    partitions = _seed(settings)
    # During the first restore, broker up.
    log = tmp_path / "restore.log"
    worker = Proc(settings, "worker", log=log).start()
    try:
        _wait_log(log, "partitions assigned", 120)
        worker.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert _count(log, "partition restored") < partitions
        code, took_s = _wait_exit(worker, STOP_S + 5)
        assert code == 0 and took_s < STOP_S, (code, took_s, log.read_text()[-3000:])
        assert _count(log, "component did not stop in time", role=None) == 0
    finally:
        worker.kill(signal.SIGKILL)

    # In the reset loop: the broker went away inside the restore, which now backs off.
    log = tmp_path / "reset.log"
    worker = Proc(settings, "worker", log=log).start()
    try:
        _wait_log(log, "partitions assigned", 120)
        devstack.stop_kafka(stack, sig=signal.SIGKILL)
        _wait_log(log, "partition reset", 90)
        worker.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        code, took_s = _wait_exit(worker, STOP_S + 5)
        assert code == 0 and took_s < STOP_S, (code, took_s, log.read_text()[-3000:])
        print(f"\nSIGTERM in the reset loop, broker away: exited in {took_s:.1f} s")
    finally:
        devstack.start_kafka(stack)
        worker.kill(signal.SIGKILL)


def test_sigterm_during_batches(settings: Settings, tmp_path: Path) -> None:
    events = [changelog.upserted(p, i).model_dump(mode="json")
              for p in range(4) for i in range(20_000)]  # 5,000 were done between two polls
    asyncio.run(publish(settings, events))
    log = tmp_path / "worker.log"
    worker = Proc(settings, "worker", log=log).start()
    try:
        async def working() -> bool:
            done = await committed_total(settings, "timeline", settings.topics.timeline)
            left = sum(await lags(settings, "rekeyer", settings.topics.task_events))
            return done > 0 and left > 0

        asyncio.run(eventually(working, 120, "the worker amid its backlog"))
        worker.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        code, took_s = _wait_exit(worker, STOP_S + 5)
        assert code == 0 and took_s < STOP_S, (code, took_s, log.read_text()[-3000:])
        assert _count(log, "component did not stop in time", role=None) == 0
        print(f"\nSIGTERM amid batches: exited in {took_s:.1f} s")
    finally:
        worker.kill(signal.SIGKILL)
