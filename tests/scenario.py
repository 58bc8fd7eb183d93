"""A seeded reminder scenario: ≥1,000 tasks of users in several zones, in two phases.

Phase A creates users and tasks (a few of them series, whose reminders never fire: contract
v1.1); ticks run for two hours; phase B (dated one hour before the watermark, so some of its
fires are late or missed) re-plans, completes and deletes tasks, sends stale versions and a
few poison records; ticks run six more hours.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tests.model import ReminderModel, ts, z

ZONES = ["America/New_York", "Europe/Berlin", "Asia/Kathmandu", "Australia/Lord_Howe"]
W0 = ts("2026-03-07T00:00:00Z")
STEP = timedelta(seconds=60)
POISON: list[bytes] = [
    b"\x00\xff not json",
    b"[1, 2, 3]",
    b'{"type": "task.exploded", "event_id": "x"}',
    b'{"type": "task.upserted", "event_id": "x", "occurred_at": "2026-03-07T01:00:00Z"}',
    b'{"type": "task.deleted", "event_id": "x", "occurred_at": "soon", "task_id": "t",'
    b' "user_id": "u", "version": 1}',
    b'{"type": "user.settings", "event_id": "x", "occurred_at": "2026-03-07T01:00:00Z",'
    b' "user_id": "u", "version": "two", "timezone": "Mars/Olympus"}',
]


@dataclass
class Scenario:
    phase_a: list[dict[str, Any] | bytes] = field(default_factory=list)
    phase_b: list[dict[str, Any] | bytes] = field(default_factory=list)
    ticks_a: tuple[datetime, datetime] = (W0 + STEP, W0 + timedelta(hours=2))
    ticks_b: tuple[datetime, datetime] = (W0 + timedelta(hours=2) + STEP,
                                          W0 + timedelta(hours=8))

    def expected(self) -> ReminderModel:
        model = ReminderModel()
        for phase, (start, end) in ((self.phase_a, self.ticks_a), (self.phase_b, self.ticks_b)):
            for ev in phase:
                if isinstance(ev, dict):
                    model.event(ev)
            at = start
            while at <= end:
                model.tick(at)
                at += STEP
        return model

    @property
    def poison_count(self) -> int:
        return sum(isinstance(e, bytes) for e in self.phase_a + self.phase_b)


def _event(kind: str, occurred_at: datetime, **body: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": str(uuid.uuid4()), "occurred_at": z(occurred_at), **body}


def build(seed: int = 7, tasks: int = 1000, users: int = 40) -> Scenario:
    rng = random.Random(seed)
    sc = Scenario()
    user_ids = [f"user-{i:03d}" for i in range(users)]
    for i, user in enumerate(user_ids):
        sc.phase_a.append(_event("user.settings", W0, user_id=user, version=1,
                                 timezone=ZONES[i % len(ZONES)], digest_time="09:00"))
    docs: dict[str, dict[str, Any]] = {}
    for n in range(tasks):
        doc = _task(rng, f"task-{n:05d}", rng.choice(user_ids), 1,
                    W0 + timedelta(seconds=rng.randint(20 * 60, 7 * 3600)))
        if n % 50 == 0:  # all-day tasks plan no reminders
            doc["due_at"], doc["due_date"] = None, "2026-03-07"
        if n % 50 == 25:  # series are templates (v1.1): their reminders are their instances'
            doc["recurrence"] = {"rrule": "FREQ=DAILY;COUNT=3", "anchor": "due", "skip": "omit"}
        docs[doc["task_id"]] = doc
        sc.phase_a.append(_event("task.upserted", W0, task=doc))
    ids = sorted(docs)
    rng.shuffle(ids)
    replan, complete, delete, stale = ids[:150], ids[150:250], ids[250:350], ids[350:450]
    at_b = W0 + timedelta(hours=1)
    for task_id in replan:
        old = docs[task_id]
        new = _task(rng, task_id, old["user_id"], old["version"] + 1,
                    W0 + timedelta(seconds=rng.randint(90 * 60, 7 * 3600)))
        sc.phase_b.append(_event("task.upserted", at_b, task=new))
    for task_id in complete:
        done = {**docs[task_id], "version": docs[task_id]["version"] + 1,
                "status": "completed", "completed_at": z(at_b)}
        sc.phase_b.append(_event("task.upserted", at_b, task=done))
    for task_id in delete:
        sc.phase_b.append(_event("task.deleted", at_b, task_id=task_id,
                                 user_id=docs[task_id]["user_id"],
                                 version=docs[task_id]["version"] + 1))
    for task_id in stale:
        old = _task(rng, task_id, docs[task_id]["user_id"], docs[task_id]["version"],
                    W0 + timedelta(hours=5))
        sc.phase_b.append(_event("task.upserted", at_b, task=old))
    for n in range(60):  # fire between occurred_at and the watermark: late or missed
        due = W0 + timedelta(hours=3)
        fire = at_b + timedelta(seconds=rng.randint(60, 3600))
        doc = {**_task(rng, f"late-{n:03d}", rng.choice(user_ids), 1, due),
               "reminders": [{"at": z(fire)}]}
        sc.phase_b.append(_event("task.upserted", at_b, task=doc))
    for i, poison in enumerate(POISON):
        sc.phase_b.insert(10 + 40 * i, poison)
    return sc


def _task(rng: random.Random, task_id: str, user: str, version: int,
          due: datetime) -> dict[str, Any]:
    offsets = rng.sample([0, 5, 10, 15, 30, 60, 120, 240], rng.randint(1, 3))
    reminders: list[dict[str, Any]] = [{"before_minutes": m} for m in offsets]
    if rng.random() < 0.3:  # off the tick grid: fires at the next tick, late
        reminders.append({"at": z(due - timedelta(seconds=rng.randint(1, 5400)))})
    return {"task_id": task_id, "user_id": user, "version": version,
            "title": f"{rng.choice(['Call', 'Buy', 'Fix', 'Plan'])} #{rng.randint(1, 999)}",
            "status": "open", "completed_at": None, "due_at": z(due), "due_date": None,
            "reminders": reminders, "recurrence": None, "series_id": None}
