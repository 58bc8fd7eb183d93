"""The state's compact task record against the wire model it replaces in memory: the same
changelog document (``Task.model_dump(mode="json")``), read back into an equal record, for
every task of the acceptance scenario and a few shapes it lacks (series, all-day, fractions,
instances, the fields an older document may omit)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from schemas import Task
from streams.timeline.record import TaskRecord
from tests.scenario import build


def _tasks() -> list[dict[str, Any]]:
    sc = build(seed=11, tasks=60)
    docs = [e["task"] for e in (*sc.phase_a, *sc.phase_b)
            if isinstance(e, dict) and e["type"] == "task.upserted"]
    base = {"task_id": "t", "user_id": "u", "version": 3, "title": "ü 😀 \"x\"\n",
            "status": "open"}
    return [*docs,
            {**base, "due_at": "2026-03-09T08:00:00.250Z",
             "reminders": [{"at": "2026-03-09T07:59:59.5Z"}, {"before_minutes": 527_040}]},
            {**base, "due_date": "2026-03-10", "series_id": "s"},
            {**base, "status": "completed", "completed_at": "2026-03-09T08:00:00+01:00"},
            {**base, "due_at": "2026-03-09T08:00:00Z",
             "recurrence": {"rrule": "FREQ=WEEKLY;BYDAY=MO", "anchor": "completion",
                            "skip": "backward"}}]


@pytest.mark.parametrize("doc", _tasks())
def test_the_record_writes_the_models_document_and_reads_it_back(doc: dict[str, Any]) -> None:
    task = Task.model_validate(doc)
    record = TaskRecord.of(task)
    written = task.model_dump(mode="json")
    assert record.doc() == written
    assert orjson.dumps(record.doc()) == orjson.dumps(written)
    assert TaskRecord.from_doc(orjson.loads(orjson.dumps(written))) == record
    assert TaskRecord.from_doc(doc) == record  # a document missing optional keys
