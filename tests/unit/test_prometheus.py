"""The alert rules (deploy/prometheus/alerts.yml): promtool accepts them, their unit tests
(alerts_test.yml) pass and can fail, and they name only metrics that streams/telemetry/metrics.py
defines, with labels those metrics have. promtool comes from Debian's `prometheus` package
(scripts/setup); a missing promtool fails these tests, it never skips them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from streams.telemetry import metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
REQUIRED = {"CronorchWorkerDown", "CronorchTickLagHigh", "CronorchTransactionAborts",
            "CronorchDeadLettersRising", "CronorchFiresMissed", "CronorchJobFailed",
            "CronorchWatermarkStalled", "CronorchSpawnSinkDown", "CronorchRelayDown"}
# Every process of the chart has its "down" alert (component label → alert).
DOWN = {"worker": "CronorchWorkerDown", "tick": "CronorchTickProducerDown",
        "job-runner": "CronorchJobRunnerDown", "spawn-sink": "CronorchSpawnSinkDown",
        "relay": "CronorchRelayDown"}
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created")}


def promtool(*args: str, cwd: Path = RULES.parent) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: run scripts/setup (Debian package prometheus)")
    return subprocess.run([path, *args], capture_output=True, text=True, cwd=cwd, check=False,
                          timeout=60)


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def defined_series() -> dict[str, set[str]]:
    """Every series name streams/telemetry/metrics.py exposes → the label names it may carry."""
    series: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            base, kind = value._name, value._type
            labels = set(value._labelnames)
            for suffix in SUFFIXES[kind]:
                series[base + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def test_promtool_checks_the_rules() -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules())} rules found" in proc.stdout


def test_promtool_unit_tests_pass() -> None:
    proc = promtool("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    text = RULES.read_text()
    assert "max(cronorch_tick_lag_seconds) > 60" in text
    (tmp_path / "alerts.yml").write_text(text.replace("max(cronorch_tick_lag_seconds) > 60",
                                                      "max(cronorch_tick_lag_seconds) > 120"))
    shutil.copy(RULE_TESTS, tmp_path / "alerts_test.yml")
    proc = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert proc.returncode != 0
    assert "CronorchTickLagHigh" in proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {case["alertname"] for test in tests for case in test["alert_rule_test"]
              if case.get("exp_alerts")}
    assert firing == {rule["alert"] for rule in rules()}


def test_the_required_alerts_exist_with_severity_and_summary() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    lag = next(rule for rule in rules() if rule["alert"] == "CronorchTickLagHigh")
    assert "cronorch_tick_lag_seconds" in lag["expr"]


def test_every_component_has_a_down_alert_on_its_up_series() -> None:
    by_name = {rule["alert"]: rule for rule in rules()}
    for name, alert in DOWN.items():
        rule = by_name[alert]
        assert rule["expr"] == f'absent(up{{component="{name}"}} == 1)', alert
        assert rule["labels"]["component"] == name, alert
    assert {r["labels"]["component"] for r in rules() if "component" in r["labels"]} == set(DOWN)
    # The header comment lists the component values the rules use.
    header = RULES.read_text().split("\ngroups:", 1)[0]
    listed = re.search(r"`component` label \(([^)]*)\)", header)
    assert listed and {p.strip() for p in listed.group(1).split("|")} == set(DOWN)


def test_promtool_unit_tests_catch_a_changed_down_duration(tmp_path: Path) -> None:
    text = RULES.read_text()
    old = 'absent(up{component="spawn-sink"} == 1)\n        for: 10m'
    assert old in text
    (tmp_path / "alerts.yml").write_text(text.replace(old, old.replace("10m", "15m")))
    shutil.copy(RULE_TESTS, tmp_path / "alerts_test.yml")
    proc = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert proc.returncode != 0
    assert "CronorchSpawnSinkDown" in proc.stdout + proc.stderr


def test_rules_name_only_metrics_and_labels_that_exist() -> None:
    series = defined_series()
    assert "cronorch_transaction_seconds_bucket" in series  # the histogram expansion works
    used: set[str] = set()
    for rule in rules():
        expr = rule["expr"]
        for name in re.findall(r"\bcronorch_\w+", expr):
            assert name in series, f"{rule['alert']}: {name} is not in streams/telemetry/metrics.py"
            used.add(name)
        for name, matchers in re.findall(r"\b(cronorch_\w+)\{([^}]*)\}", expr):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                assert label in series[name], f"{rule['alert']}: {name} has no label {label}"
        for grouping in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            names = set(re.findall(r"\bcronorch_\w+", expr))
            for label in (part.strip() for part in grouping.split(",")):
                assert any(label in series[n] for n in names), f"{rule['alert']}: by {label}"
    assert used >= {"cronorch_tick_lag_seconds", "cronorch_transactions_total",
                    "cronorch_dead_letters_total", "cronorch_fires_missed_total",
                    "cronorch_job_runs_total", "cronorch_watermark_timestamp_seconds"}


def test_a_misspelt_metric_would_be_caught() -> None:
    series = defined_series()
    assert "cronorch_tick_lag_ms" not in series
    assert "cronorch_transactions" not in series  # a counter is exposed with _total
    assert "cronorch_watermark_timestamp_seconds_bucket" not in series


# --- the Grafana dashboard (deploy/grafana/cronorch-dashboard.json) ----------------------------

DASHBOARD = ROOT / "deploy" / "grafana" / "cronorch-dashboard.json"


def test_dashboard_queries_parse_and_name_only_defined_series(tmp_path: Path) -> None:
    import json

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    series = defined_series()
    for expr in exprs:
        for name in re.findall(r"\bcronorch_[a-z_]+", expr):
            assert name in series, f"{name} in the dashboard is not in streams/telemetry/metrics.py"
    # promtool parses every expression as a rule would.
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel{i}", "expr": e} for i, e in enumerate(exprs)]}]}))
    proc = promtool("check", "rules", str(rules_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
