"""Maintenance jobs end to end: real Kafka and PostgreSQL, ``cronorch job-runner`` and
``cronorch jobs …`` as subprocesses, ticks published for a historical window."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from streams.processes import tickproducer
from streams.settings import Settings
from tests.integration.conftest import database, pg_stack  # noqa: F401 - fixtures
from tests.support import ROOT, Proc, caught_up, env_for, eventually, read_json

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def _registry(tmp_path: Path, *jobs: dict[str, Any]) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump({"jobs": [
        {"kind": "noop", "schedule": "* * * * *", "catchup_window_s": 3600, **job}
        for job in jobs]}))
    return path


def _with_db(settings: Settings, url: str) -> Settings:
    return settings.model_copy(update={"database_url": SecretStr(url)})


async def _rows(url: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        return [dict(r) for r in await conn.fetch(
            "SELECT job, scheduled_for, trigger, status, attempt, started_at, finished_at "
            "FROM job_runs ORDER BY job, scheduled_for")]
    finally:
        await conn.close()


def _minutes(rows: list[dict[str, Any]], job: str, status: str | None = None) -> list[int]:
    return [int((r["scheduled_for"] - T0) / MINUTE) for r in rows
            if r["job"] == job and (status is None or r["status"] == status)]


async def _wait_rows(url: str, count: int, timeout_s: float = 90) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    async def check() -> bool:
        nonlocal rows
        rows = await _rows(url)
        return len(rows) >= count and all(r["status"] not in ("running", "queued")
                                          for r in rows)

    await eventually(check, timeout_s, f"{count} finished job_runs rows")
    return rows


async def _ticks(settings: Settings, first: int, last: int) -> None:
    await tickproducer.publish_range(settings, T0 + first * MINUTE, T0 + last * MINUTE, 60)


def _cli(settings: Settings, *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT,
                          env=env_for(settings), capture_output=True, text=True, check=False,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = orjson.loads(proc.stdout)
    return result


def _stop(runner: Proc, log: Path) -> None:
    assert runner.kill(signal.SIGTERM) == 0, log.read_text()[-3000:]


def test_two_runners_duplicated_triggers_each_slot_once(
        settings: Settings, database: str, tmp_path: Path) -> None:  # noqa: F811
    s = _with_db(settings, database)
    path = _registry(tmp_path, {"name": "alpha", "overlap": "allow", "coalesce": "all"},
                     {"name": "beta", "overlap": "allow", "coalesce": "all"})
    logs = [tmp_path / "runner-a.log", tmp_path / "runner-b.log"]
    runners = [Proc(s, "job-runner", "--registry", str(path), log=log).start() for log in logs]
    expected = {(job, T0 + m * MINUTE) for job in ("alpha", "beta") for m in range(30)}

    async def drive() -> list[dict[str, Any]]:
        await _ticks(s, 0, 14)
        await _wait_rows(database, 30)
        # Duplicate every trigger so far, then kill one runner without warning.
        triggers = await kafka_records(s, s.topics.job_triggers)
        await republish(s, s.topics.job_triggers, triggers * 2)
        runners[0].kill(signal.SIGKILL)
        await _ticks(s, 15, 29)
        rows = await _wait_rows(database, 60, timeout_s=120)
        await caught_up(s, "jobrunner", s.topics.job_triggers, transactional=True,
                        timeout_s=120)
        return rows

    try:
        rows = asyncio.run(drive())
        rows = asyncio.run(_rows(database))
    finally:
        for runner in runners:
            runner.kill(signal.SIGTERM)
    assert {(r["job"], r["scheduled_for"]) for r in rows} == expected
    assert len(rows) == 60  # UNIQUE(job, scheduled_for): one row per slot
    statuses = Counter(r["status"] for r in rows)
    # A slot in flight when its runner is SIGKILLed is resumed by the survivor (or, outside
    # its window, failed as abandoned): never two successes.
    assert statuses["succeeded"] >= 59 and statuses["succeeded"] + statuses["failed"] == 60
    records = asyncio.run(read_json(s, s.topics.job_runs))
    executions = Counter((r["job"], r["scheduled_for"]) for r in records
                         if r["status"] == "succeeded")
    assert sum(executions.values()) == statuses["succeeded"]
    assert set(executions.values()) == {1}
    log_lines = [orjson.loads(line) for log in logs for line in log.read_text().splitlines()
                 if line.startswith("{")]
    runs_logged = Counter((d["job"], d["scheduled_for"]) for d in log_lines
                          if d.get("event") == "job run" and d.get("status") == "succeeded")
    assert set(runs_logged.values()) == {1} and len(runs_logged) == statuses["succeeded"]
    assert any(d.get("event") == "slot claimed before: trigger ignored" for d in log_lines)


async def kafka_records(settings: Settings, topic: str) -> list[bytes]:
    from streams.kafka import client as kafka

    return [r.value for r in await kafka.read_all(settings, [topic]) if r.value is not None]


async def republish(settings: Settings, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for value in values:
            await producer.send(topic, value=value, key=orjson.loads(value)["job"].encode())
        await producer.flush()
    finally:
        await producer.stop()


def test_overlap_skip_buffer_one_allow(settings: Settings, database: str,  # noqa: F811
                                       tmp_path: Path) -> None:
    s = _with_db(settings, database)
    slow = {"coalesce": "all", "params": {"sleep_s": 3}}
    path = _registry(tmp_path, {"name": "skipper", "overlap": "skip", **slow},
                     {"name": "buffered", "overlap": "buffer_one", **slow},
                     {"name": "allowed", "overlap": "allow", **slow})
    log = tmp_path / "runner.log"
    runner = Proc(s, "job-runner", "--registry", str(path), log=log).start()
    try:
        asyncio.run(_ticks(s, 0, 3))  # four slots per job, all due while the first runs
        rows = asyncio.run(_wait_rows(database, 12))
    finally:
        _stop(runner, log)
    assert _minutes(rows, "skipper", "succeeded") == [0]
    assert _minutes(rows, "skipper", "skipped") == [1, 2, 3]
    assert _minutes(rows, "buffered", "succeeded") == [0, 1]
    assert _minutes(rows, "buffered", "skipped") == [2, 3]
    first, second = [r for r in rows if r["job"] == "buffered" and r["status"] == "succeeded"]
    assert second["started_at"] >= first["finished_at"]  # the buffered one waited
    allowed = [r for r in rows if r["job"] == "allowed"]
    assert _minutes(rows, "allowed", "succeeded") == [0, 1, 2, 3]
    assert max(r["started_at"] for r in allowed) < min(r["finished_at"] for r in allowed)


def test_catch_up_window_and_coalesce(settings: Settings, database: str,  # noqa: F811
                                      tmp_path: Path) -> None:
    s = _with_db(settings, database)
    window = {"catchup_window_s": 600, "overlap": "allow"}
    path = _registry(tmp_path, {"name": "latest", "coalesce": "latest", **window},
                     {"name": "earliest", "coalesce": "earliest", **window},
                     {"name": "every", "coalesce": "all", **window})
    log = tmp_path / "runner.log"
    runner = Proc(s, "job-runner", "--registry", str(path), log=log).start()
    try:
        asyncio.run(_ticks(s, 0, 0))
        asyncio.run(_wait_rows(database, 3))
        asyncio.run(_ticks(s, 30, 30))  # the tick producer was away for 30 minutes
        rows = asyncio.run(_wait_rows(database, 3 * 31))  # every slot decided has its row
        records = asyncio.run(read_json(s, s.topics.job_runs))
    finally:
        _stop(runner, log)
    assert _minutes(rows, "latest", "succeeded") == [0, 30]
    assert _minutes(rows, "earliest", "succeeded") == [0, 20]
    assert _minutes(rows, "every", "succeeded") == [0, *range(20, 31)]
    for job in ("latest", "earliest", "every"):
        assert _minutes(rows, job) == list(range(31))
        assert _minutes(rows, job, "missed") == list(range(1, 20))
    assert _minutes(rows, "latest", "skipped") == list(range(20, 30))
    assert _minutes(rows, "earliest", "skipped") == list(range(21, 31))
    for job in ("latest", "earliest", "every"):
        missed = sorted(int((_instant(r["scheduled_for"]) - T0) / MINUTE) for r in records
                        if r["job"] == job and r["status"] == "missed")
        assert missed == list(range(1, 20))
    coalesced = Counter(r["job"] for r in records if r["status"] == "skipped")
    assert coalesced == {"latest": 10, "earliest": 10}


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_pause_resume_catch_up_and_from_now(settings: Settings, database: str,  # noqa: F811
                                            tmp_path: Path) -> None:
    s = _with_db(settings, database)
    path = _registry(tmp_path, {"name": "sweeper", "overlap": "allow", "coalesce": "all"})
    log = tmp_path / "runner.log"
    runner = Proc(s, "job-runner", "--registry", str(path), log=log).start()
    reg = ("--registry", str(path))

    async def settle() -> None:
        await caught_up(s, "jobrunner", s.topics.job_triggers, transactional=True)

    try:
        asyncio.run(_ticks(s, 0, 2))
        asyncio.run(_wait_rows(database, 3))
        assert _cli(s, "jobs", "pause", "sweeper", "--reason", "db upgrade", *reg)["paused"]
        asyncio.run(_ticks(s, 3, 5))
        asyncio.run(settle())
        assert len(asyncio.run(_rows(database))) == 3  # deferred, not run, not claimed
        listed = _cli(s, "jobs", "list", *reg)["jobs"][0]
        assert listed["paused"] and listed["pause_reason"] == "db upgrade"
        resumed = _cli(s, "jobs", "resume", "sweeper", *reg)
        assert resumed["catch_up_from"] == "2026-03-02T12:03:00Z"
        asyncio.run(_ticks(s, 6, 6))
        rows = asyncio.run(_wait_rows(database, 7))
        assert _minutes(rows, "sweeper", "succeeded") == [0, 1, 2, 3, 4, 5, 6]  # caught up

        _cli(s, "jobs", "pause", "sweeper", "--reason", "again", *reg)
        asyncio.run(_ticks(s, 7, 9))
        asyncio.run(settle())
        assert _cli(s, "jobs", "resume", "sweeper", "--from-now", *reg)["catch_up_from"] is None
        asyncio.run(_ticks(s, 10, 10))
        rows = asyncio.run(_wait_rows(database, 8))
    finally:
        _stop(runner, log)
    assert _minutes(rows, "sweeper") == [0, 1, 2, 3, 4, 5, 6, 10]  # 7-9 dropped (from now)
    assert {r["status"] for r in rows} == {"succeeded"}


def test_manual_run_is_recorded_as_manual(settings: Settings, database: str,  # noqa: F811
                                          tmp_path: Path) -> None:
    s = _with_db(settings, database)
    path = _registry(tmp_path, {"name": "adhoc"})
    run = _cli(s, "jobs", "run", "adhoc", "--registry", str(path))
    assert run["trigger"] == "manual" and run["status"] == "succeeded" and run["attempt"] == 1
    rows = asyncio.run(_rows(database))
    assert [(r["job"], r["trigger"], r["status"]) for r in rows] == [
        ("adhoc", "manual", "succeeded")]
    records = asyncio.run(read_json(s, s.topics.job_runs))
    assert [(r["job"], r["trigger"], r["status"]) for r in records] == [
        ("adhoc", "manual", "succeeded")]


# --- issue 13: a range replay across a DST week, two runners, one SIGKILLed ------------------

WEEK = datetime(2027, 3, 12, tzinfo=UTC)  # New York springs forward on Sunday 2027-03-14
NEW_YORK_SLOTS = [datetime(2027, 3, 12, 7, 30, tzinfo=UTC),
                  datetime(2027, 3, 13, 7, 30, tzinfo=UTC),
                  datetime(2027, 3, 14, 7, 0, tzinfo=UTC),  # 02:30 does not exist: 03:00 EDT
                  datetime(2027, 3, 15, 6, 30, tzinfo=UTC),
                  datetime(2027, 3, 16, 6, 30, tzinfo=UTC)]


async def _seed_completed(url: str, completed: list[datetime]) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.executemany(
            "INSERT INTO tasks (task_id, user_id, title, status, completed_at) "
            "VALUES ($1, $2, 'title', 'completed', $3)",
            [(f"t{i}", f"u{i % 7}", at) for i, at in enumerate(completed)])
    finally:
        await conn.close()


async def _task_ids(url: str) -> tuple[set[str], list[str]]:
    conn = await asyncpg.connect(url)
    try:
        return ({r[0] for r in await conn.fetch("SELECT task_id FROM tasks")},
                [r[0] for r in await conn.fetch("SELECT task_id FROM tasks_archive")])
    finally:
        await conn.close()


async def _slot_rows(url: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        return [dict(r) for r in await conn.fetch(
            "SELECT scheduled_for, tick_at, status, attempt, error_message FROM job_runs "
            "ORDER BY scheduled_for")]
    finally:
        await conn.close()


def _trigger_owner(logs: list[Path]) -> int | None:
    """The runner whose trigger agent holds scheduler.ticks, once both runners' agents have
    joined the group (the latest assignment of partition 0 wins); None before that."""
    joined: set[int] = set()
    latest: tuple[str, int] | None = None
    for i, path in enumerate(logs):
        for line in path.read_text().splitlines():
            doc = orjson.loads(line) if line.startswith("{") else {}
            if doc.get("role") == "jobtrigger" and doc.get("event") == "partitions assigned":
                joined.add(i)
                if doc.get("partitions") and (latest is None or doc["ts"] > latest[0]):
                    latest = (doc["ts"], i)
    return latest[1] if latest is not None and joined == set(range(len(logs))) else None


def test_dst_week_replay_two_runners_one_killed_every_slot_once(
        settings: Settings, database: str, tmp_path: Path) -> None:  # noqa: F811
    s = _with_db(settings, database)
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump({"jobs": [{
        "name": "archive", "kind": "archive_completed", "schedule": "30 2 * * *",
        "timezone": "America/New_York", "dst_policy": {"nonexistent": "gap_edge"},
        "catchup_window_s": 7200, "params": {"older_than_days": 1, "batch_size": 7},
        # Overlap is judged on the wall clock, and a replay makes the week's slots due within
        # seconds: with the default `skip` a slot would be skipped while the previous runs.
        "overlap": "allow"}]}))
    # A task completed every hour from a week before the replay to its end.
    completed = [WEEK - timedelta(days=7) + i * timedelta(hours=1) for i in range(12 * 24)]
    asyncio.run(_seed_completed(database, completed))
    logs = [tmp_path / "runner-a.log", tmp_path / "runner-b.log"]
    runners = [Proc(s, "job-runner", "--registry", str(path), log=log).start() for log in logs]
    replay_log = tmp_path / "replay.log"
    try:
        asyncio.run(eventually(lambda: _trigger_owner(logs) is not None, 60,
                               "both trigger agents in their group"))
        victim = _trigger_owner(logs)
        assert victim is not None
        # The operator's replay of the whole week; the trigger agent's owner dies without
        # warning as soon as the first slot has a row, while the backlog is being decided.
        replay = Proc(s, "tick", "--from", jobs_z(WEEK),
                      "--to", jobs_z(WEEK + timedelta(days=5) - MINUTE), "--step", "60",
                      log=replay_log).start()
        asyncio.run(_wait_rows(database, 1, timeout_s=120))
        runners[victim].kill(signal.SIGKILL)
        assert replay.proc is not None and replay.proc.wait(120) == 0, replay_log.read_text()
        asyncio.run(_wait_rows(database, 5, timeout_s=180))
        asyncio.run(caught_up(s, "jobtrigger", s.topics.ticks, transactional=True))
        asyncio.run(caught_up(s, "jobrunner", s.topics.job_triggers, transactional=True))
        rows = asyncio.run(_slot_rows(database))
        triggers = asyncio.run(read_json(s, s.topics.job_triggers))
        records = asyncio.run(read_json(s, s.topics.job_runs))
        tasks, archive = asyncio.run(_task_ids(database))
    finally:
        for runner in runners:
            runner.kill(signal.SIGTERM)
    # Every slot once, at the right UTC instant, decided at the tick of its own minute (a
    # slot in flight in the killed runner is resumed by the survivor as its next attempt).
    assert [r["scheduled_for"] for r in rows] == NEW_YORK_SLOTS
    assert [(r["status"], r["tick_at"]) for r in rows] == [
        ("succeeded", at) for at in NEW_YORK_SLOTS]
    assert sorted((t["scheduled_for"], t["tick_at"], t["disposition"], t["late"])
                  for t in triggers) == [(jobs_z(at), jobs_z(at), "run", False)
                                         for at in NEW_YORK_SLOTS]
    succeeded = Counter(r["scheduled_for"] for r in records if r["status"] == "succeeded")
    assert sorted(succeeded) == [jobs_z(at) for at in NEW_YORK_SLOTS]
    assert set(succeeded.values()) == {1}
    # The archive holds exactly what the last slot's cutoff implies: nothing lost or doubled.
    cutoff = NEW_YORK_SLOTS[-1] - timedelta(days=1)
    expected = {f"t{i}" for i, at in enumerate(completed) if at < cutoff}
    assert len(archive) == len(set(archive)) and set(archive) == expected
    assert tasks == {f"t{i}" for i in range(len(completed))} - expected


def jobs_z(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- issue 11: dry runs, undo, run windows in the preview --------------------------------------


def test_dry_run_then_archive_then_undo_twice(settings: Settings, database: str,  # noqa: F811
                                              tmp_path: Path) -> None:
    s = _with_db(settings, database)
    path = _registry(tmp_path, {"name": "archive", "kind": "archive_completed",
                                "schedule": "0 3 * * *", "params": {"batch_size": 4}},
                     {"name": "purge", "kind": "purge_expired", "schedule": "30 4 * * *"})
    old = [datetime(2020, 1, 1, tzinfo=UTC) + i * timedelta(days=1) for i in range(10)]
    asyncio.run(_seed_completed(database, old))
    reg = ["--registry", str(path)]

    dry = _cli(s, "jobs", "run", "archive", "--dry-run", *reg)
    assert dry["would_touch"] == {"tasks": {"rows": 10, "oldest": "2020-01-01T00:00:00Z",
                                            "newest": "2020-01-10T00:00:00Z"}}
    assert dry["undoable"] is True
    purge = _cli(s, "jobs", "run", "purge", "--dry-run", *reg)
    assert set(purge["would_touch"]) == {"tasks_archive", "job_runs", "dead_letters", "outbox"}
    assert purge["undoable"] is False
    assert asyncio.run(_task_ids(database))[1] == []  # the dry runs touched nothing
    assert asyncio.run(_rows(database)) == []

    run = _cli(s, "jobs", "run", "archive", *reg)
    assert run["status"] == "succeeded" and run["affected"] == 10
    undo_dry = _cli(s, "jobs", "undo", run["run_id"], "--dry-run", *reg)
    assert undo_dry["would_move"]["rows"] == 10
    undo = _cli(s, "jobs", "undo", run["run_id"], *reg)
    assert (undo["trigger"], undo["status"], undo["affected"]) == ("undo", "succeeded", 10)
    assert undo["undoes"] == run["run_id"].split("#")[0]
    again = _cli(s, "jobs", "undo", run["run_id"], *reg)
    assert again["affected"] == 0
    tasks, archive = asyncio.run(_task_ids(database))
    assert len(tasks) == 10 and archive == []
    records = asyncio.run(read_json(s, s.topics.job_runs))
    assert [(r["trigger"], r["affected"], r["undoes"]) for r in records] == [
        ("manual", 10, None), ("undo", 10, undo["undoes"]), ("undo", 0, undo["undoes"])]

    refused = subprocess.run(
        [sys.executable, "-m", "streams.cli", "jobs", "undo", "purge@2026-01-01T04:30:00Z",
         *reg], cwd=ROOT, env=env_for(s), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert "only archive runs can be undone" in refused.stderr


def test_preview_shows_the_next_windows_in_the_zone_and_utc(
        settings: Settings, tmp_path: Path) -> None:
    path = _registry(tmp_path, {"name": "nightly", "kind": "archive_completed",
                                "schedule": "30 23 * * *", "timezone": "Europe/Berlin",
                                "run_window": {"start": "23:00", "end": "05:00"}})
    out = _cli(settings, "jobs", "preview", "nightly", "--count", "1", "--windows", "2",
               "--from", "2026-03-28T12:00:00Z", "--registry", str(path))
    assert out["run_window"] == {"window": "23:00-05:00", "windows": [
        {"opens_at": "2026-03-28T22:00:00Z", "closes_at": "2026-03-29T03:00:00Z",
         "opens_local": "2026-03-28T23:00:00+01:00",
         "closes_local": "2026-03-29T05:00:00+02:00"},
        {"opens_at": "2026-03-29T21:00:00Z", "closes_at": "2026-03-30T03:00:00Z",
         "opens_local": "2026-03-29T23:00:00+02:00",
         "closes_local": "2026-03-30T05:00:00+02:00"}]}


def test_manual_run_outside_its_window_is_claimed_partial(
        settings: Settings, database: str, tmp_path: Path) -> None:  # noqa: F811
    s = _with_db(settings, database)
    now = datetime.now(UTC)
    opens, closes = now + timedelta(hours=2), now + timedelta(hours=3)
    path = _registry(tmp_path, {"name": "later", "run_window": {
        "start": f"{opens:%H:%M}", "end": f"{closes:%H:%M}"}})
    run = _cli(s, "jobs", "run", "later", "--registry", str(path))
    assert (run["status"], run["trigger"], run["started_at"]) == ("partial", "manual", None)
    assert "claimed outside its run window" in run["error_message"]
    rows = asyncio.run(_rows(database))
    assert [(r["job"], r["status"], r["started_at"]) for r in rows] == [
        ("later", "partial", None)]
