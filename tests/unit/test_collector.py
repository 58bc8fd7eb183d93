"""The worker's garbage-collector policy (``streams.processes.collector``) rests on one fact:
the timeline state holds no reference cycle, so reference counting alone frees it when a
partition is revoked, frozen or not. Checked here with the collector off while the reminder
scenario (series, completions, deletes, stale versions, poison, restores) runs through the
in-memory twin: a collection afterwards finds nothing to free."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streams.processes import collector
from streams.settings import Settings
from tests.scenario import build
from tests.unit.test_timeline_agent import _run


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_the_handlers_and_the_state_make_no_cycles(collector_off: None) -> None:
    sc = build(seed=5, tasks=300)
    pipe = _run(sc, crash_every=7, settings=Settings(state_retention_s=3600))
    assert sc.poison_count > 0
    # Events, ticks, restores and the poison records' dead letters left no cyclic garbage.
    assert gc.collect() == 0
    states = list(pipe.agent.states)
    assert sum(len(pipe.agent.states[p].tasks) for p in states) > 0
    for p in states:
        pipe.agent.revoke(p)
    del pipe
    # Nor does dropping every partition's state: reference counting freed it all.
    assert gc.collect() == 0


def test_configure_raises_the_young_threshold_and_freezes() -> None:
    before = gc.get_threshold()
    try:
        collector.configure()
        assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, collector.MIDDLE_THRESHOLD,
                                      collector.OLD_THRESHOLD)
        assert gc.get_freeze_count() > 0
        frozen = gc.get_freeze_count()
        kept = [[i] for i in range(1000)]  # tracked containers made after the start
        collector.settle()
        assert gc.get_freeze_count() >= frozen + len(kept)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
