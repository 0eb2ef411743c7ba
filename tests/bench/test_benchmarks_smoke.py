"""The benchmark suite runs: `python -m benchmarks --quick` writes sound results.

Benchmarks never assert timings (the machine is shared and noisy): these
tests check that the suite runs end to end against a real pyctrd and runc,
and that its JSON has the figures, positive, where the next run can compare.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.core import percentile
from benchmarks.report import previous_metrics

REPO = Path(__file__).resolve().parents[2]

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runc") is None, reason="needs root and runc"
)


def bench(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok_metrics(doc: dict[str, Any], key: str) -> dict[str, float]:
    m = doc["measurements"][key]
    assert m["status"] == "ok", m
    return dict(m["metrics"])


@needs_root
def test_quick_api_and_runc(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = bench("--quick", "--only", "api,runc", "--output", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["meta"]["options"]["quick"] is True
    assert doc["meta"]["git"]

    assert {k.split(".")[0] for k in doc["measurements"]} == {"api", "runc"}
    for key in ("api.version", "api.version_16_clients"):
        metrics = ok_metrics(doc, key)
        for name in (
            "pyctr_median_ms",
            "pyctr_p99_ms",
            "grpc_median_ms",
            "grpc_p99_ms",
            "median_ratio",
            "p99_ratio",
            "pyctr_calls_per_s",
        ):
            assert metrics[name] > 0, (key, name, metrics)
        assert metrics["pyctr_p99_ms"] >= metrics["pyctr_median_ms"]
    # Live or not yet: either way a status the reader understands, never an error.
    listing = doc["measurements"]["api.list_containers_empty"]
    assert listing["status"] in ("ok", "unavailable"), listing
    if listing["status"] == "unavailable":
        assert listing["reason"].startswith("not available yet:")

    run = ok_metrics(doc, "runc.run_true")
    assert run["median_ms"] > 0 and run["p90_ms"] >= run["median_ms"]
    detached = ok_metrics(doc, "runc.run_detached")
    assert detached["start_median_ms"] > 0 and detached["delete_median_ms"] > 0
    # The table names every measurement run.
    for key in doc["measurements"]:
        assert key in proc.stdout

    # A second run compares itself with the first.
    again = tmp_path / "again.json"
    proc = bench(
        "--quick", "--only", "runc.run_true", "--output", str(again), "--compare", str(out)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "now/prev" in proc.stdout
    assert set(json.loads(again.read_text())["measurements"]) == {"runc.run_true"}


def test_unknown_selection_is_refused() -> None:
    proc = bench("--only", "nosuchgroup")
    assert proc.returncode != 0
    assert "unknown nosuchgroup" in proc.stderr


def test_percentile_and_previous_metrics() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([5.0], 99) == 5.0
    with pytest.raises(ValueError):
        percentile([], 50)
    doc = {
        "measurements": {
            "a.b": {"status": "ok", "metrics": {"x_ms": 2.0}},
            "a.c": {"status": "unavailable", "reason": "not yet"},
        }
    }
    assert previous_metrics(doc) == {("a.b", "x_ms"): 2.0}
