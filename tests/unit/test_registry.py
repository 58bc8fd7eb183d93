"""The job registry: valid files parse; each kind of mistake is rejected naming the key path."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.errors import ConfigError
from streams.jobs import registry
from streams.jobs.registry import Coalesce, Overlap
from streams.timecore.localtime import Ambiguous, Nonexistent

ROOT = Path(__file__).resolve().parents[2]

GOOD: dict[str, Any] = {"jobs": [
    {"name": "archive-completed", "kind": "archive_completed", "schedule": "0 3 * * *",
     "timezone": "Europe/Berlin", "dst_policy": {"nonexistent": "gap_edge", "ambiguous": "both"},
     "params": {"older_than_days": 30, "batch_size": 500}, "timeout_s": 600,
     "overlap": "buffer_one", "catchup_window_s": 7200, "coalesce": "earliest",
     "retries": {"max_attempts": 4, "base_delay_s": 0.5, "max_delay_s": 30}, "paused": False},
    {"name": "purge-expired", "kind": "purge_expired", "schedule": "@weekly"},
]}


def _with(index: int, **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    for key, value in changes.items():
        if value is None:
            doc["jobs"][index].pop(key, None)
        else:
            doc["jobs"][index][key] = value
    return doc


def test_good_registry_parses_with_defaults() -> None:
    reg = registry.parse(GOOD)
    archive, purge = reg.jobs
    assert archive.dst_policy.nonexistent is Nonexistent.GAP_EDGE
    assert archive.dst_policy.ambiguous is Ambiguous.BOTH
    assert archive.overlap is Overlap.BUFFER_ONE and archive.coalesce is Coalesce.EARLIEST
    assert dict(archive.params) == {"older_than_days": 30, "batch_size": 500}
    assert purge.timezone == "UTC" and purge.overlap is Overlap.SKIP
    assert purge.coalesce is Coalesce.LATEST and purge.retries.max_attempts == 3
    assert purge.params["archive_retention_days"] == 365


def test_example_registry_is_valid() -> None:
    reg = registry.load(ROOT / "deploy" / "jobs.yaml")
    assert reg.names() == ["archive-completed", "purge-expired"]


BAD = [
    ("cron-minute", _with(0, schedule="61 3 * * *"),
     "jobs[0].schedule", "minute: 61 is out of range 0-59"),
    ("cron-fields", _with(1, schedule="0 3 * *"),
     "jobs[1].schedule", "expected 5 fields"),
    ("cron-macro", _with(1, schedule="@fortnightly"),
     "jobs[1].schedule", "unknown macro '@fortnightly'"),
    ("unknown-kind", _with(1, kind="vacuum_everything"),
     "jobs[1].kind", "unknown kind 'vacuum_everything'"),
    ("unknown-param", _with(0, params={"older_than_weeks": 4}),
     "jobs[0].params.older_than_weeks", "unknown parameter for kind archive_completed"),
    ("param-range", _with(0, params={"batch_size": 0}),
     "jobs[0].params.batch_size", "0 is out of range 1-100000"),
    ("param-type", _with(0, params={"older_than_days": "30"}),
     "jobs[0].params.older_than_days", "must be a whole number"),
    ("too-often", _with(0, schedule="*/10 * * * *"),
     "jobs[0].schedule", "archive_completed may run at most once every 3600 s; "
     "'*/10 * * * *' fires every 600 s"),
    ("heavy-overlap", _with(1, schedule="5 3 * * *", timezone="Europe/Berlin"),
     "jobs[1].schedule", "overlaps heavy job 'archive-completed' (jobs[0])"),
    ("duplicate-name", _with(1, name="archive-completed"),
     "jobs[1].name", "duplicate name 'archive-completed' (also jobs[0])"),
    ("name-pattern", _with(1, name="Purge_Expired"),
     "jobs[1].name", "lowercase letters, digits or dashes"),
    ("unknown-zone", _with(0, timezone="Mars/Olympus"),
     "jobs[0].timezone", "unknown IANA zone 'Mars/Olympus'"),
    ("dst-value", _with(0, dst_policy={"nonexistent": "later"}),
     "jobs[0].dst_policy.nonexistent", "'later' is not one of shift_forward, gap_edge, skip"),
    ("dst-key", _with(0, dst_policy={"gap": "skip"}),
     "jobs[0].dst_policy.gap", "unknown key"),
    ("overlap-value", _with(0, overlap="queue"),
     "jobs[0].overlap", "'queue' is not one of skip, buffer_one, allow"),
    ("coalesce-value", _with(0, coalesce="newest"),
     "jobs[0].coalesce", "'newest' is not one of latest, earliest, all"),
    ("retries-range", _with(0, retries={"max_attempts": 0}),
     "jobs[0].retries.max_attempts", "0 is out of range 1-20"),
    ("retries-cap", _with(0, retries={"base_delay_s": 10, "max_delay_s": 5}),
     "jobs[0].retries.max_delay_s", "5 is below base_delay_s 10"),
    ("timeout-range", _with(0, timeout_s=0), "jobs[0].timeout_s", "0 is out of range 1-86400"),
    ("paused-type", _with(0, paused="no"), "jobs[0].paused", "must be true or false"),
    ("missing-schedule", _with(1, schedule=None), "jobs[1].schedule", "is required"),
    ("unknown-job-key", _with(1, cron="0 * * * *"), "jobs[1].cron", "unknown key"),
    ("unknown-top-key", {**GOOD, "version": 2}, "version", "unknown top-level key"),
]


@pytest.mark.parametrize(("document", "path", "reason"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_registry_rejected_with_path_and_reason(document: dict[str, Any], path: str,
                                                    reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        registry.parse(document)
    assert info.value.path == path
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{path}: ")


def test_hourly_heavy_jobs_one_hour_apart_by_timeout_are_fine() -> None:
    doc = _with(1, schedule="30 * * * *", timeout_s=1800)
    doc["jobs"][0].update(schedule="0 * * * *", timeout_s=1800, timezone="UTC")
    assert len(registry.parse(doc).jobs) == 2
    doc["jobs"][1]["timeout_s"] = 1801  # now purge's window reaches into the next archive
    with pytest.raises(ConfigError, match=r"^jobs\[1\]\.schedule: heavy job window"):
        registry.parse(doc)


def test_cli_validate_exits_1_with_field_and_reason(tmp_path: Path) -> None:
    bad = tmp_path / "jobs.yaml"
    bad.write_text(yaml.safe_dump(_with(0, schedule="61 3 * * *")))
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "jobs", "validate", str(bad)],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "jobs[0].schedule: minute: 61 is out of range 0-59" in proc.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "jobs", "validate", str(good)],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "jobs.yaml"
    bad.write_text("jobs: [\n  - name: x\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line"):
        registry.load(bad)


def test_job_runner_refuses_an_invalid_registry(tmp_path: Path) -> None:
    bad = tmp_path / "jobs.yaml"
    bad.write_text(yaml.safe_dump(_with(1, kind="vacuum_everything")))
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "job-runner", "--registry",
                           str(bad)], cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=60)
    assert proc.returncode == 1
    assert "jobs[1].kind: unknown kind 'vacuum_everything'" in proc.stderr


# --- run windows, batch bounds ------------------------------------------------------------


def _windowed(window: Any, **changes: Any) -> dict[str, Any]:
    return _with(0, run_window=window, **changes)


@pytest.mark.parametrize(("window", "changes", "path", "needle"), [
    ({"start": "01:00", "end": "25:00"}, {}, "jobs[0].run_window.end", "out of range"),
    ({"start": "1:00", "end": "05:00"}, {}, "jobs[0].run_window.start", "not a local time"),
    ({"start": "01:00"}, {}, "jobs[0].run_window.end", "is required"),
    ({"start": "01:00", "end": "05:00", "days": 1}, {}, "jobs[0].run_window.days",
     "unknown key"),
    ("01:00-05:00", {}, "jobs[0].run_window", "must be a mapping"),
    ({"start": "03:00", "end": "03:00"}, {}, "jobs[0].run_window.end", "equals start"),
    ({"start": "02:58", "end": "03:05"}, {"batch_timeout_s": 600}, "jobs[0].run_window",
     "shorter than one batch's timeout"),
    ({"start": "04:00", "end": "06:00"}, {}, "jobs[0].run_window",
     "never fires inside the window 04:00-06:00 Europe/Berlin"),
    ({"start": "02:00", "end": "05:00"}, {"batch_timeout_s": 900}, "jobs[0].batch_timeout_s",
     "exceeds timeout_s 600"),
    ({"start": "02:00", "end": "05:00"}, {"batch_pause_s": 61}, "jobs[0].batch_pause_s",
     "out of range"),
])
def test_bad_run_window_rejected_naming_the_field(window: Any, changes: dict[str, Any],
                                                  path: str, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        registry.parse(_windowed(window, **changes))
    assert caught.value.path == path
    assert needle in caught.value.reason


def test_run_window_parses_and_crosses_midnight() -> None:
    doc = _with(0, schedule="30 23 * * *", run_window={"start": "23:00", "end": "04:00"},
                batch_timeout_s=120, batch_pause_s=0.5)
    job = registry.parse(doc).jobs[0]
    assert job.run_window is not None and job.run_window.crosses_midnight
    assert job.run_window.length_s == 5 * 3600
    assert (job.batch_timeout_s, job.batch_pause_s) == (120, 0.5)
    assert registry.as_document(job)["run_window"] == {"start": "23:00", "end": "04:00"}


def test_batch_timeout_defaults_below_a_short_timeout() -> None:
    job = registry.parse(_with(0, timeout_s=60)).jobs[0]
    assert job.batch_timeout_s == 60
    assert registry.parse(GOOD).jobs[0].batch_timeout_s == registry.DEFAULT_BATCH_TIMEOUT_S


def test_a_schedule_firing_inside_the_window_only_sometimes_is_accepted() -> None:
    # Monthly on the 1st at 05:30 local: inside a 05:00-06:00 window.
    doc = _with(0, schedule="30 5 1 * *", run_window={"start": "05:00", "end": "06:00"})
    assert registry.parse(doc).jobs[0].run_window is not None
