"""The job trigger agent over an in-memory tick log: every slot decided at its own tick,
whatever the batches the log is consumed in and however often the agent restarts from its
changelog. No sockets, no clock."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import JobTrigger
from schemas.wire import loads
from streams.codec import encode_tick
from streams.jobs import registry
from streams.kafka.client import Output, Record
from streams.processes.jobrunner import TriggerAgent
from streams.settings import Settings

SETTINGS = Settings(tick_interval_s=60)
T0 = datetime(2027, 3, 12, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
ARCHIVE = {"name": "archive", "kind": "archive_completed", "schedule": "30 2 * * *",
           "timezone": "America/New_York", "dst_policy": {"nonexistent": "gap_edge"},
           "catchup_window_s": 7200}


def _registry(*jobs: dict[str, Any]) -> registry.Registry:
    return registry.parse({"jobs": list(jobs)})


class Harness:
    """scheduler.ticks and the agent's changelog as lists, consumed as engine.Processor does:
    a batch's outputs and its changelog writes are kept together (one transaction)."""

    def __init__(self, reg: registry.Registry) -> None:
        self.agent = TriggerAgent(SETTINGS, reg)
        self.changelog: list[Record] = []
        self.triggers: list[JobTrigger] = []
        self.agent.assign(0, [])

    def feed(self, ticks: list[datetime], *, broker_at: datetime | None = None,
             source: str = "live") -> None:
        """Live ticks stamped by the broker at their own time (on time) unless told."""
        records = [Record(SETTINGS.topics.ticks, 0, i, None, encode_tick(at, source=source),
                          int((broker_at or at).timestamp() * 1000))
                   for i, at in enumerate(ticks)]
        self.letters: list[Output] = []
        for out in self.agent.process(0, records):
            if out.topic == SETTINGS.topics.dead_letters:
                self.letters.append(out)
            else:
                self._keep(out)

    def _keep(self, out: Output) -> None:
        if out.topic == SETTINGS.topics.job_trigger_changelog:
            self.changelog.append(Record(out.topic, 0, len(self.changelog), out.key,
                                         out.value, 0))
        else:
            assert out.topic == SETTINGS.topics.job_triggers
            self.triggers.append(loads(JobTrigger, out.value or b""))

    def restart(self) -> None:
        """A new owner of the partition: nothing but the changelog survives."""
        self.agent.revoke(0)
        self.agent = TriggerAgent(SETTINGS, self.agent.registry)
        self.agent.assign(0, self.changelog)

    def decisions(self) -> list[tuple[str, datetime, datetime, str, bool]]:
        return [(t.job, t.scheduled_for, t.tick_at, t.disposition, t.late)
                for t in self.triggers]


def _every_minute(first: datetime, last: datetime) -> list[datetime]:
    return [first + i * MINUTE for i in range(int((last - first) / MINUTE) + 1)]


def test_issue_13_replay_decides_each_slot_at_its_own_tick() -> None:
    # Five days of 60 s ticks across the New York spring-forward, consumed in one batch.
    harness = Harness(_registry(ARCHIVE))
    harness.feed(_every_minute(T0, T0 + timedelta(days=5) - MINUTE))
    expected = [datetime(2027, 3, 12, 7, 30, tzinfo=UTC), datetime(2027, 3, 13, 7, 30, tzinfo=UTC),
                datetime(2027, 3, 14, 7, 0, tzinfo=UTC),  # 02:30 does not exist: 03:00 EDT
                datetime(2027, 3, 15, 6, 30, tzinfo=UTC), datetime(2027, 3, 16, 6, 30, tzinfo=UTC)]
    assert harness.decisions() == [("archive", at, at, "run", False) for at in expected]
    assert len(harness.changelog) == 1  # one watermark write per batch


def test_a_gap_in_the_ticks_is_caught_up_and_coalesced() -> None:
    noop = {"kind": "noop", "schedule": "* * * * *", "catchup_window_s": 600}
    harness = Harness(_registry({"name": "latest", **noop},
                                {"name": "every", "coalesce": "all", **noop}))
    harness.feed([T0, T0 + MINUTE, T0 + 31 * MINUTE, T0 + 32 * MINUTE])
    got: dict[str, dict[int, str]] = {"latest": {}, "every": {}}
    for job, slot, tick, disposition, late in harness.decisions():
        got[job][int((slot - T0) / MINUTE)] = disposition
        assert late == (tick - slot > MINUTE)
    for job in got:
        assert [m for m, d in got[job].items() if d == "missed"] == list(range(2, 21))
        assert sorted(got[job]) == list(range(33))  # every slot decided, exactly once
    assert [m for m, d in got["latest"].items() if d == "run"] == [0, 1, 31, 32]
    assert [m for m, d in got["latest"].items() if d == "coalesced"] == list(range(21, 31))
    assert [m for m, d in got["every"].items() if d == "run"] == [0, 1, *range(21, 33)]


def test_restart_resumes_from_the_committed_tick_not_from_the_first_one_read() -> None:
    # Ticks 00:00, then a 30-minute gap that begins exactly at a restart.
    harness = Harness(_registry({"name": "m", "kind": "noop", "schedule": "* * * * *",
                                 "catchup_window_s": 3600, "coalesce": "all"}))
    harness.feed([T0])
    harness.restart()
    harness.feed([T0 + 30 * MINUTE])
    assert [int((slot - T0) / MINUTE) for _, slot, *_ in harness.decisions()] == list(range(31))
    # A tick at or before the watermark (a duplicate, an older replay) decides nothing.
    harness.restart()
    harness.feed([T0 + 30 * MINUTE, T0 + 5 * MINUTE])
    assert len(harness.triggers) == 31


def test_a_live_tick_far_ahead_of_the_broker_decides_no_slot() -> None:
    """One wrong clock reading (a live tick a year ahead) must not decide a year of slots as
    missed: it is dead-lettered, the watermark stays; a range tick moves time on purpose."""
    harness = Harness(_registry(ARCHIVE))
    harness.feed([T0])
    harness.feed([T0 + timedelta(days=365)], broker_at=T0 + MINUTE)
    assert harness.triggers == [] and len(harness.letters) == 1
    assert b"live tick is" in (harness.letters[0].value or b"")
    harness.feed([T0 + 2 * MINUTE])  # time goes on from where it was
    assert harness.agent.watermarks[0] == T0 + 2 * MINUTE
    harness.feed([T0 + timedelta(days=2)], broker_at=T0 + 3 * MINUTE, source="range")
    assert harness.letters == [] and harness.triggers  # the range tick decided slots


def test_changelog_value_is_a_tick_record() -> None:
    harness = Harness(_registry(ARCHIVE))
    harness.feed([T0, T0 + MINUTE])
    [entry] = harness.changelog
    assert entry.key == b"w"
    assert orjson.loads(entry.value or b"") == {"type": "tick", "tick_at": "2027-03-12T00:01:00Z",
                                                   "source": "live"}


TICKS = st.lists(st.integers(1, 200), min_size=1, max_size=40).map(
    lambda steps: [T0 + timedelta(minutes=sum(steps[:i + 1])) for i in range(len(steps))])
JOBS = [
    ARCHIVE,
    {"name": "quarter", "kind": "noop", "schedule": "*/15 * * * *", "catchup_window_s": 1800,
     "coalesce": "latest"},
    {"name": "hourly-all", "kind": "noop", "schedule": "7 * * * *", "catchup_window_s": 7200,
     "coalesce": "all"},
    {"name": "early", "kind": "noop", "schedule": "*/20 * * * *", "catchup_window_s": 0,
     "coalesce": "earliest"},
]


@settings(max_examples=40, deadline=None)
@given(ticks=TICKS, cuts=st.lists(st.integers(0, 80)), restarts=st.lists(st.integers(0, 80)),
       duplicates=st.booleans())
def test_decisions_do_not_depend_on_batches_or_restarts(
        ticks: list[datetime], cuts: list[int], restarts: list[int], duplicates: bool) -> None:
    reg = _registry(*JOBS)
    one_by_one = Harness(reg)
    for at in ticks:
        one_by_one.feed([at])
    log = [at for at in ticks for _ in range(2 if duplicates else 1)]
    bounds = sorted({0, len(log), *(c for c in cuts if c < len(log))})
    batched = Harness(reg)
    for start, end in itertools.pairwise(bounds):
        if start in restarts:
            batched.restart()
        batched.feed(log[start:end])
    assert batched.decisions() == one_by_one.decisions()
    # Each slot once, decided at the first tick at or after it.
    slots = [(job, slot) for job, slot, *_ in one_by_one.decisions()]
    assert len(slots) == len(set(slots))
    for _, slot, tick, _, _ in one_by_one.decisions():
        assert tick == min(at for at in ticks if at >= slot)
    covered = []  # and no slot between the first tick's grid step and the last tick is lost
    for job in reg.jobs:
        for fire in job.fires(ticks[0] - timedelta(seconds=SETTINGS.tick_interval_s)):
            if fire > ticks[-1]:
                break
            covered.append((job.name, fire))
    assert sorted(slots) == sorted(covered)
