"""JSON Schema export of every topic's wire format, for the teams that build against them.

Owns the mapping of file names to schemas and the files in ``schemas/json/``:
``python -m schemas.export`` rewrites them, ``--check`` exits 1 naming the stale ones.
Records this service reads are described as accepted (validation mode), records it only
writes as written (serialization mode: every key present). Nothing happens at import.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter

from schemas.deadletters import DeadLetter
from schemas.edge import TASK_EVENT_ADAPTER, TIMELINE_ADAPTER
from schemas.jobs import JobRun, JobTrigger
from schemas.notifications import NOTIFICATION_ADAPTER, TaskSpawn

JSON_DIR = Path(__file__).parent / "json"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

Mode = Literal["validation", "serialization"]
_TOPICS: dict[str, tuple[str, type[BaseModel] | TypeAdapter[Any], Mode]] = {
    "task-events.json": ("todo.task-events", TASK_EVENT_ADAPTER, "validation"),
    "timeline.json": ("scheduler.timeline", TIMELINE_ADAPTER, "validation"),
    "notifications.json": ("todo.notifications", NOTIFICATION_ADAPTER, "serialization"),
    "task-commands.json": ("todo.task-commands", TaskSpawn, "serialization"),
    "dead-letters.json": ("scheduler.dead-letters", DeadLetter, "serialization"),
    "job-runs.json": ("scheduler.job-runs", JobRun, "serialization"),
    "job-triggers.json": ("scheduler.job-triggers", JobTrigger, "validation"),
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema (draft 2020-12) of the records on that topic."""
    schemas: dict[str, dict[str, Any]] = {}
    for name, (topic, target, mode) in _TOPICS.items():
        if isinstance(target, TypeAdapter):
            schema = target.json_schema(mode=mode)
        else:
            schema = target.model_json_schema(mode=mode)
        schemas[name] = {"$schema": DRAFT, **schema, "title": f"{topic} (v1)"}
    return schemas


def rendered() -> dict[str, str]:
    """File name → file text: sorted keys, 2-space indent, trailing newline."""
    return {
        name: json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for name, schema in json_schemas().items()
    }


def stale(directory: Path = JSON_DIR) -> list[str]:
    """Names of the files in ``directory`` that are missing or differ from ``rendered()``."""
    return [
        name
        for name, text in rendered().items()
        if not (directory / name).is_file() or (directory / name).read_text("utf-8") != text
    ]


def write(directory: Path = JSON_DIR) -> list[str]:
    """Write every schema file into ``directory``; return the names written."""
    directory.mkdir(parents=True, exist_ok=True)
    texts = rendered()
    for name, text in texts.items():
        (directory / name).write_text(text, "utf-8")
    return sorted(texts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.export", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if any file is stale")
    parser.add_argument("--dir", type=Path, default=JSON_DIR, help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.check:
        names = stale(args.dir)
        for name in names:
            print(f"stale: {args.dir / name} (run: python -m schemas.export)", file=sys.stderr)
        return 1 if names else 0
    for name in write(args.dir):
        print(args.dir / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
