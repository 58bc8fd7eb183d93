"""One retry helper for every loop: exponential backoff with full jitter, attempts, a deadline
and a stop event.

``Backoff`` is the pure part (the bound of the n-th wait, and a jittered wait drawn from an
``rng`` passed in); ``call`` runs an operation until it succeeds, raises an error a retry cannot
fix, runs out of attempts or time, or is asked to stop. Retriable means what the error says of
itself (``SchedulerError.retriable``); driver errors must be translated before they get here.
Imports nothing of ours but the errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from streams.errors import SchedulerError

T = TypeVar("T")

__all__ = ["Backoff", "call"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits of uniform(0, min(cap_s, base_s · 2^(n-1))) seconds after the n-th failure."""

    base_s: float = 0.5
    cap_s: float = 30.0

    def bound_s(self, failures: int) -> float:
        """The upper bound of the wait after ``failures`` consecutive failures (1-based)."""
        exponent = min(max(failures, 1) - 1, 64)  # 2**64 · base is past any cap
        return float(min(self.cap_s, self.base_s * 2.0 ** exponent))

    def delay_s(self, failures: int, rng: random.Random) -> float:
        """A wait drawn with full jitter (AWS architecture blog, "Exponential Backoff And
        Jitter"): spreads the retries of many clients that failed together."""
        return rng.uniform(0.0, self.bound_s(failures))


OnRetry = Callable[[SchedulerError, int, float], None]


async def call(op: Callable[[], Awaitable[T]], *, backoff: Backoff,
               max_attempts: int | None = None, deadline_s: float | None = None,
               stop: asyncio.Event | None = None, rng: random.Random | None = None,
               on_retry: OnRetry | None = None) -> T | None:
    """``await op()`` until it returns. A retriable ``SchedulerError`` waits (``on_retry(error,
    failures, delay_s)`` is told first) and tries again; anything else, the last attempt's
    error, or a retriable error once ``deadline_s`` has passed, is raised. Returns None when
    ``stop`` is set (before an attempt or during a wait)."""
    rng = rng or random.Random()
    started = time.monotonic()
    failures = 0
    while stop is None or not stop.is_set():
        try:
            return await op()
        except SchedulerError as exc:
            failures += 1
            if not exc.retriable or (max_attempts is not None and failures >= max_attempts):
                raise
            delay_s = backoff.delay_s(failures, rng)
            if deadline_s is not None and time.monotonic() - started + delay_s > deadline_s:
                raise
            if on_retry is not None:
                on_retry(exc, failures, delay_s)
            if stop is None:
                await asyncio.sleep(delay_s)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay_s)
    return None
