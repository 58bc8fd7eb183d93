"""Wire formats: round trips, instant/date/time/zone rules, WireError reasons, schema files."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from schemas import (
    NOTIFICATION_ADAPTER,
    TASK_EVENT_ADAPTER,
    TIMELINE_ADAPTER,
    AtReminder,
    BeforeReminder,
    DeadLetter,
    DigestDaily,
    JobRun,
    JobTrigger,
    Occurrence,
    ReminderDue,
    TaskDeleted,
    TaskSpawn,
    TaskUpserted,
    Tick,
    UserSettings,
    WireError,
    dumps,
    format_instant,
    loads,
    user_id_of,
)
from schemas.export import JSON_DIR, json_schemas, main, rendered

SECRET_TITLE = "Call Dr. Smith about biopsy"

TASK_UPSERTED: dict[str, Any] = {
    "type": "task.upserted",
    "event_id": "ev-1",
    "occurred_at": "2026-03-08T07:30:00Z",
    "task": {
        "task_id": "t-1",
        "user_id": "u-1",
        "version": 3,
        "title": SECRET_TITLE,
        "status": "open",
        "completed_at": None,
        "due_at": "2026-03-09T09:00:00Z",
        "due_date": None,
        "reminders": [{"before_minutes": 15}, {"at": "2026-03-09T07:00:00Z"}],
        "recurrence": {"rrule": "FREQ=WEEKLY;BYDAY=MO", "anchor": "due", "skip": "omit"},
        "series_id": None,
    },
}
TASK_DELETED: dict[str, Any] = {
    "type": "task.deleted",
    "event_id": "ev-2",
    "occurred_at": "2026-03-08T07:31:00Z",
    "task_id": "t-1",
    "user_id": "u-1",
    "version": 4,
}
USER_SETTINGS: dict[str, Any] = {
    "type": "user.settings",
    "event_id": "ev-3",
    "occurred_at": "2026-03-08T07:32:00Z",
    "user_id": "u-1",
    "version": 2,
    "timezone": "Europe/Berlin",
    "digest_time": "09:00",
    "dst_policy": {"nonexistent": "gap_edge", "ambiguous": "both"},
}
TICK: dict[str, Any] = {"type": "tick", "tick_at": "2026-03-08T07:30:01Z", "source": "live"}
REMINDER_DUE: dict[str, Any] = {
    "type": "reminder.due",
    "notification_id": "n-1",
    "user_id": "u-1",
    "task_id": "t-1",
    "task_version": 3,
    "title": SECRET_TITLE,
    "due_at": "2026-03-09T09:00:00Z",
    "reminder": {"before_minutes": 15},
    "fire_at": "2026-03-09T08:45:00Z",
    "tick_at": "2026-03-09T08:45:01Z",
    "late": True,
}
DIGEST_DAILY: dict[str, Any] = {
    "type": "digest.daily",
    "notification_id": "n-2",
    "user_id": "u-1",
    "timezone": "Europe/Berlin",
    "local_date": "2026-03-09",
    "fire_at": "2026-03-09T08:00:00Z",
    "tick_at": "2026-03-09T08:00:00Z",
    "late": False,
    "tasks": [
        {"task_id": "t-1", "title": "a", "due_at": "2026-03-09T09:00:00Z", "due_date": None},
        {"task_id": "t-2", "title": "b", "due_at": None, "due_date": "2026-03-09"},
    ],
    "overdue_count": 2,
    "omitted_count": 3,
}
TASK_SPAWN: dict[str, Any] = {
    "type": "task.spawn",
    "spawn_id": "s-1",
    "user_id": "u-1",
    "series_id": "t-1",
    "occurrence": {"due_date": "2026-03-16"},
    "fire_at": "2026-03-15T23:00:00Z",
    "tick_at": "2026-03-15T23:00:00Z",
    "late": False,
    "template": {"title": "Weekly review", "reminders": [{"at": "2026-03-16T08:00:00Z"}]},
}
DEAD_LETTER: dict[str, Any] = {
    "type": "dead.letter",
    "reason": "invalid JSON: unexpected character",
    "source_topic": "todo.task-events",
    "source_partition": 3,
    "source_offset": 42,
    "original_key_b64": None,
    "original_value_b64": "//4=",
    "failed_at": "2026-03-08T07:30:00Z",
    "original_size_bytes": 2,
    "original_sha256": "b3d510ef04275ca8e698e5b3cbb0ece3949ef9252f0cdc839e9ee347409a2209",
    "original_truncated": False,
}
JOB_RUN: dict[str, Any] = {
    "type": "job.run",
    "run_id": "r-1",
    "job": "archive-completed",
    "kind": "archive_completed",
    "scheduled_for": "2026-03-08T02:00:00Z",
    "trigger": "schedule",
    "attempt": 1,
    "started_at": "2026-03-08T02:00:01Z",
    "finished_at": "2026-03-08T02:00:03Z",
    "duration_ms": 2000,
    "status": "succeeded",
    "processed": 10,
    "affected": 7,
    "before": {"completed": 10},
    "after": {"completed": 3},
    "error_class": None,
    "error_message": None,
    "progress": {"rows_done": 7, "batches": 1, "windows": 1},
    "undoes": None,
}
JOB_TRIGGER: dict[str, Any] = {
    "type": "job.trigger",
    "trigger_id": "jt-1",
    "job": "archive-completed",
    "scheduled_for": "2026-03-08T02:00:00Z",
    "tick_at": "2026-03-08T02:00:00Z",
    "trigger": "backfill",
    "disposition": "run",
    "late": False,
}

Target = type[BaseModel] | TypeAdapter[Any]
ROUND_TRIPS: list[tuple[Target, dict[str, Any]]] = [
    (TASK_EVENT_ADAPTER, TASK_UPSERTED),
    (TASK_EVENT_ADAPTER, TASK_DELETED),
    (TASK_EVENT_ADAPTER, USER_SETTINGS),
    (TIMELINE_ADAPTER, TICK),
    (TIMELINE_ADAPTER, TASK_UPSERTED),
    (NOTIFICATION_ADAPTER, REMINDER_DUE),
    (NOTIFICATION_ADAPTER, DIGEST_DAILY),
    (TaskSpawn, TASK_SPAWN),
    (DeadLetter, DEAD_LETTER),
    (JobRun, JOB_RUN),
    (JobTrigger, JOB_TRIGGER),
]


def raw(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document)


def reason(target: Target, data: bytes) -> str:
    with pytest.raises(WireError) as caught:
        loads(target, data)
    return caught.value.reason


def with_task(**changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(TASK_UPSERTED)
    document["task"].update(changes)
    return document


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "document"),
    ROUND_TRIPS,
    ids=[f"{i}-{d['type']}" for i, (_, d) in enumerate(ROUND_TRIPS)],
)
def test_round_trip_is_byte_exact(target: Target, document: dict[str, Any]) -> None:
    model = loads(target, raw(document))
    assert orjson.loads(dumps(model)) == document
    assert loads(target, dumps(model)) == model


def test_a_v1_job_trigger_without_a_disposition_runs_its_slot() -> None:
    document = {k: v for k, v in JOB_TRIGGER.items() if k not in ("disposition", "late")}
    trigger = loads(JobTrigger, raw(document))
    assert (trigger.disposition, trigger.late) == ("run", False)
    assert reason(JobTrigger, raw({**document, "disposition": "maybe"})).startswith(
        "disposition: ")


def test_models_are_frozen() -> None:
    tick = loads(Tick, raw(TICK))
    with pytest.raises(ValidationError):
        tick.tick_at = datetime(2026, 1, 1, tzinfo=UTC)  # type: ignore[misc]


def test_task_event_types_and_user_id() -> None:
    events = [
        loads(TASK_EVENT_ADAPTER, raw(d)) for d in (TASK_UPSERTED, TASK_DELETED, USER_SETTINGS)
    ]
    assert [type(e) for e in events] == [TaskUpserted, TaskDeleted, UserSettings]
    assert {user_id_of(e) for e in events} == {"u-1"}


def test_defaults_fill_optional_input_fields() -> None:
    minimal = {k: v for k, v in USER_SETTINGS.items() if k not in {"digest_time", "dst_policy"}}
    settings = loads(TASK_EVENT_ADAPTER, raw(minimal))
    assert isinstance(settings, UserSettings)
    assert settings.digest_time is None
    assert settings.dst_policy is None
    task = loads(TASK_EVENT_ADAPTER, raw(with_task(recurrence={"rrule": "RRULE:FREQ=DAILY"})))
    assert isinstance(task, TaskUpserted)
    assert task.task.recurrence is not None
    assert (task.task.recurrence.anchor, task.task.recurrence.skip) == ("due", "omit")
    policy = loads(TASK_EVENT_ADAPTER, raw({**USER_SETTINGS, "dst_policy": {}}))
    assert isinstance(policy, UserSettings)
    assert policy.dst_policy is not None
    assert (policy.dst_policy.nonexistent, policy.dst_policy.ambiguous) == (
        "shift_forward",
        "first",
    )


def test_local_values_are_python_types() -> None:
    settings = loads(TASK_EVENT_ADAPTER, raw(USER_SETTINGS))
    assert isinstance(settings, UserSettings)
    assert settings.digest_time == time(9, 0)
    digest = loads(DigestDaily, raw(DIGEST_DAILY))
    assert digest.local_date == date(2026, 3, 9)


def test_reminders_are_two_shapes() -> None:
    event = loads(TASK_EVENT_ADAPTER, raw(TASK_UPSERTED))
    assert isinstance(event, TaskUpserted)
    assert event.task.reminders == [
        BeforeReminder(before_minutes=15),
        AtReminder(at=datetime(2026, 3, 9, 7, tzinfo=UTC)),
    ]


def test_occurrence_writes_only_the_key_that_is_set() -> None:
    assert orjson.loads(dumps(Occurrence(due_at=datetime(2026, 3, 16, 8, tzinfo=UTC)))) == {
        "due_at": "2026-03-16T08:00:00Z"
    }
    assert orjson.loads(dumps(Occurrence(due_date=date(2026, 3, 16)))) == {"due_date": "2026-03-16"}
    for bad in ({}, {"due_at": "2026-03-16T08:00:00Z", "due_date": "2026-03-16"}):
        with pytest.raises(ValidationError, match="exactly one of due_at or due_date"):
            Occurrence.model_validate(bad)


def test_dead_letter_carries_bytes_exactly() -> None:
    letter = DeadLetter.of(
        reason="expected a JSON object",
        topic="todo.task-events",
        partition=0,
        offset=7,
        key=b"u-1",
        value=b"\xff\x00[1]",
        failed_at=datetime(2026, 3, 8, 7, 30, tzinfo=UTC),
    )
    again = loads(DeadLetter, dumps(letter))
    assert (again.original_key, again.original_value) == (b"u-1", b"\xff\x00[1]")
    assert reason(DeadLetter, raw({**DEAD_LETTER, "original_value_b64": "not base64!"})) == (
        "original_value_b64: Input should be standard base64"
    )


# --- instants, dates, times, zones ------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2026-03-08T07:30:00Z", "2026-03-08T07:30:00Z"),
        ("2026-03-08T08:30:00+01:00", "2026-03-08T07:30:00Z"),
        ("2026-03-07T21:30:00-10:00", "2026-03-08T07:30:00Z"),
        ("2026-03-08t07:30:00z", "2026-03-08T07:30:00Z"),
        ("2026-03-08T07:30:00.250+00:00", "2026-03-08T07:30:00.25Z"),
        ("2026-03-08T07:30:00.000Z", "2026-03-08T07:30:00Z"),
    ],
)
def test_instants_are_normalised_to_utc_with_z(written: str, expected: str) -> None:
    tick = loads(Tick, raw({"type": "tick", "tick_at": written}))
    assert tick.tick_at.tzinfo is UTC
    assert orjson.loads(dumps(tick))["tick_at"] == expected


def test_format_instant_converts_any_offset() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert format_instant(datetime(2026, 3, 8, 9, 30, tzinfo=plus_two)) == "2026-03-08T07:30:00Z"


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("2026-03-08T07:30:00", "naive datetime: an instant needs a UTC offset such as 'Z'"),
        ("2026-03-08", "Input should be an RFC 3339 instant"),
        ("1772955000", "Input should be an RFC 3339 instant"),
        (1772955000, "Input should be an RFC 3339 instant string"),
        ("2026-02-30T07:30:00Z", "Input should be a valid datetime"),
    ],
)
def test_bad_instants_are_rejected(written: object, message: str) -> None:
    assert reason(Tick, raw({"type": "tick", "tick_at": written})).startswith(f"tick_at: {message}")


def test_naive_datetime_objects_are_rejected() -> None:
    with pytest.raises(ValidationError, match="naive datetime"):
        Tick(tick_at=datetime(2026, 3, 8, 7, 30))


@pytest.mark.parametrize("written", ["9:00", "09:00:00", "24:00", "09:60", 900])
def test_digest_time_is_hh_mm(written: object) -> None:
    assert reason(TASK_EVENT_ADAPTER, raw({**USER_SETTINGS, "digest_time": written})) == (
        "digest_time: Input should be a local time 'HH:MM'"
    )


@pytest.mark.parametrize("written", ["2026-3-9", "2026-03-09T00:00:00Z", 20260309])
def test_local_date_is_yyyy_mm_dd(written: object) -> None:
    assert reason(TASK_EVENT_ADAPTER, raw(with_task(due_at=None, due_date=written))) == (
        "task.due_date: Input should be a local date 'YYYY-MM-DD'"
    )


@pytest.mark.parametrize("zone", ["Mars/Olympus", "Europe/berlin ", "../etc/passwd", ""])
def test_unknown_zone_is_rejected(zone: str) -> None:
    assert reason(TASK_EVENT_ADAPTER, raw({**USER_SETTINGS, "timezone": zone})) == (
        f"timezone: unknown IANA time zone '{zone}'"
    )


# --- shape rules ------------------------------------------------------------------------


def test_inputs_ignore_unknown_fields() -> None:
    document = {**TASK_UPSERTED, "trace": {"id": 1}}
    document["task"] = {**TASK_UPSERTED["task"], "priority": "high"}
    document["task"]["reminders"] = [{"before_minutes": 5, "channel": "push"}]
    event = loads(TASK_EVENT_ADAPTER, raw(document))
    assert isinstance(event, TaskUpserted)
    assert event.task.reminders == [BeforeReminder(before_minutes=5)]
    assert loads(TIMELINE_ADAPTER, raw({**TICK, "producer": "p-1"})) == loads(Tick, raw(TICK))


@pytest.mark.parametrize(
    ("target", "document"),
    [
        (NOTIFICATION_ADAPTER, REMINDER_DUE),
        (TaskSpawn, TASK_SPAWN),
        (DeadLetter, DEAD_LETTER),
        (JobRun, JOB_RUN),
    ],
)
def test_outputs_reject_unknown_fields(target: Target, document: dict[str, Any]) -> None:
    assert reason(target, raw({**document, "extra": 1})) == "extra: Extra inputs are not permitted"


def test_output_nested_models_reject_unknown_fields() -> None:
    document = {**TASK_SPAWN, "occurrence": {"due_date": "2026-03-16", "x": 1}}
    assert reason(TaskSpawn, raw(document)) == "occurrence.x: Extra inputs are not permitted"
    with pytest.raises(ValidationError):
        ReminderDue.model_validate({**REMINDER_DUE, "surprise": True})


def test_due_at_and_due_date_exclude_each_other() -> None:
    document = with_task(due_date="2026-03-09")
    assert reason(TASK_EVENT_ADAPTER, raw(document)) == (
        "task: due_at and due_date are mutually exclusive"
    )


@pytest.mark.parametrize(
    "reminder",
    [{}, {"before_minutes": 5, "at": "2026-03-09T07:00:00Z"}, 15, "15m", {"minutes": 15}],
)
def test_bad_reminder_shapes_are_rejected(reminder: object) -> None:
    assert reason(TASK_EVENT_ADAPTER, raw(with_task(reminders=[reminder]))) == (
        "task.reminders.0: a reminder has exactly one of 'before_minutes' or 'at'"
    )


@pytest.mark.parametrize(
    ("reminder", "expected"),
    [
        ({"before_minutes": -1}, "before_minutes: Input should be greater than or equal to 0"),
        ({"before_minutes": "15"}, "before_minutes: Input should be a valid integer"),
        ({"at": "tomorrow"}, "at: Input should be an RFC 3339 instant"),
    ],
)
def test_bad_reminder_values_are_rejected(reminder: object, expected: str) -> None:
    assert reason(TASK_EVENT_ADAPTER, raw(with_task(reminders=[reminder]))) == (
        f"task.reminders.0.{expected}"
    )


@pytest.mark.parametrize("rrule", ["", "DAILY", "DTSTART:20260101T000000Z"])
def test_rrule_needs_its_outline(rrule: str) -> None:
    assert reason(TASK_EVENT_ADAPTER, raw(with_task(recurrence={"rrule": rrule}))).startswith(
        "task.recurrence.rrule: "
    )


# --- WireError reasons ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x8f\x00\xfe garbage", "invalid JSON: "),
        (b"", "invalid JSON: "),
        (b'{"type": "tick", ', "invalid JSON: "),
        (b"[1, 2]", "expected a JSON object"),
        (b'"tick"', "expected a JSON object"),
        (b"null", "expected a JSON object"),
        (b'{"type": "task.renamed", "event_id": "e"}', "unknown type 'task.renamed'"),
        (b'{"type": 7}', "field 'type' should be a string"),
        (b'{"event_id": "e"}', "missing field 'type'"),
    ],
)
def test_reasons_for_undecodable_records(data: bytes, expected: str) -> None:
    assert reason(TASK_EVENT_ADAPTER, data).startswith(expected)


def test_reason_for_unknown_type_on_a_single_model() -> None:
    assert reason(TaskSpawn, raw({**TASK_SPAWN, "type": "task.spawned"})) == (
        "unknown type 'task.spawned'"
    )
    assert reason(TaskSpawn, raw({**TASK_SPAWN, "type": "x" * 500})).endswith("...'")


def test_reason_lists_missing_and_wrong_fields_by_path() -> None:
    document = with_task(version=0, status="done")
    del document["task"]["user_id"]
    document["occurred_at"] = None
    assert reason(TASK_EVENT_ADAPTER, raw(document)) == (
        "occurred_at: Input should be an RFC 3339 instant string; "
        "task.user_id: Field required; "
        "task.version: Input should be greater than or equal to 1; "
        "task.status: Input should be 'open' or 'completed'"
    )
    assert reason(TASK_EVENT_ADAPTER, raw({"type": "task.deleted"})).startswith(
        "event_id: Field required; occurred_at: Field required;"
    )


def test_reason_is_bounded() -> None:
    document = with_task(reminders=[{"before_minutes": -1}] * 50)
    text = reason(TASK_EVENT_ADAPTER, raw(document))
    assert len(text) <= 300
    assert text.endswith(" more")


@pytest.mark.parametrize(
    "document",
    [
        with_task(title={"text": SECRET_TITLE}),
        with_task(task_id=SECRET_TITLE * 2, version=SECRET_TITLE),
        with_task(reminders=[{"at": SECRET_TITLE}, SECRET_TITLE]),
        with_task(recurrence={"rrule": SECRET_TITLE}),
        with_task(due_at=SECRET_TITLE, status=SECRET_TITLE),
        {**USER_SETTINGS, "digest_time": SECRET_TITLE, "version": 0},
    ],
)
def test_reasons_never_contain_user_text(document: dict[str, Any]) -> None:
    text = reason(TASK_EVENT_ADAPTER, raw(document))
    assert "Smith" not in text
    assert "biopsy" not in text


def test_invalid_json_reason_does_not_echo_the_record() -> None:
    text = reason(TASK_EVENT_ADAPTER, raw(TASK_UPSERTED)[:-1] + b" Smith biopsy")
    assert text.startswith("invalid JSON: ")
    assert "Smith" not in text


def test_wire_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="expected a JSON object"):
        loads(Tick, b"[]")


# --- JSON Schema files ------------------------------------------------------------------


def test_schema_files_are_current() -> None:
    expected = rendered()
    assert set(expected) == {
        "task-events.json",
        "timeline.json",
        "notifications.json",
        "task-commands.json",
        "dead-letters.json",
        "job-runs.json",
        "job-triggers.json",
    }
    stale = [
        name
        for name, text in expected.items()
        if not (JSON_DIR / name).is_file() or (JSON_DIR / name).read_text("utf-8") != text
    ]
    assert not stale, f"stale schema files {stale}: run python -m schemas.export"


def test_export_check_reports_stale_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--dir", str(tmp_path)]) == 0
    assert main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "timeline.json").write_text("{}\n", "utf-8")
    (tmp_path / "job-runs.json").unlink()
    capsys.readouterr()
    assert main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "timeline.json" in err
    assert "job-runs.json" in err
    assert "task-events.json" not in err


def test_schemas_describe_the_contract() -> None:
    schemas = json_schemas()
    events = schemas["task-events.json"]
    assert events["discriminator"]["propertyName"] == "type"
    assert set(events["discriminator"]["mapping"]) == {
        "task.upserted",
        "task.deleted",
        "user.settings",
    }
    assert "additionalProperties" not in events["$defs"]["Task"]
    spawn = schemas["task-commands.json"]
    assert spawn["additionalProperties"] is False
    assert spawn["$defs"]["Occurrence"]["oneOf"] == [
        {"required": ["due_at"]},
        {"required": ["due_date"]},
    ]
    run = schemas["job-runs.json"]
    assert set(run["required"]) == set(JOB_RUN)
    assert json.loads(json.dumps(schemas)) == schemas
