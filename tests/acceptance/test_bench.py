"""The benchmark suite still runs: ``scripts/bench --smoke`` end to end against the real
Kafka and PostgreSQL, and its results hold every figure.

Benchmarks are not timed tests: nothing here checks a speed (docs/performance.md reads
the figures of a full run); this proves the suite, its peers and its profiler work.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

from bench.suite import missing_figures
from streams.cli import devstack
from tests.support import ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


def test_bench_smoke_writes_every_figure(stack: devstack.Stack, tmp_path: Path) -> None:
    done = subprocess.run([str(ROOT / "scripts" / "bench"), "--smoke", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    doc = orjson.loads((tmp_path / "results.json").read_bytes())
    assert missing_figures(doc) == []
    # Both sides delivered every fire, each once (the suite reads them back).
    assert doc["burst"]["project"]["verified"] and doc["burst"]["peer"]["verified"]
    assert doc["lateness"]["fires"] == doc["lateness"]["rate_per_s"] * doc["lateness"]["duration_s"]
    assert [s["workers"] for s in doc["scale"]] == [1, 2, 3]
    for phase in ("ingest", "burst"):
        profile = doc["profile"][phase]
        assert profile["samples"] > 0, phase
        assert Path(profile["svg"]).read_text().startswith("<svg")
    assert "burst drain" in done.stdout and "load average" in done.stdout
    assert doc["pipeline"]["errors_logged"] == 0
