"""The tests' own model of DESIGN.md section 4 (reminders), written from the spec alone.

Contract v1.1: a task with ``recurrence`` is a series template and fires no reminders of
its own (its spawned instances carry them).

It shares no code with ``streams``: given the phases of a run (events applied, then ticks
run), it computes the exact set of ``reminder.due`` notifications a correct worker emits,
with their ids from the documented formula (docs/contracts.md):
``uuid5(NAMESPACE, "reminder.due|<user_id>|<task_id>|<fire_at as YYYY-MM-DDTHH:MM:SSZ>")``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

NAMESPACE = uuid.UUID("6f1c1b8e-3d0a-5c55-9a8e-6d1f4c1e2a77")
REMINDER_WINDOW = timedelta(minutes=15)


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def z(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ModelTask:
    version: int
    occurred_at: datetime
    doc: dict[str, Any] | None  # None when deleted


@dataclass
class ReminderModel:
    tasks: dict[tuple[str, str], ModelTask] = field(default_factory=dict)
    fired: set[tuple[str, str, datetime]] = field(default_factory=set)
    watermark: datetime | None = None
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)
    missed: int = 0

    def event(self, ev: dict[str, Any]) -> None:
        if ev["type"] == "task.upserted":
            doc = ev["task"]
            key, version = (doc["user_id"], doc["task_id"]), doc["version"]
        elif ev["type"] == "task.deleted":
            doc, key, version = None, (ev["user_id"], ev["task_id"]), ev["version"]
        else:
            return
        current = self.tasks.get(key)
        if current is not None and version <= current.version:
            return
        self.tasks[key] = ModelTask(version, ts(ev["occurred_at"]), doc)

    def _planned(self, t: ModelTask) -> list[tuple[datetime, dict[str, Any]]]:
        doc = t.doc
        if doc is None or doc["status"] != "open" or not doc.get("due_at") \
                or doc.get("recurrence"):
            return []
        due = ts(doc["due_at"])
        out: list[tuple[datetime, dict[str, Any]]] = []
        for r in doc.get("reminders", []):
            at = due - timedelta(minutes=r["before_minutes"]) if "before_minutes" in r \
                else ts(r["at"])
            if at > t.occurred_at and all(at != a for a, _ in out):
                out.append((at, r))
        return out

    def tick(self, tick_at: datetime) -> None:
        if self.watermark is not None and tick_at <= self.watermark:
            return
        for (user, task_id), t in self.tasks.items():
            for at, reminder in self._planned(t):
                if at > tick_at or (user, task_id, at) in self.fired:
                    continue
                self.fired.add((user, task_id, at))
                if tick_at - at > REMINDER_WINDOW:
                    self.missed += 1
                    continue
                doc = t.doc
                assert doc is not None
                nid = str(uuid.uuid5(NAMESPACE, f"reminder.due|{user}|{task_id}|{z(at)}"))
                self.expected[nid] = {
                    "type": "reminder.due", "notification_id": nid, "user_id": user,
                    "task_id": task_id, "task_version": doc["version"], "title": doc["title"],
                    "due_at": z(ts(doc["due_at"])), "reminder": reminder, "fire_at": z(at),
                    "tick_at": z(tick_at), "late": tick_at > at,
                }
        self.watermark = tick_at
