"""Pure job decisions (due slots, catch-up, coalesce, overlap, backoff) and the built-in kinds
against the in-memory DataStore twin. No sockets, no clock."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.jobs import decisions as jobs
from streams.jobs import registry
from streams.jobs.decisions import Disposition, OverlapAction
from streams.jobs.registry import Overlap, Retries
from streams.testing.datastore import MemoryDataStore

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def _job(**overrides: Any) -> registry.Job:
    raw = {"name": "j", "kind": "noop", "schedule": "* * * * *", "catchup_window_s": 600,
           **overrides}
    return registry.parse({"jobs": [raw]}).jobs[0]


def _disp(due: jobs.DueSlots) -> list[tuple[int, str]]:
    return [(int((s.scheduled_for - T0).total_seconds() // 60), s.disposition.value)
            for s in due.slots]


def test_on_time_tick_runs_exactly_the_slot_at_the_tick() -> None:
    due = jobs.slots_due(_job(), T0 - timedelta(seconds=1), T0)
    assert _disp(due) == [(0, "run")]
    assert jobs.slots_due(_job(), T0, T0 + timedelta(seconds=59)).slots == ()


@pytest.mark.parametrize(("coalesce", "runs"), [
    ("latest", [30]), ("earliest", [20]), ("all", list(range(20, 31)))])
def test_gap_catch_up_window_and_coalesce(coalesce: str, runs: list[int]) -> None:
    due = jobs.slots_due(_job(coalesce=coalesce), T0, T0 + timedelta(minutes=30))
    got = _disp(due)
    assert [m for m, d in got if d == "run"] == runs
    # Older than the 600 s window at tick 00:30: 00:01..00:19 are missed.
    assert [m for m, d in got if d == "missed"] == list(range(1, 20))
    assert [m for m, d in got if d == "coalesced"] == [m for m in range(20, 31) if m not in runs]
    assert all(s.late_s == (30 - m) * 60 for (m, _), s in zip(got, due.slots, strict=True))


def test_zero_window_runs_only_a_slot_due_within_the_grid() -> None:
    due = jobs.slots_due(_job(catchup_window_s=0), T0, T0 + timedelta(minutes=5, seconds=1))
    assert all(s.disposition is Disposition.MISSED for s in due.slots)
    due = jobs.slots_due(_job(catchup_window_s=0), T0, T0 + timedelta(minutes=5))
    assert _disp(due)[-1] == (5, "run")
    # On a 60 s grid a slot between two ticks is on time at the next one, whatever the window.
    due = jobs.slots_due(_job(catchup_window_s=0), T0 + timedelta(minutes=4, seconds=30),
                         T0 + timedelta(minutes=5, seconds=30), grid_s=60)
    assert _disp(due) == [(5, "run")] and not due.slots[0].late


def test_late_means_beyond_one_grid_step() -> None:
    due = jobs.slots_due(_job(coalesce="all"), T0, T0 + timedelta(minutes=3), grid_s=60)
    assert [(m, s.late) for (m, _), s in zip(_disp(due), due.slots, strict=True)] == [
        (1, True), (2, False), (3, False)]


def test_long_gap_is_bounded() -> None:
    due = jobs.slots_due(_job(), T0, T0 + timedelta(days=2))
    assert len(due.slots) == jobs.MAX_SLOTS
    assert due.uncounted_missed == 2 * 1440 - jobs.MAX_SLOTS
    assert due.to_run == [T0 + timedelta(days=2)]


def test_slots_follow_the_zone_and_dst_policy() -> None:
    # 02:30 Europe/Berlin does not exist on 2026-03-29: shift_forward → 03:30 CEST (01:30Z).
    job = _job(schedule="30 2 * * *", timezone="Europe/Berlin", catchup_window_s=0)
    day = datetime(2026, 3, 29, tzinfo=UTC)
    due = jobs.slots_due(job, day, day + timedelta(days=1))
    assert [s.scheduled_for for s in due.slots] == [datetime(2026, 3, 29, 1, 30, tzinfo=UTC)]
    skip = _job(schedule="30 2 * * *", timezone="Europe/Berlin",
                dst_policy={"nonexistent": "skip"})
    assert jobs.slots_due(skip, day, day + timedelta(days=1)).slots == ()


@pytest.mark.parametrize(("policy", "running", "waiting", "action"), [
    (Overlap.SKIP, False, False, OverlapAction.RUN),
    (Overlap.SKIP, True, False, OverlapAction.SKIP),
    (Overlap.BUFFER_ONE, False, False, OverlapAction.RUN),
    (Overlap.BUFFER_ONE, True, False, OverlapAction.WAIT),
    (Overlap.BUFFER_ONE, True, True, OverlapAction.SKIP),
    (Overlap.ALLOW, True, True, OverlapAction.RUN),
])
def test_overlap_action(policy: Overlap, running: bool, waiting: bool,
                        action: OverlapAction) -> None:
    assert jobs.overlap_action(policy, running=running, waiting=waiting) is action


@given(attempt=st.integers(1, 19), base=st.floats(0.001, 10), extra=st.floats(0, 100),
       seed=st.integers(0, 2**32))
def test_backoff_full_jitter_bounds(attempt: int, base: float, extra: float, seed: int) -> None:
    retries = Retries(max_attempts=20, base_delay_s=base, max_delay_s=base + extra)
    decision = jobs.retry_decision(retries, attempt, retriable=True, rng=random.Random(seed))
    cap = min(base + extra, base * 2 ** (attempt - 1))
    assert decision.retry and 0 <= decision.delay_s <= cap
    assert jobs.backoff_cap_s(retries, attempt) == pytest.approx(cap)


def test_backoff_grows_then_caps_and_spreads() -> None:
    retries = Retries(max_attempts=10, base_delay_s=1, max_delay_s=8)
    assert [jobs.backoff_cap_s(retries, a) for a in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    rng = random.Random(7)
    delays = [jobs.retry_decision(retries, 5, retriable=True, rng=rng).delay_s
              for _ in range(2000)]
    assert 0 <= min(delays) < 0.1 and 7.9 < max(delays) <= 8  # full jitter covers [0, cap]
    assert 3.6 < sum(delays) / len(delays) < 4.4


def test_no_retry_for_permanent_errors_or_when_exhausted() -> None:
    retries = Retries(max_attempts=3)
    rng = random.Random(1)
    assert not jobs.retry_decision(retries, 1, retriable=False, rng=rng).retry
    assert jobs.retry_decision(retries, 2, retriable=True, rng=rng).retry
    decision = jobs.retry_decision(retries, 3, retriable=True, rng=rng)
    assert not decision.retry and "exhausted" in decision.reason


def test_ids_are_deterministic() -> None:
    assert jobs.trigger_id("a", T0) == "a@2026-03-02T12:00:00Z"
    assert jobs.trigger_id("a", T0, "manual") == "a@2026-03-02T12:00:00Z/manual"
    assert jobs.run_id("a", T0, 2) == "a@2026-03-02T12:00:00Z#2"


def test_every_registry_kind_is_implemented() -> None:
    store = MemoryDataStore()
    for kind, spec in registry.KINDS.items():
        schedule = "0 * * * *" if spec.heavy else "* * * * *"
        job = registry.parse({"jobs": [{"name": "k", "kind": kind, "schedule": schedule}]}).jobs[0]
        outcome = asyncio.run(jobs.run_kind(job, store, T0, 1, _no_sleep))
        assert outcome.affected == 0


async def _no_sleep(_: float) -> None:
    return None


def test_archive_in_batches_is_idempotent_on_the_twin() -> None:
    store = MemoryDataStore()
    for i in range(25):
        store.tasks[f"t{i}"] = {"status": "completed", "completed_at": T0 - timedelta(days=31 + i)}
    store.tasks["recent"] = {"status": "completed", "completed_at": T0 - timedelta(days=2)}
    store.tasks["open"] = {"status": "open", "completed_at": None}
    first = asyncio.run(jobs.archive_completed(store, T0, 30, 10))
    assert (first.affected, first.batches) == (25, 3)
    assert first.before == {"tasks": 27, "eligible": 25, "tasks_archive": 0}
    assert first.after == {"tasks": 2, "eligible": 0, "tasks_archive": 25}
    again = asyncio.run(jobs.archive_completed(store, T0, 30, 10))
    assert again.affected == 0 and again.before == again.after == first.after


def test_purge_by_retention_on_the_twin() -> None:
    store = MemoryDataStore()
    store.archive = {f"a{i}": {"archived_at": T0 - timedelta(days=400 - i)} for i in range(60)}
    store.job_runs = {"old": T0 - timedelta(days=91), "new": T0 - timedelta(days=1)}
    store.dead_letters = {"old": T0 - timedelta(days=31)}
    store.outbox = {"published-long-ago": T0 - timedelta(days=8),
                    "published-yesterday": T0 - timedelta(days=1)}
    job = registry.parse({"jobs": [{"name": "p", "kind": "purge_expired",
                                    "schedule": "@daily", "params": {"batch_size": 10}}]}).jobs[0]
    outcome = asyncio.run(jobs.run_kind(job, store, T0, 1, _no_sleep))
    assert outcome.affected == 35 + 1 + 1 + 1  # archived more than 365 days ago: 400 - i > 365
    assert set(store.job_runs) == {"new"} and not store.dead_letters
    assert set(store.outbox) == {"published-yesterday"}


def test_trigger_agent_dead_letters_what_is_not_a_tick() -> None:
    from streams.codec import encode_tick
    from streams.jobs import registry as registry_module
    from streams.kafka.client import Record
    from streams.processes.jobrunner import TriggerAgent
    from streams.settings import Settings

    settings = Settings()
    agent = TriggerAgent(settings, registry_module.load("deploy/jobs.yaml"))
    at = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
    records = [Record("scheduler.ticks", 0, 0, None, b"\x00junk", 0),
               Record("scheduler.ticks", 0, 1, None, encode_tick(at), int(at.timestamp() * 1000)),
               Record("scheduler.ticks", 0, 2, b"u", b'{"type": "tick"}', 0)]
    outputs = agent.process(0, records)
    letters = [o for o in outputs if o.topic == settings.topics.dead_letters]
    assert len(letters) == 2 and letters[1].key == b"u"


# --- issue 11: run ids for undo, stopping and resuming, dry runs ------------------------------


def test_run_ids_parse_with_or_without_the_attempt() -> None:
    at = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    assert jobs.parse_run_id("archive@2026-03-02T03:00:00Z#2") == ("archive", at)
    assert jobs.parse_run_id("archive@2026-03-02T04:00:00+01:00") == ("archive", at)
    assert jobs.archive_tag("archive", at) == jobs.run_id("archive", at, 1).split("#")[0]
    for bad, needle in [("archive", "job@scheduled_for"), ("a@yesterday", "not an RFC 3339"),
                        ("a@2026-03-02T03:00:00", "no UTC offset")]:
        with pytest.raises(ValueError, match=needle):
            jobs.parse_run_id(bad)


def _purge_job() -> registry.Job:
    return registry.parse({"jobs": [{"name": "p", "kind": "purge_expired", "schedule": "@daily",
                                     "params": {"batch_size": 2}}]}).jobs[0]


def test_a_stopped_purge_resumes_with_the_targets_left() -> None:
    store = MemoryDataStore()
    store.job_runs = {f"r{i}": T0 - timedelta(days=100) for i in range(3)}
    store.dead_letters = {f"d{i}": T0 - timedelta(days=40) for i in range(3)}
    asked = 0

    async def three_batches() -> bool:
        nonlocal asked
        asked += 1
        return asked <= 3

    job = _purge_job()
    first = asyncio.run(jobs.run_kind(job, store, T0, 1, _no_sleep, proceed=three_batches))
    # tasks_archive: one empty batch; job_runs: 2 + 1 rows; then the window closed.
    assert first.stopped and first.affected == 3
    assert first.progress == {"stopped_at": "dead_letters",
                              "done_targets": ["tasks_archive", "job_runs"]}
    rest = asyncio.run(jobs.run_kind(job, store, T0, 1, _no_sleep, progress=first.progress))
    assert not rest.stopped and rest.affected == 3 and not store.dead_letters


def test_preview_touches_nothing_and_noop_touches_no_table() -> None:
    store = MemoryDataStore()
    store.tasks["old"] = {"status": "completed", "completed_at": T0 - timedelta(days=40)}
    job = registry.parse({"jobs": [{"name": "a", "kind": "archive_completed",
                                    "schedule": "@daily"}]}).jobs[0]
    touch = asyncio.run(jobs.preview(job, store, T0))
    assert {k: v.as_dict() for k, v in touch.items()} == {"tasks": {
        "rows": 1, "oldest": "2026-01-21T12:00:00Z", "newest": "2026-01-21T12:00:00Z"}}
    assert "old" in store.tasks
    assert asyncio.run(jobs.preview(_job(), store, T0)) == {}
