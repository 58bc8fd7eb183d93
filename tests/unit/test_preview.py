"""``cronorch preview`` prints the next fires in the user's zone and in UTC."""

from __future__ import annotations

import orjson
import pytest

from streams.cli.main import main


def _rows(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, str]]:
    assert main(list(argv)) == 0
    return [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_digest_on_spring_forward_day_with_each_gap_policy(
        capsys: pytest.CaptureFixture[str]) -> None:
    base = ["preview", "digest", "--timezone", "America/New_York", "--digest-time", "02:30",
            "--after", "2026-03-07T12:00:00Z", "-n", "2"]
    shift = _rows(capsys, *base)
    edge = _rows(capsys, *base, "--dst-policy", "gap_edge,first")
    skip = _rows(capsys, *base, "--dst-policy", "skip,first")
    assert [r["local"] for r in shift] == ["2026-03-08T03:30:00-04:00",
                                           "2026-03-09T02:30:00-04:00"]
    assert edge[0]["utc"] == "2026-03-08T07:00:00Z"
    assert skip[0]["local_date"] == "2026-03-09"


def test_series_and_reminders_of_a_task(capsys: pytest.CaptureFixture[str]) -> None:
    task = orjson.dumps({
        "task_id": "s", "user_id": "u", "version": 1, "title": "t", "status": "open",
        "due_at": "2026-01-31T15:00:00Z", "reminders": [{"before_minutes": 30}],
        "recurrence": {"rrule": "FREQ=MONTHLY;BYMONTHDAY=31", "skip": "forward"}}).decode()
    rows = _rows(capsys, "preview", "task", task, "--timezone", "America/New_York",
                 "--after", "2026-02-01T00:00:00Z", "-n", "2")
    assert [r["kind"] for r in rows] == ["task.spawn", "task.spawn"]
    assert rows[0]["occurrence"] == "2026-03-01T15:00:00Z"  # Feb 31 → Mar 1 (forward)


def test_bad_input_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "digest", "--timezone", "Mars/Olympus"]) == 1
    assert "Mars/Olympus" in capsys.readouterr().err
