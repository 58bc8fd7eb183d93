"""Deployment artefacts agree with the code: the Dockerfile (never built in CI: no container
engine here) with pyproject/uv.lock/scripts/setup, and the chart's values with ``Settings``.

The rendered chart is checked in test_helm.py, the alert rules in test_prometheus.py.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from streams.settings import ENV, Settings, Topics

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "cronorch"
# Defaults that differ from the code's on purpose (values.yaml and docs/operations.md say why):
# the code's point at the local stack on 127.0.0.1, which inside a pod is the pod itself.
IN_CLUSTER_DEFAULTS = {"kafka_bootstrap_servers", "database_url"}


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


# --- Dockerfile ---------------------------------------------------------------------------------

def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    out = []
    for line in logical:
        keyword, _, args = line.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def test_dockerfile_header_says_ci_does_not_build_it() -> None:
    header = (ROOT / "Dockerfile").read_text().split("\nFROM", 1)[0]
    assert "NOT BUILT IN CI" in header
    assert "tests/unit/test_deploy.py" in header


def test_dockerfile_is_multi_stage_on_the_project_python() -> None:
    stages = _stages()
    assert len(stages) >= 2
    bases = [stage[0][1].split()[0] for stage in stages]
    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    for base in bases:
        match = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?-slim(?:-\w+)?", base)
        assert match, f"{base} is not a python:X.Y-slim image"
        assert requires.contains(f"{match.group(1)}.0"), (base, str(requires))
    # The venv of the build stage links to the interpreter of its base: the runtime must match.
    assert len(set(bases)) == 1, bases
    assert "--python /usr/local/bin/python" in (ROOT / "Dockerfile").read_text()
    final = stages[-1]
    assert any(k == "COPY" and "--from=build" in a and "/app/.venv" in a for k, a in final)


def test_dockerfile_installs_the_lock_without_dev_dependencies() -> None:
    instructions = _instructions()
    copies = " ".join(a for k, a in instructions if k == "COPY")
    assert "uv.lock" in copies.split() and "pyproject.toml" in copies.split()
    syncs = [a for k, a in instructions if k == "RUN" and "uv sync" in a]
    assert syncs
    for sync in syncs:
        assert "--frozen" in sync and "--no-dev" in sync, sync
    # Resolving anything is left to uv.lock: no pip install of project dependencies.
    pip = [a for k, a in instructions if k == "RUN" and "pip install" in a]
    assert all(re.search(r'"uv==[\d.]+"', a) for a in pip), pip
    # The same uv as scripts/setup.
    pinned = re.search(r"uv==([\d.]+)", (ROOT / "scripts" / "setup").read_text())
    ours = re.search(r"uv==([\d.]+)", " ".join(pip))
    assert pinned and ours and pinned.group(1) == ours.group(1)


def test_dockerfile_copies_what_the_wheel_packages() -> None:
    pyproject = _pyproject()
    copied = {part.rstrip("/") for k, a in _instructions() if k == "COPY" for part in a.split()}
    for package in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert package in copied, package
    assert pyproject["project"]["readme"] in copied  # hatchling reads it to build the project


def test_dockerfile_runs_as_a_non_root_user() -> None:
    final = _stages()[-1]
    users = [a for k, a in final if k == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    keywords = [k for k, _ in final]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    # The chart runs pods as the same id.
    assert _values()["podSecurityContext"]["runAsUser"] == int(user)


def test_dockerfile_entrypoint_is_the_console_script() -> None:
    entrypoints = [a for k, a in _stages()[-1] if k == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    command = json.loads(entrypoints[0])  # exec form
    assert command == ["cronorch"]
    assert _pyproject()["project"]["scripts"]["cronorch"] == "streams.cli.main:main"


def test_dockerfile_exposes_the_metrics_port() -> None:
    exposed = [a for k, a in _instructions() if k == "EXPOSE"]
    assert exposed == [str(Settings().metrics_port)]


def test_dockerignore_keeps_local_state_out_and_sources_in() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv"} <= ignored
    for keyword, args in _instructions():
        if keyword == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                assert source not in ignored, f"{source} is copied but .dockerignore drops it"


# --- Helm values mirror Settings ----------------------------------------------------------------

def test_config_keys_are_exactly_the_settings_fields() -> None:
    config = _values()["config"]
    assert set(config) == set(Settings.model_fields)
    assert set(config["topics"]) == set(Topics.model_fields)
    # Every field but topics has its environment variable.
    assert set(ENV) == set(Settings.model_fields) - {"topics"}


def test_config_defaults_are_the_settings_defaults() -> None:
    config = _values()["config"]
    defaults = Settings().model_dump()
    for field, default in defaults.items():
        if field in IN_CLUSTER_DEFAULTS:
            continue
        default = getattr(default, "get_secret_value", lambda d=default: d)()
        assert config[field] == default, field
        assert type(config[field]) is type(default), field  # 6, not "6"


@pytest.mark.parametrize("field", sorted(IN_CLUSTER_DEFAULTS))
def test_in_cluster_defaults_differ_only_from_loopback(field: str) -> None:
    value = str(_values()["config"][field])
    code_default = Settings().model_dump()[field]
    code_default = getattr(code_default, "get_secret_value", lambda: code_default)()
    assert "127.0.0.1" in code_default
    assert "127.0.0.1" not in value and "localhost" not in value


def test_config_is_a_valid_settings_object() -> None:
    settings = Settings(**_values()["config"])
    assert settings.topics == Topics()


def test_chart_app_version_is_the_project_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == _pyproject()["project"]["version"]


def test_default_jobs_are_the_repository_registry() -> None:
    registry = yaml.safe_load((ROOT / "deploy" / "jobs.yaml").read_text())
    assert _values()["jobs"] == registry["jobs"]


def test_default_worker_replicas_fit_the_timeline_partitions() -> None:
    values = _values()
    assert 1 <= values["worker"]["replicas"] <= values["config"]["timeline_partitions"]


def test_operations_doc_lists_every_config_value_with_its_variable_and_default() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    rows = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
        r"^\| `config\.([a-z_.]+)` \| `([A-Z_]+)` \| `([^`]*)` \|", doc, re.MULTILINE)}
    config = _values()["config"]
    expected: dict[str, tuple[str, str]] = {}
    for field in Settings.model_fields:
        if field == "topics":
            for topic in Topics.model_fields:
                expected[f"topics.{topic}"] = (f"TOPIC_{topic.upper()}", config["topics"][topic])
        else:
            expected[field] = (ENV[field], str(config[field]))
    assert rows == expected


def test_operations_doc_lists_every_metric() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from streams.telemetry import metrics

    doc = (ROOT / "docs" / "operations.md").read_text()
    listed = set(re.findall(r"^\| `(cronorch_\w+)` \| (?:counter|gauge|histogram) \|", doc,
                            re.MULTILINE))
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + ("_total" if value._type == "counter" else "")
            assert name in listed, f"{name} is missing from docs/operations.md"


# component label → (values section, command); the Deployments are checked in test_helm.py.
COMPONENTS = {"worker": ("worker", "cronorch worker"), "tick": ("tick", "cronorch tick"),
              "job-runner": ("jobRunner", "cronorch job-runner"),
              "spawn-sink": ("spawnSink", "cronorch spawn-sink"),
              "relay": ("relay", "cronorch relay")}


def test_every_component_has_a_values_section_like_tick() -> None:
    values = _values()
    pod_keys = set(values["tick"])
    sections = {key for key, section in values.items()
                if isinstance(section, dict) and "terminationGracePeriodSeconds" in section}
    assert sections == {key for key, _ in COMPONENTS.values()}
    for key in sections:
        assert set(values[key]) >= pod_keys, key
    assert values["spawnSink"]["enabled"] is True and values["relay"]["enabled"] is True
    assert values["relay"]["pollIntervalS"] == 1.0
    assert isinstance(values["relay"]["pollIntervalS"], float)


def test_operations_doc_lists_every_component() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    table = doc.split("## Deploying", 1)[0]
    for name, (key, command) in COMPONENTS.items():
        assert re.search(rf"^\| [a-z ]+ \| `{re.escape(command)}[ `]", table, re.MULTILINE), name
        assert re.search(rf"^\| `{key}\.", doc, re.MULTILINE), f"values row of {key}"
        assert f"`{name}`" in doc.split("**Scraping.**", 1)[1].split("\n\n", 1)[0], name
    per_component = re.search(r"^\| `<component>\.resources`.*per component \(([^)]*)\)", doc,
                              re.MULTILINE)
    assert per_component
    assert set(re.findall(r"`(\w+)`", per_component.group(1))) == {
        key for key, _ in COMPONENTS.values()}


def test_operations_doc_lists_every_alert() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    listed = re.findall(r"^\| `(Cronorch\w+)` \|", doc, re.MULTILINE)
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert sorted(listed) == sorted(r["alert"] for g in alerts["groups"] for r in g["rules"])
