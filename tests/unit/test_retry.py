"""streams.retry: backoff bounds, full jitter, and when ``call`` retries, gives up or stops."""

from __future__ import annotations

import asyncio
import random

import pytest

from streams.errors import BrokerUnavailable, DatabaseError, SchedulerError
from streams.retry import Backoff, call


def test_bounds_double_up_to_the_cap() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0)
    assert [backoff.bound_s(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.bound_s(10_000) == 4.0  # no overflow after a long outage


def test_full_jitter_stays_within_the_bound_and_spreads() -> None:
    backoff, rng = Backoff(base_s=1.0, cap_s=8.0), random.Random(7)
    draws = [backoff.delay_s(4, rng) for _ in range(1000)]
    assert all(0.0 <= d <= 8.0 for d in draws)
    assert min(draws) < 1.0 and max(draws) > 7.0


class Flaky:
    def __init__(self, failures: list[SchedulerError]) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


FAST = Backoff(base_s=0.001, cap_s=0.002)


def test_retriable_errors_are_retried_until_success() -> None:
    op, seen = Flaky([BrokerUnavailable("a"), BrokerUnavailable("b")]), []
    result = asyncio.run(call(op, backoff=FAST,
                              on_retry=lambda e, n, d: seen.append((str(e), n))))
    assert (result, op.calls, seen) == ("done", 3, [("a", 1), ("b", 2)])


def test_an_error_a_retry_cannot_fix_is_raised_at_once() -> None:
    op = Flaky([DatabaseError("constraint")])
    with pytest.raises(DatabaseError):
        asyncio.run(call(op, backoff=FAST))
    assert op.calls == 1


def test_attempts_are_bounded() -> None:
    op = Flaky([BrokerUnavailable(str(i)) for i in range(5)])
    with pytest.raises(BrokerUnavailable, match="2"):
        asyncio.run(call(op, backoff=FAST, max_attempts=3))
    assert op.calls == 3


def test_the_deadline_ends_retrying() -> None:
    op = Flaky([BrokerUnavailable(str(i)) for i in range(1000)])
    with pytest.raises(BrokerUnavailable):
        asyncio.run(call(op, backoff=Backoff(base_s=0.01, cap_s=0.01), deadline_s=0.05))
    assert 1 < op.calls < 100


def test_stop_ends_a_wait_early_and_returns_none() -> None:
    async def scenario() -> tuple[str | None, float]:
        stop = asyncio.Event()
        op = Flaky([BrokerUnavailable("down")] * 10)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, stop.set)
        started = loop.time()
        result = await call(op, backoff=Backoff(base_s=30, cap_s=30), stop=stop,
                            rng=random.Random(1))
        return result, loop.time() - started

    result, waited_s = asyncio.run(scenario())
    assert result is None and waited_s < 5
