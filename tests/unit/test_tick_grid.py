"""The live tick grid: multiples of the step since the epoch, fractional steps included,
counted in whole microseconds so that no step drifts off the grid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streams.processes.tickproducer import grid_floor

AT = datetime(2026, 3, 8, 7, 0, 0, 987_654, tzinfo=UTC)


@pytest.mark.parametrize(("step_s", "expected"), [
    (1, datetime(2026, 3, 8, 7, 0, 0, tzinfo=UTC)),
    (1.0, datetime(2026, 3, 8, 7, 0, 0, tzinfo=UTC)),
    (0.25, datetime(2026, 3, 8, 7, 0, 0, 750_000, tzinfo=UTC)),
    (0.1, datetime(2026, 3, 8, 7, 0, 0, 900_000, tzinfo=UTC)),
    (0.05, datetime(2026, 3, 8, 7, 0, 0, 950_000, tzinfo=UTC)),
    (60, datetime(2026, 3, 8, 7, 0, 0, tzinfo=UTC)),
    (7, datetime(2026, 3, 8, 6, 59, 56, tzinfo=UTC)),  # 1772953196 = 7 * 253279028
])
def test_grid_floor_is_the_grid_instant_at_or_before(step_s: float,
                                                     expected: datetime) -> None:
    assert grid_floor(AT, step_s) == expected
    assert grid_floor(expected, step_s) == expected


def test_a_fractional_grid_stays_on_the_grid_step_after_step() -> None:
    step = timedelta(seconds=0.1)
    at = grid_floor(AT, 0.1)
    for _ in range(100_000):
        at += step
    assert grid_floor(at, 0.1) == at
    assert at.microsecond % 100_000 == 0
