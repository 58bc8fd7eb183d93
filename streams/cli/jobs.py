"""Entry points of the maintenance side: ``cronorch migrate``, ``cronorch jobs …`` and
``cronorch job-runner``. Thin: parse arguments, load the registry, call down, print JSON.

The registry file comes from ``--registry`` (default ``$CRONORCH_JOBS_REGISTRY`` or
``deploy/jobs.yaml``). This is the edge: the wall clock is read here (manual runs, previews),
nowhere below.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import UTC, datetime
from typing import Any

from streams.cli import console
from streams.jobs import decisions as jobs
from streams.jobs import registry
from streams.settings import Settings

JOB_COMMANDS = ("migrate", "jobs", "job-runner")


def _default_registry() -> str:
    return os.environ.get("CRONORCH_JOBS_REGISTRY", "deploy/jobs.yaml")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``migrate``, ``jobs`` and ``job-runner`` to the ``cronorch`` parser."""
    sub.add_parser("migrate", help="apply PostgreSQL migrations (safe to re-run)")

    jobs_parser = sub.add_parser("jobs", help="maintenance jobs: validate, list, run, pause")
    jobs_sub = jobs_parser.add_subparsers(dest="action", required=True)

    def with_registry(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--registry", default=None,
                       help="registry file (default $CRONORCH_JOBS_REGISTRY or deploy/jobs.yaml)")
        return p

    validate = jobs_sub.add_parser("validate", help="check a registry file; exit 1 if invalid")
    validate.add_argument("file")
    with_registry(jobs_sub.add_parser("list", help="jobs with their pause state and last run"))
    preview = with_registry(jobs_sub.add_parser("preview", help="the next slots of a job"))
    preview.add_argument("name")
    preview.add_argument("--count", type=int, default=10)
    preview.add_argument("--from", dest="start", type=console.instant, default=None,
                         help="list slots after this instant (default: now)")
    preview.add_argument("--windows", type=int, default=5,
                         help="how many run windows to list (jobs with a run_window)")
    run = with_registry(jobs_sub.add_parser("run", help="run a job now (trigger 'manual')"))
    run.add_argument("name")
    run.add_argument("--dry-run", action="store_true",
                     help="print what a run would touch (rows, oldest, newest); touch nothing")
    undo = with_registry(jobs_sub.add_parser(
        "undo", help="move the rows an archive run archived back into tasks"))
    undo.add_argument("run_id", metavar="RUN_ID", help="job@scheduled_for (#attempt optional)")
    undo.add_argument("--dry-run", action="store_true",
                      help="print what the undo would move; move nothing")
    pause = with_registry(jobs_sub.add_parser("pause", help="defer a job's slots until resumed"))
    pause.add_argument("name")
    pause.add_argument("--reason", required=True)
    resume = with_registry(jobs_sub.add_parser("resume", help="resume a paused job"))
    resume.add_argument("name")
    resume.add_argument("--from-now", action="store_true",
                        help="drop the slots deferred while paused instead of catching up")

    runner = sub.add_parser("job-runner", help="run the job trigger agent and runner")
    runner.add_argument("--registry", default=None,
                        help="registry file (default $CRONORCH_JOBS_REGISTRY or deploy/jobs.yaml)")


def dispatch(args: argparse.Namespace, settings: Settings) -> int | None:
    """Run a jobs command; None if ``args`` is not one of ours."""
    if args.command not in JOB_COMMANDS:
        return None
    if args.command == "migrate":
        return asyncio.run(_migrate(settings))
    if args.command == "job-runner":
        from streams.processes import jobrunner

        reg = registry.load(args.registry or _default_registry())  # refuses an invalid file
        asyncio.run(jobrunner.run(settings, reg))
        return 0
    if args.action == "validate":
        reg = registry.load(args.file)
        console.print_json({"file": args.file, "valid": True, "jobs": reg.names()})
        return 0
    reg = registry.load(args.registry or _default_registry())
    if args.action == "preview":
        job = reg.get(args.name)
        start = args.start or datetime.now(UTC)
        slots: list[dict[str, str]] = []
        for at in job.fires(start):
            if len(slots) == args.count:
                break
            slots.append({"scheduled_for": jobs.z(at),
                          "local": at.astimezone(job.tz).isoformat()})
        out: dict[str, Any] = {"job": job.name, "schedule": job.schedule.text,
                               "timezone": job.timezone, "slots": slots}
        if job.run_window is not None:
            windows: list[dict[str, str]] = []
            for opens, closes in job.windows(start):
                if len(windows) == args.windows:
                    break
                windows.append({"opens_at": jobs.z(opens), "closes_at": jobs.z(closes),
                                "opens_local": opens.astimezone(job.tz).isoformat(),
                                "closes_local": closes.astimezone(job.tz).isoformat()})
            out["run_window"] = {"window": job.run_window.text(), "windows": windows}
        console.print_json(out)
        return 0
    return asyncio.run(_database_command(args, settings, reg))


async def _migrate(settings: Settings) -> int:
    from streams.postgres.connector import Connector

    db = await Connector.open(settings)
    try:
        applied = await db.migrate()
    finally:
        await db.close()
    console.print_json({"applied": applied})
    return 0


async def _database_command(args: argparse.Namespace, settings: Settings,
                            reg: registry.Registry) -> int:
    from streams.postgres.connector import Connector
    from streams.postgres.runs import PgRunStore
    from streams.processes import jobrunner

    if args.action == "run" and args.dry_run:
        console.print_json(await jobrunner.dry_run(settings, reg, args.name))
        return 0
    if args.action == "undo":
        result = await jobrunner.undo(settings, reg, args.run_id, dry_run=args.dry_run)
        console.print_json(result)
        return 0 if result.get("status", "succeeded") == "succeeded" else 1
    if args.action == "run":
        reg.get(args.name)
        run = await jobrunner.run_manual(settings, reg, args.name)
        if run is None:
            console.print_json({"job": args.name, "started": False})
            return 1
        console.print_json(run.model_dump(mode="json"))
        return 0 if run.status in ("succeeded", "partial") else 1
    db = await Connector.open(settings)
    store = PgRunStore(db)
    try:
        if args.action == "list":
            states = await store.job_states()
            last = await store.last_runs()
            out: list[dict[str, Any]] = []
            for job in reg.jobs:
                state = states.get(job.name, {})
                previous = last.get(job.name)
                out.append({
                    **registry.as_document(job),
                    "paused": bool(state.get("paused")) or job.paused,
                    "pause_reason": state.get("reason"),
                    "last_run": None if previous is None else {
                        "scheduled_for": jobs.z(previous["scheduled_for"]),
                        "trigger": previous["trigger"], "status": previous["status"],
                        "attempt": previous["attempt"]},
                })
            console.print_json({"jobs": out})
        elif args.action == "pause":
            reg.get(args.name)
            await store.pause(args.name, args.reason)
            console.print_json({"job": args.name, "paused": True, "reason": args.reason})
        elif args.action == "resume":
            job = reg.get(args.name)
            resume_from = await store.resume(args.name, from_now=args.from_now)
            console.print_json({"job": args.name, "paused": job.paused,
                    "catch_up_from": None if resume_from is None else jobs.z(resume_from),
                    "note": "still paused by the registry (paused: true)" if job.paused
                    else None})
        else:
            raise AssertionError(args.action)
    finally:
        await db.close()
    return 0
