"""A fired reminder's bytes, written without pydantic, are the wire model's, byte for byte:
``ReminderFired.wire()`` against ``codec.dumps`` of the validated ``ReminderDue`` (the
encoding every consumer was written against), on random fires."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from schemas import AtReminder, BeforeReminder, ReminderDue
from streams import codec
from streams.timecore.instants import format_instant
from streams.timeline.outputs import ReminderFired

instants = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2199, 12, 31),
                        timezones=st.just(UTC))
reminders = st.one_of(st.builds(BeforeReminder, before_minutes=st.integers(0, 527_040)),
                      st.builds(AtReminder, at=instants))
ids = st.text(min_size=1, max_size=40)


@given(ids, ids, ids, st.integers(1, 2**63 - 1), st.text(max_size=200), instants, reminders,
       instants, instants, st.booleans())
def test_wire_bytes_are_the_models(notification_id: str, user_id: str, task_id: str,
                                   version: int, title: str, due_at: datetime,
                                   reminder: BeforeReminder | AtReminder, fire_at: datetime,
                                   tick_at: datetime, late: bool) -> None:
    fired = ReminderFired(
        notification_id=notification_id, user_id=user_id, task_id=task_id,
        task_version=version, title=title, due_at=due_at, reminder=reminder, fire_at=fire_at,
        tick_at=tick_at, late=late, fire_text=format_instant(fire_at),
        tick_text=format_instant(tick_at), due_text=format_instant(due_at),
        at_text=format_instant(reminder.at) if isinstance(reminder, AtReminder) else None)
    validated = ReminderDue(
        notification_id=notification_id, user_id=user_id, task_id=task_id,
        task_version=version, title=title, due_at=due_at, reminder=reminder, fire_at=fire_at,
        tick_at=tick_at, late=late)
    assert fired.wire() == codec.dumps(validated) == codec.dumps(fired.model())
