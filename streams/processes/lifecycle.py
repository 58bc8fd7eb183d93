"""The start and the end of every long-running process: JSON logging, the HTTP endpoint
(/metrics, /healthz, /readyz), broker readiness, the topics, a stop event set by
SIGTERM/SIGINT, and the supervision of the process's tasks (``supervise``): a task that
ends on its own ends the process non-zero, and a stop is bounded by ``SHUTDOWN_S``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping
from typing import Any

from streams.errors import ComponentStopped
from streams.kafka import client as kafka
from streams.settings import Settings
from streams.telemetry import health, logs, metrics
from streams.telemetry.logs import fields

log = logging.getLogger("cronorch.lifecycle")

# Kubernetes sends SIGKILL 30 s after SIGTERM by default (terminationGracePeriodSeconds):
# the tasks get GRACE_S to finish what they are doing, then are cancelled, and their
# clean-up (abort the open transaction, leave the group) gets the rest.
SHUTDOWN_S = 25.0
GRACE_S = 10.0

_beat: asyncio.Task[None] | None = None


async def start(settings: Settings, stop: asyncio.Event | None = None, *,
                ensure_topics: bool = True) -> asyncio.Event:
    """Prepare the process; return the event that asks it to stop (``stop`` if given)."""
    global _beat
    logs.configure(settings.log_level)
    metrics.declare_series()
    health.serve(settings.metrics_port)
    if _beat is None or _beat.done() or _beat.get_loop() is not asyncio.get_running_loop():
        _beat = asyncio.create_task(health.HEALTH.beating(), name="health-beat")
    await kafka.wait_ready(settings)
    if ensure_topics:
        await kafka.ensure_topics(settings)
    # Installed only now: until here SIGTERM keeps its default effect, ending the process
    # at once, since nothing would watch the stop event yet.
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    health.HEALTH.started = True
    return stop


async def supervise(stop: asyncio.Event, tasks: Mapping[str, asyncio.Task[Any]], *,
                    grace_s: float = GRACE_S, shutdown_s: float = SHUTDOWN_S) -> None:
    """Run until ``stop`` is set or one of ``tasks`` ends, then stop them all.

    Every task is meant to run until ``stop``: one that ends first — raising, cancelled, or
    returning — raises (its exception, or ``ComponentStopped``), so the process exits
    non-zero and its supervisor restarts it instead of leaving it up doing nothing. On the
    way out ``stop`` is set, the tasks get ``grace_s`` to finish, then they are cancelled
    and get the rest of ``shutdown_s`` to clean up; a task still running after that is
    left behind (the process is exiting).
    """
    stopping = asyncio.ensure_future(stop.wait())
    failure: BaseException | None = None
    try:
        done, _ = await asyncio.wait([stopping, *tasks.values()],
                                     return_when=asyncio.FIRST_COMPLETED)
        for name, task in tasks.items():
            if task not in done:
                continue
            if task.cancelled():
                failure = ComponentStopped(name, "was cancelled")
            elif task.exception() is not None:
                failure = task.exception()
            elif not stop.is_set():
                failure = ComponentStopped(name, "returned before the process was stopped")
            else:
                continue
            log.error("component ended: stopping the process", exc_info=failure,
                      extra=fields(component=name))
            break
    finally:
        stop.set()
        stopping.cancel()
        await _wind_down(tasks, grace_s, shutdown_s)
    if failure is not None:
        raise failure


async def _wind_down(tasks: Mapping[str, asyncio.Task[Any]], grace_s: float,
                     shutdown_s: float) -> None:
    running = [t for t in tasks.values() if not t.done()]
    if running:
        _, running_set = await asyncio.wait(running, timeout=grace_s)
        for task in running_set:
            task.cancel()
        if running_set:
            _, left = await asyncio.wait(running_set, timeout=max(0.0, shutdown_s - grace_s))
            for name, task in tasks.items():
                if task in left:
                    log.error("component did not stop in time", extra=fields(component=name))
    for task in tasks.values():
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: reported by ``supervise`` or not worth a warning


def every(interval_s: float, action: Callable[[], None]) -> asyncio.Task[None]:
    """Run ``action`` every ``interval_s`` seconds until the returned task is cancelled
    (the periodic execution summaries)."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval_s)
            action()

    return asyncio.create_task(loop())
