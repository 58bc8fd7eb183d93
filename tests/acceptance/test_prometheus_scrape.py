"""A real Prometheus server (Debian's `prometheus`) scrapes a running worker, loads the alert
rules of deploy/prometheus/alerts.yml, and answers a query for a metric that moved."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.settings import Settings
from tests.model import ts, z
from tests.support import Proc, eventually, publish

pytestmark = [pytest.mark.kafka]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _query(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return orjson.loads(response.read())["data"]


def test_prometheus_scrapes_the_worker_and_loads_the_rules(settings: Settings,
                                                           tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: run scripts/setup (Debian package prometheus)")
    metrics_port, web_port = _free_port(), _free_port()
    worker_settings = settings.model_copy(update={"metrics_port": metrics_port})
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""\
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{RULES}]
scrape_configs:
  - job_name: cronorch
    static_configs:
      - targets: ["127.0.0.1:{metrics_port}"]
        labels: {{component: worker}}
""")
    base = f"http://127.0.0.1:{web_port}"
    worker = Proc(worker_settings, "worker", log=tmp_path / "worker.log").start()
    with (tmp_path / "prometheus.log").open("wb") as log:
        server = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{web_port}"], stdout=log, stderr=subprocess.STDOUT)
    t0 = ts("2026-07-01T08:00:00Z")
    events = [{"type": "user.settings", "event_id": f"s{i}", "occurred_at": z(t0),
               "user_id": f"u{i}", "version": 1, "timezone": "UTC", "digest_time": None}
              for i in range(20)]

    async def scenario() -> tuple[Any, Any, Any, Any]:
        await eventually(lambda: _up(base), 60, "prometheus ready")
        await publish(settings, events)

        def moved() -> bool:
            result = _query(base, "/api/v1/query",
                            query='sum(cronorch_records_total{role="rekeyer"})')["result"]
            return bool(result) and float(result[0]["value"][1]) >= len(events)

        await eventually(moved, 90, "cronorch_records_total to reach Prometheus")
        up = _query(base, "/api/v1/query", query='up{component="worker"}')["result"]

        def processors_up() -> bool:
            result = _query(base, "/api/v1/query",
                            query='sum(cronorch_processor_up{role=~"rekeyer|timeline"})')
            return bool(result["result"]) and result["result"][0]["value"][1] == "2"

        await eventually(processors_up, 30, "both processors up in Prometheus")
        groups = _query(base, "/api/v1/rules")["groups"]
        alerts = _query(base, "/api/v1/alerts")["alerts"]
        guards = [_query(base, "/api/v1/query", query=f'absent(up{{component="{c}"}} == 1)')
                  ["result"] for c in ("worker", "tick")]
        return up, groups, alerts, guards

    try:
        up, groups, alerts, guards = asyncio.run(scenario())
    finally:
        worker.kill()
        server.terminate()
        server.wait(30)
    assert [sample["value"][1] for sample in up] == ["1"]
    names = {rule["name"] for group in groups for rule in group["rules"]}
    assert {"CronorchWorkerDown", "CronorchWatermarkStalled"} <= names
    assert all(rule["health"] == "ok" for group in groups for rule in group["rules"]), groups
    # The absent() guards: empty for the scraped worker, 1 for the tick producer that no
    # target exposes here (so a vanished series pages).
    assert guards[0] == []
    assert [sample["value"][1] for sample in guards[1]] == ["1"]
    assert "CronorchWorkerDown" not in {a["labels"]["alertname"] for a in alerts
                                        if a["state"] == "firing"}


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
