"""The in-memory twin of ``streams.jobs.decisions.DataStore``: the tables the built-in kinds
read and write (tasks, the archive, the purge targets), as dicts.

It archives, purges, undoes and previews as the queries of ``streams.postgres.runs`` do
(oldest first, batch by batch, rows tagged with the archive run that moved them);
tests/integration/test_datastore_contract.py runs one suite against both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from streams.jobs.decisions import Touch


@dataclass
class MemoryDataStore:
    """The in-memory twin of ``DataStore``: tasks as dicts keyed by ``task_id``.

    ``tasks`` rows hold ``status`` and ``completed_at``; ``archive`` rows add
    ``archived_at``; ``job_runs``, ``dead_letters`` and ``outbox`` (published rows) hold the
    instant purge compares.
    """

    tasks: dict[str, dict[str, object]] = field(default_factory=dict)
    archive: dict[str, dict[str, object]] = field(default_factory=dict)
    job_runs: dict[str, datetime] = field(default_factory=dict)
    dead_letters: dict[str, datetime] = field(default_factory=dict)
    outbox: dict[str, datetime] = field(default_factory=dict)

    def _touch(self, instants: list[datetime], blocked: int = 0) -> Touch:
        return Touch(len(instants), min(instants, default=None), max(instants, default=None),
                     blocked)

    def _eligible(self, cutoff: datetime) -> list[str]:
        rows = [(t["completed_at"], k) for k, t in self.tasks.items()
                if t["status"] == "completed" and isinstance(t["completed_at"], datetime)
                and t["completed_at"] < cutoff]
        return [k for _, k in sorted(rows)]

    async def archive_counts(self, cutoff: datetime) -> dict[str, int]:
        return {"tasks": len(self.tasks), "eligible": len(self._eligible(cutoff)),
                "tasks_archive": len(self.archive)}

    async def archive_batch(self, cutoff: datetime, batch_size: int,
                            archived_at: datetime, tag: str | None = None) -> int:
        keys = self._eligible(cutoff)[:batch_size]
        for key in keys:
            self.archive[key] = {**self.tasks.pop(key), "archived_at": archived_at,
                                 "archive_run_id": tag}
        return len(keys)

    async def archive_preview(self, cutoff: datetime) -> Touch:
        return self._touch([_instant(self.tasks[k]["completed_at"])
                            for k in self._eligible(cutoff)])

    def _tagged(self, tag: str) -> tuple[list[str], list[str]]:
        """(movable, blocked) keys of rows archived by ``tag``, in task id order."""
        movable: list[str] = []
        blocked: list[str] = []
        for key in sorted(k for k, row in self.archive.items()
                          if row.get("archive_run_id") == tag):
            (blocked if key in self.tasks else movable).append(key)
        return movable, blocked

    async def undo_batch(self, tag: str, batch_size: int, after: str) -> tuple[int, str | None]:
        page = sorted(k for k, row in self.archive.items()
                      if row.get("archive_run_id") == tag and k > after)[:batch_size]
        moved = 0
        for key in page:
            if key in self.tasks:
                continue  # blocked: stays archived
            row = dict(self.archive.pop(key))
            row.pop("archived_at", None)
            row.pop("archive_run_id", None)
            self.tasks[key] = row
            moved += 1
        return moved, page[-1] if len(page) == batch_size else None

    async def undo_preview(self, tag: str) -> Touch:
        movable, blocked = self._tagged(tag)
        return self._touch([_instant(self.archive[k]["completed_at"])
                            for k in movable + blocked], len(blocked))

    async def purge_preview(self, cutoffs: Mapping[str, datetime]) -> dict[str, Touch]:
        out: dict[str, Touch] = {}
        for target, cutoff in cutoffs.items():
            table = self._table(target)
            instants = [_instant(self.archive[k]["archived_at"]) if target == "tasks_archive"
                        else _instant(table[k]) for k in self._expired(target, cutoff)]
            out[target] = self._touch(instants)
        return out

    def _expired(self, target: str, cutoff: datetime) -> list[str]:
        if target == "tasks_archive":
            return [k for k, row in self.archive.items()
                    if isinstance(row["archived_at"], datetime) and row["archived_at"] < cutoff]
        return [k for k, at in self._table(target).items()
                if isinstance(at, datetime) and at < cutoff]

    async def purge_counts(self, cutoffs: Mapping[str, datetime]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for target, cutoff in cutoffs.items():
            counts[target] = len(self._table(target))
            counts[f"{target}_expired"] = len(self._expired(target, cutoff))
        return counts

    async def purge_batch(self, target: str, cutoff: datetime, batch_size: int) -> int:
        keys = self._expired(target, cutoff)[:batch_size]
        table = self._table(target)
        for key in keys:
            del table[key]
        return len(keys)

    def _table(self, target: str) -> dict[str, object] | dict[str, datetime] | dict[
            str, dict[str, object]]:
        if target == "tasks_archive":
            return self.archive
        return {"job_runs": self.job_runs, "dead_letters": self.dead_letters,
                "outbox": self.outbox}[target]


def _instant(value: object) -> datetime:
    assert isinstance(value, datetime)
    return value
