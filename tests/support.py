"""Test support: isolated settings, publishing, worker subprocesses and waiting helpers."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition

from streams.kafka import client as kafka
from streams.settings import Settings, Topics

ROOT = Path(__file__).resolve().parent.parent


def settings_for(app_id: str, **overrides: Any) -> Settings:
    topics = Topics(**{f: f"{app_id}.{getattr(Topics(), f)}" for f in Topics.model_fields})
    return Settings.from_env().model_copy(update={
        "app_id": app_id, "topics": topics, "metrics_port": 0, **overrides})


def env_for(settings: Settings) -> dict[str, str]:
    """The environment a subprocess needs to see exactly ``settings``."""
    return settings.environ()


async def publish(settings: Settings, events: Iterable[dict[str, Any] | bytes],
                  key: Callable[[dict[str, Any]], str] | None = None) -> int:
    """Publish task events to todo.task-events keyed by user id; raw bytes go with key b'raw'."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                enable_idempotence=True, linger_ms=5)
    await producer.start()
    count = 0
    try:
        for event in events:
            if isinstance(event, bytes):
                await producer.send(settings.topics.task_events, value=event, key=b"raw")
            else:
                user = event["task"]["user_id"] if "task" in event else event["user_id"]
                await producer.send(settings.topics.task_events, value=orjson.dumps(event),
                                    key=user.encode())
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count


async def lags(settings: Settings, role: str, topic: str) -> list[int]:
    """Per partition of ``topic``: records the group of ``role`` has not committed yet."""
    client = kafka.consumer(settings, group_id=settings.group_id(role))
    await client.start()
    try:
        tps = [TopicPartition(topic, p)
               for p in range(await kafka.partition_count(settings, topic))]
        ends = await client.end_offsets(tps)
        return [ends[tp] - ((await client.committed(tp)) or 0) for tp in tps]
    finally:
        await client.stop()


async def committed_total(settings: Settings, role: str, topic: str) -> int:
    """The sum of the committed offsets of ``role``'s group over ``topic``'s partitions."""
    client = kafka.consumer(settings, group_id=settings.group_id(role))
    await client.start()
    try:
        total = 0
        for p in range(await kafka.partition_count(settings, topic)):
            total += (await client.committed(TopicPartition(topic, p))) or 0
        return total
    finally:
        await client.stop()


async def caught_up(settings: Settings, role: str, topic: str, *, transactional: bool,
                    timeout_s: float = 120) -> None:
    """Wait until ``role`` has committed everything in ``topic``.

    A topic written in transactions ends each one with a control record that no consumer
    commits past, so there one record of lag per partition means caught up.
    """
    slack = 1 if transactional else 0

    async def check() -> bool:
        return all(lag <= slack for lag in await lags(settings, role, topic))

    await eventually(check, timeout_s, f"{role} caught up on {topic}")


async def eventually(check: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


async def read_json(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every committed record of ``topic`` (read_committed), decoded."""
    records = await kafka.read_all(settings, [topic], timeout_s=60)
    return [orjson.loads(r.value) for r in records if r.value is not None]


# The worker's runtimes (``cronorch worker --runtime``): acceptance tests of the worker run
# on both, since both host the same handlers and must write the same records.
RUNTIMES = ("native", "faust")


def worker_args(runtime: str) -> tuple[str, ...]:
    return ("worker",) if runtime == "native" else ("worker", "--runtime", runtime)


class Proc:
    """A ``cronorch`` subprocess with the test's settings; logs go to a file."""

    def __init__(self, settings: Settings, *args: str, log: Path) -> None:
        self.args = args
        self.settings = settings
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", *self.args], cwd=ROOT,
                env=env_for(self.settings), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        return self

    def kill(self, sig: int = signal.SIGKILL, timeout_s: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
