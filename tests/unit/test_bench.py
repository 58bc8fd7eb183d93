"""The benchmark suite's own arithmetic: collapsed stacks → rankings, the figure check, and
the interpolation of committed offsets (no sockets; the suite itself runs in
tests/acceptance/test_bench.py)."""

from __future__ import annotations

from pathlib import Path

from bench import flame
from bench.harness import _at
from bench.suite import missing_figures

RAW = (
    "<module> (/w/h5/streams/cli/__main__.py:5);run (/work/wt/h5/streams/kafka/engine.py:190);"
    "process (/work/wt/h5/streams/processes/worker.py:99);"
    "validate_python (/v/lib/python3.11/site-packages/pydantic/type_adapter.py:1) 30\n"
    "<module> (/w/h5/streams/cli/__main__.py:5);run (/work/wt/h5/streams/kafka/engine.py:190);"
    "process (/work/wt/h5/streams/processes/worker.py:120) 10\n"
    "<module> (/w/h5/streams/cli/__main__.py:5);"
    "_run_once (/usr/lib/python3.11/asyncio/base_events.py:1900) 60\n"
)


def test_ranking_counts_self_total_and_areas(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    raw.write_text(RAW)
    result = flame.render(raw, "test")
    assert result["samples"] == 100
    assert result["self"][0] == {"function": "stdlib/asyncio/base_events.py:_run_once",
                                 "percent": 60.0}
    assert {"function": "pydantic/type_adapter.py:validate_python", "percent": 30.0} \
        in result["self"]
    # Lines of one function add up; the entry frame (every sample) is left out of "ours".
    assert sorted(r["function"] for r in result["total_ours"]) == [
        "streams/kafka/engine.py:run", "streams/processes/worker.py:process"]
    assert {r["percent"] for r in result["total_ours"]} == {40.0}
    assert {"area": "asyncio", "percent": 60.0} in result["areas"]
    assert result["breakdown"]["streams/processes/worker.py:process"] == [
        {"function": "pydantic/type_adapter.py:validate_python", "percent": 30.0},
        {"function": "(self)", "percent": 10.0}]
    assert Path(result["svg"]).read_text().startswith("<svg")


def test_missing_figures_walks_lists_and_nulls() -> None:
    doc = {"a": {"b": 1}, "m": [{"x": 1}, {"x": None}], "e": []}
    assert missing_figures(doc, ["a.b", "a.c", "m.*.x", "e.*.x", "z"]) == [
        "a.c", "m.*.x", "e.*.x", "z"]
    assert missing_figures({"m": [{"x": 0}]}, ["m.*.x"]) == []


def test_committed_counts_interpolate_between_polls() -> None:
    series: list[tuple[float, ...]] = [(10.0, 0, 0, 1.0), (11.0, 100, 10, 2.0),
                                       (12.0, 300, 50, 4.0)]
    assert _at(series, 11.5) == (200.0, 30.0, 3.0)
    assert _at(series, 9.0) == (0.0, 0.0, 1.0)
    assert _at(series, 13.0) == (300.0, 50.0, 4.0)
