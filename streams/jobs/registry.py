"""The job registry: a YAML file of maintenance jobs, parsed and validated into frozen values.

Owns the registry's shape (DESIGN.md section 5: the keys are the contract), the built-in
kinds' parameter specs and frequency limits, and every validation rule. A rejected registry
raises ``ConfigError(path, reason)`` whose path names the job and the key, for example
``jobs[1].schedule: minute: 61 is out of range 0-59``.

Rules beyond per-key checks:
- a heavy kind may not fire more often than its kind allows (``KindSpec.min_interval_s``);
- two heavy jobs may not have overlapping windows, a window being ``[fire, fire + timeout_s)``,
  checked over every fire of a sample year (``SAMPLE_START`` .. ``SAMPLE_END``) in each
  job's zone with its DST policy;
- a ``run_window`` must be at least one batch long (``batch_timeout_s``) and the schedule
  must fire inside it at least once in the sample year.

Must not read the clock or do IO beyond reading the file it is given (``load``); imports only
PyYAML, the standard library and the time core.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml

from streams.errors import ConfigError, InvalidSchedule
from streams.jobs.model import DEFAULT_BATCH_TIMEOUT_S as DEFAULT_BATCH_TIMEOUT_S
from streams.jobs.model import KINDS as KINDS
from streams.jobs.model import MAX_ATTEMPTS as MAX_ATTEMPTS
from streams.jobs.model import Coalesce as Coalesce
from streams.jobs.model import Job as Job
from streams.jobs.model import KindSpec as KindSpec
from streams.jobs.model import Overlap as Overlap
from streams.jobs.model import Param as Param
from streams.jobs.model import Registry as Registry
from streams.jobs.model import Retries as Retries
from streams.timecore.cron import CronExpression, parse_cron
from streams.timecore.instants import format_seconds
from streams.timecore.localtime import Ambiguous, DstPolicy, Nonexistent, zone
from streams.timecore.window import DailyWindow, parse_hhmm

E = TypeVar("E", bound=StrEnum)
NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
SAMPLE_START = datetime(2026, 1, 1, tzinfo=UTC)
SAMPLE_END = datetime(2027, 1, 1, tzinfo=UTC)
MAX_TIMEOUT_S = 24 * 3600
MAX_CATCHUP_WINDOW_S = 7 * 24 * 3600
MAX_DELAY_S = 3600.0
MAX_BATCH_PAUSE_S = 60.0


_JOB_KEYS = ("name", "kind", "schedule", "timezone", "dst_policy", "params", "timeout_s",
             "overlap", "catchup_window_s", "coalesce", "retries", "paused", "run_window",
             "batch_timeout_s", "batch_pause_s")
_REQUIRED = ("name", "kind", "schedule")


def load(path: str | Path) -> Registry:
    """Read and validate a registry file; a YAML syntax error is a ``ConfigError`` too."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(path), f"invalid YAML{where}") from None
    return parse(document)


def parse(document: object) -> Registry:
    """Validate an already-decoded registry document (a mapping with ``jobs``)."""
    if not isinstance(document, dict):
        raise ConfigError("", "a registry is a mapping with a 'jobs' list")
    unknown = sorted(str(k) for k in document if k != "jobs")
    if unknown:
        raise ConfigError(unknown[0], "unknown top-level key; the only one is 'jobs'")
    raw_jobs = document.get("jobs")
    if raw_jobs is None:
        raw_jobs = []
    if not isinstance(raw_jobs, list):
        raise ConfigError("jobs", "must be a list of jobs")
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_jobs):
        job = _job(f"jobs[{i}]", raw)
        if job.name in seen:
            raise ConfigError(f"jobs[{i}].name",
                              f"duplicate name {job.name!r} (also jobs[{seen[job.name]}])")
        seen[job.name] = i
        jobs.append(job)
    _check_heavy_windows(jobs)
    return Registry(tuple(jobs))


def _job(at: str, raw: object) -> Job:
    if not isinstance(raw, dict):
        raise ConfigError(at, "a job is a mapping")
    for key in raw:
        if key not in _JOB_KEYS:
            raise ConfigError(f"{at}.{key}", f"unknown key; known keys: {', '.join(_JOB_KEYS)}")
    for key in _REQUIRED:
        if key not in raw:
            raise ConfigError(f"{at}.{key}", "is required")
    name = raw["name"]
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"{at}.name", "must be 1-63 lowercase letters, digits or dashes, "
                          "starting and ending with a letter or digit")
    kind = raw["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise ConfigError(f"{at}.kind", f"unknown kind {kind!r}; built-in kinds: "
                          f"{', '.join(KINDS)}")
    spec = KINDS[kind]
    schedule_text = raw["schedule"]
    if not isinstance(schedule_text, str):
        raise ConfigError(f"{at}.schedule", "must be a string (5-field cron or @macro)")
    try:
        schedule = parse_cron(schedule_text)
    except InvalidSchedule as exc:
        raise ConfigError(f"{at}.schedule", str(exc)) from None
    timezone = raw.get("timezone", "UTC")
    if not isinstance(timezone, str):
        raise ConfigError(f"{at}.timezone", "must be an IANA zone name")
    try:
        zone(timezone)
    except InvalidSchedule as exc:
        raise ConfigError(f"{at}.timezone", exc.reason) from None
    interval_s = schedule.min_interval_s()
    if interval_s < spec.min_interval_s:
        raise ConfigError(
            f"{at}.schedule",
            f"{kind} may run at most once every {spec.min_interval_s} s; "
            f"{schedule.text!r} fires every {interval_s} s")
    retries = _retries(f"{at}.retries", raw.get("retries", {}))
    timeout_s = _int(f"{at}.timeout_s", raw.get("timeout_s", 600), 1, MAX_TIMEOUT_S)
    batch_timeout_s = _int(f"{at}.batch_timeout_s",
                           raw.get("batch_timeout_s", min(DEFAULT_BATCH_TIMEOUT_S, timeout_s)),
                           1, MAX_TIMEOUT_S)
    if batch_timeout_s > timeout_s:
        raise ConfigError(f"{at}.batch_timeout_s",
                          f"{batch_timeout_s} exceeds timeout_s {timeout_s}")
    dst_policy = _dst_policy(f"{at}.dst_policy", raw.get("dst_policy", {}))
    run_window = _run_window(f"{at}.run_window", raw.get("run_window"), batch_timeout_s)
    if run_window is not None:
        _check_fires_inside(f"{at}.run_window", schedule, timezone, dst_policy, run_window)
    return Job(
        name=name, kind=kind, schedule=schedule, timezone=timezone,
        dst_policy=dst_policy,
        params=_params(f"{at}.params", kind, spec, raw.get("params", {})),
        timeout_s=timeout_s,
        overlap=_choice(f"{at}.overlap", raw.get("overlap", "skip"), Overlap),
        catchup_window_s=_int(f"{at}.catchup_window_s", raw.get("catchup_window_s", 3600),
                              0, MAX_CATCHUP_WINDOW_S),
        coalesce=_choice(f"{at}.coalesce", raw.get("coalesce", "latest"), Coalesce),
        retries=retries,
        paused=_bool(f"{at}.paused", raw.get("paused", False)),
        run_window=run_window, batch_timeout_s=batch_timeout_s,
        batch_pause_s=_number(f"{at}.batch_pause_s", raw.get("batch_pause_s", 0.0),
                              0.0, MAX_BATCH_PAUSE_S),
    )


def _run_window(at: str, raw: object, batch_timeout_s: int) -> DailyWindow | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(at, "must be a mapping {start: \"HH:MM\", end: \"HH:MM\"}")
    for key in raw:
        if key not in ("start", "end"):
            raise ConfigError(f"{at}.{key}", "unknown key; known keys: start, end")
    edges = []
    for key in ("start", "end"):
        if key not in raw:
            raise ConfigError(f"{at}.{key}", "is required")
        try:
            edges.append(parse_hhmm(raw[key]))
        except ValueError as exc:
            raise ConfigError(f"{at}.{key}", str(exc)) from None
    if edges[0] == edges[1]:
        raise ConfigError(f"{at}.end", "equals start: a window needs a length (omit "
                          "run_window to run at any time)")
    window = DailyWindow(edges[0], edges[1])
    if window.length_s < batch_timeout_s:
        raise ConfigError(at, f"the window {window.text()} is {window.length_s} s long, "
                          f"shorter than one batch's timeout (batch_timeout_s "
                          f"{batch_timeout_s} s)")
    return window


def _check_fires_inside(at: str, schedule: CronExpression, timezone: str, policy: DstPolicy,
                        window: DailyWindow) -> None:
    """Reject a schedule none of whose fires in the sample year falls inside the window."""
    tz = zone(timezone)
    for fire in schedule.fires(SAMPLE_START - timedelta(microseconds=1), tz, policy):
        if fire >= SAMPLE_END:
            break
        if window.containing(fire, tz, policy) is not None:
            return
    raise ConfigError(at, f"schedule {schedule.text!r} never fires inside the window "
                      f"{window.text()} {timezone}")


def _params(at: str, kind: str, spec: KindSpec, raw: object) -> Mapping[str, int | float]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(at, "must be a mapping")
    values: dict[str, int | float] = {}
    for key, value in raw.items():
        param = spec.params.get(key)
        if param is None:
            known = ", ".join(spec.params) or "none"
            raise ConfigError(f"{at}.{key}", f"unknown parameter for kind {kind}; known: {known}")
        if param.type is int:
            values[key] = _int(f"{at}.{key}", value, int(param.lo), int(param.hi))
        else:
            values[key] = _number(f"{at}.{key}", value, float(param.lo), float(param.hi))
    for key, param in spec.params.items():
        values.setdefault(key, param.default)
    return MappingProxyType(values)


def _dst_policy(at: str, raw: object) -> DstPolicy:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(at, "must be a mapping {nonexistent, ambiguous}")
    for key in raw:
        if key not in ("nonexistent", "ambiguous"):
            raise ConfigError(f"{at}.{key}", "unknown key; known keys: nonexistent, ambiguous")
    return DstPolicy(
        _choice(f"{at}.nonexistent", raw.get("nonexistent", "shift_forward"), Nonexistent),
        _choice(f"{at}.ambiguous", raw.get("ambiguous", "first"), Ambiguous),
    )


def _retries(at: str, raw: object) -> Retries:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(at, "must be a mapping {max_attempts, base_delay_s, max_delay_s}")
    for key in raw:
        if key not in ("max_attempts", "base_delay_s", "max_delay_s"):
            raise ConfigError(f"{at}.{key}",
                              "unknown key; known keys: max_attempts, base_delay_s, max_delay_s")
    defaults = Retries()
    base = _number(f"{at}.base_delay_s", raw.get("base_delay_s", defaults.base_delay_s),
                   0.001, MAX_DELAY_S)
    cap = _number(f"{at}.max_delay_s", raw.get("max_delay_s", defaults.max_delay_s),
                  0.001, MAX_DELAY_S)
    if cap < base:
        raise ConfigError(f"{at}.max_delay_s", f"{cap:g} is below base_delay_s {base:g}")
    return Retries(
        max_attempts=_int(f"{at}.max_attempts", raw.get("max_attempts", defaults.max_attempts),
                          1, MAX_ATTEMPTS),
        base_delay_s=base, max_delay_s=cap)


def _int(at: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(at, f"must be a whole number, got {_shown(value)}")
    if not lo <= value <= hi:
        raise ConfigError(at, f"{value} is out of range {lo}-{hi}")
    return value


def _number(at: str, value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(at, f"must be a number, got {_shown(value)}")
    if not lo <= value <= hi:
        raise ConfigError(at, f"{value:g} is out of range {lo:g}-{hi:g}")
    return float(value)


def _bool(at: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(at, f"must be true or false, got {_shown(value)}")
    return value


def _choice(at: str, value: object, enum: type[E]) -> E:
    allowed = [e.value for e in enum]
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(at, f"{_shown(value)} is not one of {', '.join(allowed)}")
    return enum(value)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _windows(job: Job) -> list[tuple[datetime, datetime]]:
    length = timedelta(seconds=job.timeout_s)
    out: list[tuple[datetime, datetime]] = []
    for fire in job.fires(SAMPLE_START - timedelta(microseconds=1)):
        if fire >= SAMPLE_END:
            break
        out.append((fire, fire + length))
    return out


def _check_heavy_windows(jobs: list[Job]) -> None:
    """Reject two heavy jobs whose ``[fire, fire + timeout_s)`` windows intersect."""
    heavy = [(i, job, _windows(job)) for i, job in enumerate(jobs) if job.heavy]
    for a in range(len(heavy)):
        for b in range(a + 1, len(heavy)):
            i, job_i, wins_i = heavy[a]
            j, job_j, wins_j = heavy[b]
            clash = _first_intersection(wins_i, wins_j)
            if clash is not None:
                start_i, start_j = clash
                raise ConfigError(
                    f"jobs[{j}].schedule",
                    f"heavy job window [{_z(start_j)}, +{job_j.timeout_s} s) overlaps heavy job "
                    f"{job_i.name!r} (jobs[{i}]) window [{_z(start_i)}, +{job_i.timeout_s} s); "
                    "move one schedule or shorten a timeout_s")


def _first_intersection(
    a: list[tuple[datetime, datetime]], b: list[tuple[datetime, datetime]]
) -> tuple[datetime, datetime] | None:
    x = y = 0
    while x < len(a) and y < len(b):
        (sa, ea), (sb, eb) = a[x], b[y]
        if sa < eb and sb < ea:
            return sa, sb
        if ea <= eb:
            x += 1
        else:
            y += 1
    return None


def _z(at: datetime) -> str:
    return format_seconds(at)


def as_document(job: Job) -> dict[str, Any]:
    """A job as the registry keys it came from (for ``jobs list``)."""
    return {
        "name": job.name, "kind": job.kind, "schedule": job.schedule.text,
        "timezone": job.timezone,
        "dst_policy": {"nonexistent": job.dst_policy.nonexistent.value,
                       "ambiguous": job.dst_policy.ambiguous.value},
        "params": dict(job.params), "timeout_s": job.timeout_s, "overlap": job.overlap.value,
        "catchup_window_s": job.catchup_window_s, "coalesce": job.coalesce.value,
        "retries": {"max_attempts": job.retries.max_attempts,
                    "base_delay_s": job.retries.base_delay_s,
                    "max_delay_s": job.retries.max_delay_s},
        "paused": job.paused,
        "run_window": None if job.run_window is None else {
            "start": f"{job.run_window.start:%H:%M}", "end": f"{job.run_window.end:%H:%M}"},
        "batch_timeout_s": job.batch_timeout_s, "batch_pause_s": job.batch_pause_s,
    }
