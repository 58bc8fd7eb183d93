"""``metrics.observe_many`` exposes exactly what as many single observations expose."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from streams.telemetry import metrics


def _samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    """Every sample but ``_created`` (the time each histogram was made). A sum is the same
    up to rounding: count times amount, not amount added count times."""
    return [(s.name, s.labels, s.value) for metric in registry.collect()
            for s in metric.samples if not s.name.endswith("_created")]


def _same(got: list[tuple[str, dict[str, str], float]],
          want: list[tuple[str, dict[str, str], float]]) -> None:
    assert [(name, labels) for name, labels, _ in got] == \
        [(name, labels) for name, labels, _ in want]
    assert [value for *_, value in got] == pytest.approx([value for *_, value in want],
                                                         rel=1e-9)


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    one, many = CollectorRegistry(), CollectorRegistry()
    buckets = (0.1, 0.25, 1, 10)
    return (one, Histogram("h", "h", ["kind"], buckets=buckets, registry=one),
            many, Histogram("h", "h", ["kind"], buckets=buckets, registry=many))


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.2, 0.25, 3.5, 10, 11, 1e9])
@pytest.mark.parametrize("count", [1, 2, 7, 100_000])
def test_observe_many_is_count_observations(amount: float, count: int) -> None:
    one, single, many, weighted = _pair()
    for _ in range(count):
        single.labels("reminder.due").observe(amount)
    metrics.observe_many(weighted.labels("reminder.due"), amount, count)
    _same(_samples(many), _samples(one))


def test_observe_many_adds_to_earlier_observations() -> None:
    one, single, many, weighted = _pair()
    for amount, count in ((0.3, 3), (0.05, 2), (20.0, 4), (0.3, 1)):
        for _ in range(count):
            single.labels("x").observe(amount)
        metrics.observe_many(weighted.labels("x"), amount, count)
    _same(_samples(many), _samples(one))
