"""Issue 8 on the in-memory twin: nothing a user sends may stop the scheduler.

Every kind of hostile record is dead-lettered with a reason naming the field; the valid
events of the same users around it still fire exactly once; a record that fails while it is
applied is dead-lettered and its state put back; outputs and dead letters stay under the
size limit; a live tick far ahead of its broker time is refused, a range tick is not.
A hypothesis property drives generated events, hostile values included, through the twin.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from schemas import DeadLetter, TaskUpserted
from schemas.limits import DEAD_LETTER_VALUE_BYTES, MAX_OUTPUT_BYTES
from streams import codec
from streams.errors import BrokerUnavailable, InvalidEvent
from streams.kafka.client import Output, Record
from streams.kafka.engine import fit
from streams.settings import Settings
from streams.testing.memory import MemoryPipeline
from streams.timeline.state import PartitionState
from tests.hostile import catalogue, settings_event, upsert

FIRE = datetime(2026, 1, 2, 12, tzinfo=UTC)
SETTINGS = Settings()


def _letters(pipe: MemoryPipeline) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(o.value or b"") for o in pipe.outputs
            if o.topic == SETTINGS.topics.dead_letters]


def _notes(pipe: MemoryPipeline) -> list[dict[str, Any]]:
    return [orjson.loads(o.value or b"") for o in pipe.outputs
            if o.topic == SETTINGS.topics.notifications]


@pytest.mark.parametrize("hostile", catalogue("u-1"), ids=lambda h: h.kind)
def test_each_kind_is_refused_at_the_edge_naming_the_field(hostile: Any) -> None:
    with pytest.raises(InvalidEvent) as caught:
        codec.decode_task_event(hostile.value)
    assert hostile.word in caught.value.reason
    assert "Secret" not in caught.value.reason


def test_hostile_records_among_valid_ones_of_the_same_users() -> None:
    pipe = MemoryPipeline(SETTINGS, partitions=4)
    users = [f"user-{i}" for i in range(6)]
    stream: list[tuple[bytes | None, bytes]] = []
    bad: list[bytes] = []
    for i, user in enumerate(users):
        stream.append((user.encode(), orjson.dumps(settings_event(user))))
        for n, hostile in enumerate(catalogue(user)):
            if n % len(users) != i:
                continue
            stream.append((user.encode(), orjson.dumps(upsert(user, f"ok-{n}"))))
            stream.append((user.encode(), hostile.value))
            bad.append(hostile.value)
    valid = [v for _, v in stream if v not in bad]
    pipe.publish(stream)
    pipe.tick(FIRE)
    reminders = [n for n in _notes(pipe) if n["type"] == "reminder.due"]
    assert Counter(n["notification_id"] for n in reminders).most_common(1)[0][1] == 1
    assert len(reminders) == sum(1 for v in valid if b"task.upserted" in v)
    letters = _letters(pipe)
    assert len(letters) == len(bad)
    for letter in letters:
        assert letter.reason and "Secret" not in letter.reason
        assert len(codec.dumps(letter)) < MAX_OUTPUT_BYTES


def test_a_hostile_key_cannot_make_its_dead_letter_too_large() -> None:
    pipe = MemoryPipeline(SETTINGS, partitions=1)
    pipe.publish([(b"k" * 2_000_000, b"not json")])
    (out,) = [o for o in pipe.outputs if o.topic == SETTINGS.topics.dead_letters]
    assert out.key == b"k" * 1_024
    assert len(out.value or b"") < 64 * 1024


def test_a_dead_letter_keeps_a_bounded_prefix_with_size_and_hash() -> None:
    value = b"x" * 800_000
    letter = codec.dead_letter("record too large", topic="t", partition=1, offset=7,
                               key=b"k" * 5_000, value=value, failed_at=FIRE)
    assert letter.original_truncated
    assert letter.original_size_bytes == len(value)
    assert letter.original_sha256 == hashlib.sha256(value).hexdigest()
    assert base64.b64decode(letter.original_value_b64) == value[:DEAD_LETTER_VALUE_BYTES]
    assert len(codec.dumps(letter)) < 64 * 1024
    small = codec.dead_letter("r", topic="t", partition=0, offset=0, key=None, value=b"ab",
                              failed_at=FIRE)
    assert not small.original_truncated and small.original_value == b"ab"


def test_fit_replaces_an_oversized_output_with_its_dead_letter() -> None:
    last = Record("scheduler.timeline", 3, 41, b"u", b"{}", 0)
    outputs = [Output("todo.notifications", b"u", b"{}"),
               Output("todo.notifications", b"u", b"y" * (SETTINGS.max_message_bytes + 1))]
    fitted = fit(SETTINGS, "timeline", 3, last, outputs)
    assert fitted[0] == outputs[0]
    assert fitted[1].topic == SETTINGS.topics.dead_letters
    letter = DeadLetter.model_validate_json(fitted[1].value or b"")
    assert "max.message.bytes" in letter.reason and letter.source_offset == 41
    assert letter.original_size_bytes == SETTINGS.max_message_bytes + 1


def test_a_record_that_fails_to_apply_is_dead_lettered_and_its_state_put_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = MemoryPipeline(SETTINGS, partitions=1)
    pipe.publish([(b"u", orjson.dumps(upsert("u", "a")))])
    original = PartitionState.apply

    def apply(self: PartitionState, event: Any) -> Any:
        effects = original(self, event)
        if isinstance(event, TaskUpserted) and event.task.task_id == "a" \
                and event.task.version == 2:
            raise ValueError("planning blew up")  # after the state was changed
        return effects

    monkeypatch.setattr(PartitionState, "apply", apply)
    moved = upsert("u", "a", version=2, reminders=[{"at": "2026-01-02T12:30:00Z"}])
    pipe.publish([(b"u", orjson.dumps(moved)), (b"u", orjson.dumps(upsert("u", "b")))])
    (letter,) = _letters(pipe)
    assert letter.reason == "applying failed: ValueError"
    state = pipe.agent.states[0]
    kept = state.tasks["t|u|a"]
    assert kept.version == 1
    pipe.tick(FIRE)
    pipe.tick(FIRE + timedelta(minutes=35))  # the refused version's 12:30 never fires
    assert sorted((n["task_id"], n["fire_at"]) for n in _notes(pipe)) == [
        ("a", "2026-01-02T12:00:00Z"), ("b", "2026-01-02T12:00:00Z")]


def test_state_stored_before_the_limits_still_restores() -> None:
    """The limits hold at the edge (the decoding adapters), not in the models: a changelog
    written before them (a long title; a completed series with a rule now refused) loads."""
    pipe = MemoryPipeline(SETTINGS, partitions=1)
    pipe.publish([(b"u", orjson.dumps(upsert("u", "a"))), (b"u", orjson.dumps(upsert("u", "b")))])
    entries = {r.key: r for r in pipe.changelogs[0] if r.key in (b"t|u|a", b"t|u|b")}
    long_title = orjson.loads(entries[b"t|u|a"].value or b"")
    long_title["task"]["title"] = "z" * 5_000
    old_series = orjson.loads(entries[b"t|u|b"].value or b"")
    old_series["task"]["recurrence"] = {"rrule": "FREQ=DAILY;BYHOUR=3", "anchor": "due",
                                        "skip": "omit"}
    old_series["task"]["status"] = "completed"
    for key, doc in ((b"t|u|a", long_title), (b"t|u|b", old_series)):
        entry = entries[key]
        pipe.changelogs[0].append(Record(entry.topic, 0, entry.offset + 100, key,
                                         orjson.dumps(doc), entry.timestamp_ms))
    pipe.crash(0)
    tasks = pipe.agent.states[0].tasks
    restored = tasks["t|u|a"].task
    assert restored is not None and restored.title == "z" * 5_000
    # A completed task restores as its version marker (contract v1.1 state retention).
    assert tasks["t|u|b"].task is None and tasks["t|u|b"].version == 1


def test_an_infrastructure_error_still_reaches_the_engine(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = MemoryPipeline(SETTINGS, partitions=1)

    def apply(self: PartitionState, event: Any) -> Any:
        raise BrokerUnavailable("away")

    monkeypatch.setattr(PartitionState, "apply", apply)
    with pytest.raises(BrokerUnavailable):
        pipe.publish([(b"u", orjson.dumps(upsert("u", "a")))])


def test_a_live_tick_far_ahead_of_its_broker_time_is_refused() -> None:
    pipe = MemoryPipeline(SETTINGS, partitions=2)
    pipe.publish([(b"u", orjson.dumps(upsert("u", "a")))])
    wrong = FIRE + timedelta(days=3650)
    pipe.tick(wrong, broker_at=FIRE - timedelta(hours=1))
    letters = _letters(pipe)
    assert len(letters) == 2 and all(d.reason.startswith("tick_at: live tick") for d in letters)
    assert all(s.watermark is None for s in pipe.agent.states.values())
    assert pipe.agent.counts["ticks_refused"] == 2
    pipe.tick(FIRE)  # the real time goes on and the reminder fires on time
    (note,) = _notes(pipe)
    assert note["late"] is False
    # Within the tolerance a live tick is taken; a range tick is taken however far it is.
    pipe.tick(FIRE + timedelta(seconds=SETTINGS.tick_max_ahead_s),
              broker_at=FIRE)
    pipe.tick(wrong, broker_at=FIRE, source="range")
    assert {s.watermark for s in pipe.agent.states.values()} == {wrong}
    assert len(_letters(pipe)) == 2


# --- the property -------------------------------------------------------------------------

_instants = st.one_of(
    st.datetimes(min_value=datetime(2025, 12, 1), max_value=datetime(2026, 3, 1),
                 timezones=st.just(UTC)).map(lambda d: d.isoformat().replace("+00:00", "Z")),
    st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                     "3000-01-01T00:00:00Z", "1900-01-01T00:00:00Z", "2026-01-01T00:00:00",
                     "2026-01-01T00:00:00+23:59", "not a time", "2026-02-30T00:00:00Z"]),
    st.integers(-(2**63), 2**64 - 1), st.none())
_rules = st.one_of(
    st.sampled_from(["FREQ=DAILY", "FREQ=WEEKLY;BYDAY=MO,FR", "FREQ=MONTHLY;BYMONTHDAY=31",
                     "FREQ=MONTHLY;BYDAY=-1FR", "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29",
                     "FREQ=DAILY;COUNT=3", "FREQ=DAILY;UNTIL=20260201",
                     "FREQ=DAILY;BYHOUR=3", "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30",
                     "FREQ=MONTHLY;BYSETPOS=-1;BYDAY=MO,TU,WE,TH,FR", "FREQ=DAILY;INTERVAL=0"]),
    st.text(max_size=40))
_reminders = st.lists(st.one_of(
    st.fixed_dictionaries({"before_minutes": st.one_of(st.integers(-10, 600_000),
                                                       st.integers(-(2**63), 2**63))}),
    st.fixed_dictionaries({"at": _instants}),
    st.just({"at": "2026-01-01T00:00:00Z", "before_minutes": 1}), st.just("soon")),
    max_size=60)
_titles = st.one_of(st.text(max_size=20), st.just("t" * 1_500), st.just("Ω" * 1_000))
_users = st.sampled_from(["u-1", "u-2", "u-3"])


@st.composite
def _task_event(draw: st.DrawFn) -> bytes:
    user = draw(_users)
    kind = draw(st.sampled_from(["upsert", "upsert", "upsert", "delete", "settings", "raw"]))
    if kind == "raw":
        return draw(st.one_of(st.binary(max_size=80), st.just(b"[" * 3_000)))
    if kind == "settings":
        doc = settings_event(user, version=draw(st.integers(1, 4)), timezone=draw(
            st.sampled_from(["Europe/Berlin", "America/New_York", "UTC", "America",
                             "Mars/Olympus", "Pacific/Kiritimati"])),
            digest_time=draw(st.sampled_from(["09:00", "02:30", None, "24:00"])))
        return orjson.dumps(doc)
    task = draw(st.sampled_from(["a", "b", "c"]))
    if kind == "delete":
        return orjson.dumps({"type": "task.deleted", "event_id": "d", "occurred_at":
                             draw(_instants), "task_id": task, "user_id": user,
                             "version": draw(st.integers(1, 5))})
    doc = upsert(user, task, due_at=draw(_instants), reminders=draw(_reminders),
                 version=draw(st.integers(1, 5)))
    doc["occurred_at"] = draw(_instants)
    doc["task"]["title"] = draw(_titles)
    doc["task"]["status"] = draw(st.sampled_from(["open", "open", "completed", "done"]))
    if draw(st.booleans()):
        doc["task"]["recurrence"] = {"rrule": draw(_rules), "anchor": draw(
            st.sampled_from(["due", "completion"])), "skip": "omit"}
        doc["task"]["series_id"] = None
    elif draw(st.booleans()):
        doc["task"]["series_id"] = "a"
        doc["task"]["completed_at"] = draw(_instants)
    if draw(st.booleans()):
        doc["task"]["due_at"] = None
        doc["task"]["due_date"] = draw(st.sampled_from(
            ["2026-01-15", "0001-01-01", "9999-12-31", "2026-13-01"]))
    return orjson.dumps(doc)


_steps = st.lists(st.one_of(
    st.lists(_task_event(), min_size=1, max_size=6).map(lambda v: ("events", v)),
    st.tuples(st.just("tick"), st.integers(0, 90 * 24), st.sampled_from([0, 0, 24 * 3650]))),
    min_size=1, max_size=12)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_steps)
def test_generated_events_never_raise_and_outputs_stay_under_the_limit(
        steps: list[Any]) -> None:
    pipe = MemoryPipeline(SETTINGS, partitions=2)
    start = datetime(2025, 12, 31, tzinfo=UTC)
    for step in steps:
        if step[0] == "events":
            pipe.publish([(b"k", value) for value in step[1]])
        else:
            _, hours, ahead_h = step
            at = start + timedelta(hours=hours)
            pipe.tick(at + timedelta(hours=ahead_h), broker_at=at)
            if hours % 2 == 0:  # restores from the changelog see the hostile history too
                for p in range(2):
                    pipe.crash(p)
    for out in pipe.outputs:
        assert len(out.value or b"") + len(out.key or b"") <= SETTINGS.max_message_bytes
    for changelog in pipe.changelogs.values():
        assert all(len(r.value or b"") <= SETTINGS.max_message_bytes for r in changelog)

