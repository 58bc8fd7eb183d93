"""Supervision of a process's tasks and the health endpoint, without a broker: a task that
ends on its own (raised, cancelled, returned) ends the process with an error; a stop is
bounded; /healthz and /readyz say why they fail."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request

import pytest

from streams.errors import ComponentStopped
from streams.processes import lifecycle
from streams.telemetry import health


async def _forever(stop: asyncio.Event) -> None:
    await stop.wait()


def _supervise(*bodies: object, stop_after_s: float | None = None,
               grace_s: float = 1.0, shutdown_s: float = 2.0) -> None:
    async def go() -> None:
        stop = asyncio.Event()
        tasks = {f"t{i}": asyncio.create_task(body(stop))  # type: ignore[operator]
                 for i, body in enumerate(bodies)}
        if stop_after_s is not None:
            asyncio.get_running_loop().call_later(stop_after_s, stop.set)
        await lifecycle.supervise(stop, tasks, grace_s=grace_s, shutdown_s=shutdown_s)

    asyncio.run(go())


def test_a_cancelled_task_ends_the_process() -> None:
    """What aiokafka's coordinator did to the timeline consumer: the task was cancelled,
    which ``asyncio.wait(FIRST_EXCEPTION)`` did not count as an end."""

    async def cancelled(stop: asyncio.Event) -> None:
        raise asyncio.CancelledError

    with pytest.raises(ComponentStopped, match="t1 was cancelled"):
        _supervise(_forever, cancelled)


def test_a_failing_task_ends_the_process_with_its_error() -> None:
    async def failing(stop: asyncio.Event) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        _supervise(_forever, failing)


def test_a_task_returning_before_the_stop_ends_the_process() -> None:
    async def returning(stop: asyncio.Event) -> None:
        return None

    with pytest.raises(ComponentStopped, match="returned before"):
        _supervise(returning)


def test_a_stop_is_clean_and_bounded() -> None:
    cancelled: list[str] = []

    async def deaf(stop: asyncio.Event) -> None:
        try:
            await asyncio.sleep(3600)  # ignores the stop: must be cancelled after the grace
        except asyncio.CancelledError:
            cancelled.append("deaf")
            raise

    started = time.monotonic()
    _supervise(_forever, deaf, stop_after_s=0.05, grace_s=0.2, shutdown_s=0.5)
    assert cancelled == ["deaf"]
    assert time.monotonic() - started < 2


class Component:
    name = "processor test"

    def __init__(self) -> None:
        self.alive_reason: str | None = None
        self.ready_reason: str | None = "restoring partitions [0]"

    def alive(self) -> str | None:
        return self.alive_reason

    def ready(self) -> str | None:
        return self.ready_reason


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_health_endpoints() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = health.serve(port)
    assert server is not None
    port = server.server_address[1]
    component = Component()
    others = dict(health.HEALTH.components)  # processors other tests created
    health.HEALTH.components.clear()
    health.HEALTH.register(component)
    health.HEALTH.started = True
    try:
        health.HEALTH.beat = time.monotonic()
        assert _get(port, "/healthz") == (200, "ok\n")
        assert _get(port, "/readyz") == (503, "processor test: restoring partitions [0]\n")
        component.ready_reason = None
        assert _get(port, "/readyz") == (200, "ok\n")
        status, body = _get(port, "/metrics")
        assert status == 200 and "cronorch_records_total" in body
        component.alive_reason = "not running"
        assert _get(port, "/healthz") == (503, "processor test: not running\n")
        component.alive_reason = None
        health.HEALTH.beat = time.monotonic() - health.LOOP_STALL_S - 5
        status, body = _get(port, "/healthz")
        assert status == 503 and body.startswith("event loop unresponsive")
    finally:
        health.HEALTH.components.clear()
        health.HEALTH.components.update(others)
        health.HEALTH.beat = time.monotonic()
