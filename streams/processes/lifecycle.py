"""The start of every long-running process: JSON logging, the metrics endpoint, broker
readiness, the topics, and a stop event set by SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

from streams.kafka import client as kafka
from streams.settings import Settings
from streams.telemetry import logs, metrics


async def start(settings: Settings, stop: asyncio.Event | None = None, *,
                ensure_topics: bool = True) -> asyncio.Event:
    """Prepare the process; return the event that asks it to stop (``stop`` if given)."""
    logs.configure(settings.log_level)
    metrics.declare_series()
    metrics.serve(settings.metrics_port)
    await kafka.wait_ready(settings)
    if ensure_topics:
        await kafka.ensure_topics(settings)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def every(interval_s: float, action: Callable[[], None]) -> asyncio.Task[None]:
    """Run ``action`` every ``interval_s`` seconds until the returned task is cancelled
    (the periodic execution summaries)."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval_s)
            action()

    return asyncio.create_task(loop())
