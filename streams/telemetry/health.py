"""Liveness and readiness of a long-running process, and the HTTP endpoint that serves them
next to the Prometheus metrics.

    GET /metrics   Prometheus text format
    GET /healthz   200 while the event loop answers (a beat younger than ``LOOP_STALL_S``)
                   and every registered component is alive; 503 with the reasons otherwise
    GET /readyz    200 when alive and every component says it is ready (for a processor:
                   partitions assigned and restored, progress within a bound while there
                   is lag); 503 with the reasons otherwise

The server runs in its own thread, so it must not judge the event loop by answering from
it: the loop stamps ``Health.beat`` every second (``Health.beating``) and a stale stamp is
what "the loop is stuck" looks like from here. Components are objects with ``alive()`` and
``ready()`` returning None when fine, or a short reason; they are called from the server's
thread and only read plain attributes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.telemetry.logs import fields

LOOP_STALL_S = 15.0
# A turn of the event loop later than this is logged: heartbeats to the group wait as long,
# and a member whose loop stalls past the session timeout (6 s by default) is dropped.
LOOP_STALL_LOGGED_S = 1.0
log = logging.getLogger("cronorch.health")


class Component(Protocol):
    name: str

    def alive(self) -> str | None: ...

    def ready(self) -> str | None: ...


class Health:
    """What /healthz and /readyz report; one per process (``HEALTH``)."""

    def __init__(self) -> None:
        self.components: dict[str, Component] = {}
        self.beat = time.monotonic()
        self.longest_stall_s = 0.0  # the longest wait for a turn of the loop seen so far
        self.started = False  # lifecycle.start finished: Kafka was reachable, topics exist

    def register(self, component: Component) -> None:
        self.components[component.name] = component

    def problems(self, *, readiness: bool, now: float | None = None) -> list[str]:
        """Why the process is not alive (or, with ``readiness``, not ready); empty if it is."""
        now = time.monotonic() if now is None else now
        found: list[str] = []
        stalled_s = now - self.beat
        if stalled_s > LOOP_STALL_S:
            found.append(f"event loop unresponsive for {stalled_s:.0f} s")
        for name, component in list(self.components.items()):
            reason = component.alive()
            if reason is None and readiness:
                reason = component.ready()
            if reason is not None:
                found.append(f"{name}: {reason}")
        if readiness and not self.started:
            found.append("starting")
        return found

    async def beating(self, interval_s: float = 1.0) -> None:
        """Stamp ``beat`` from the event loop until cancelled; a beat that comes late says
        how long the loop was held (CPU-bound work between two awaits), and is logged."""
        self.beat = time.monotonic()
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            stall_s = now - self.beat - interval_s
            self.beat = now
            if stall_s > self.longest_stall_s:
                self.longest_stall_s = stall_s
            if stall_s >= LOOP_STALL_LOGGED_S:
                log.warning("event loop stalled", extra=fields(stall_s=round(stall_s, 3)))


HEALTH = Health()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            problems = HEALTH.problems(readiness=path == "/readyz")
            body = ("ok\n" if not problems else "\n".join(problems) + "\n").encode()
            self._send(503 if problems else 200, body, "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # probes every few seconds would flood the JSON log


def serve(port: int) -> ThreadingHTTPServer | None:
    """Serve /metrics, /healthz and /readyz on ``port`` from a daemon thread (0 disables)."""
    global _server
    if not port:
        return None
    if _server is None:  # once per process, however many times a process starts up
        _server = ThreadingHTTPServer(("0.0.0.0", port), _Handler)
        _server.daemon_threads = True
        threading.Thread(target=_server.serve_forever, name="health-http", daemon=True).start()
    return _server


_server: ThreadingHTTPServer | None = None
