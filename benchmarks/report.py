"""Results out: the terminal table, the JSON file, comparison with a previous run, the chart.

JSON layout (stable; `--compare` and the smoke test read it):

    {"meta": {"timestamp", "git", "host", "options", "loadavg_start", ...},
     "measurements": {"<group>.<name>": {"group", "status", "seconds",
                                          "metrics": {"<name>_<unit>": float},
                                          "reason": "..."}}}

status is "ok", "unavailable" (the feature has not landed: reason says why),
"skipped" (not in this mode) or "error".
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from benchmarks.core import Result

REPO = Path(__file__).resolve().parents[1]


def _git() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty.strip() else "")


def _runc_version() -> str:
    try:
        out = subprocess.run(["runc", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "missing"
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def meta(options: dict[str, Any], started: float) -> dict[str, Any]:
    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "git": _git(),
        "host": platform.node(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "runc": _runc_version(),
        "loadavg_start": os.getloadavg()[0],
        "options": options,
    }


def to_json(meta_: dict[str, Any], results: list[Result]) -> dict[str, Any]:
    return {"meta": meta_, "measurements": {r.key: r.to_json() for r in results}}


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    if "measurements" not in doc:
        raise ValueError(f"{path}: not a benchmark results file")
    return doc


def previous_metrics(doc: dict[str, Any]) -> dict[tuple[str, str], float]:
    out = {}
    for key, m in doc["measurements"].items():
        for name, value in m.get("metrics", {}).items():
            out[(key, name)] = value
    return out


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def print_table(results: list[Result], previous: dict[tuple[str, str], float] | None) -> None:
    console = Console(width=max(Console().width, 110))
    table = Table(title="pyctr benchmarks (ratios are what to read: same-run baselines)")
    table.add_column("measurement", style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if previous is not None:
        table.add_column("now/prev", justify="right")
    for r in results:
        if r.status != "ok":
            style = "yellow" if r.status in ("unavailable", "skipped") else "red"
            reason = Text(r.reason, style=style, justify="left")
            table.add_row(r.key, Text(r.status, style=style), reason)
            continue
        for i, (name, value) in enumerate(r.metrics.items()):
            row = [r.key if i == 0 else "", name, _fmt(value)]
            if previous is not None:
                old = previous.get((r.key, name))
                row.append(_fmt(value / old) if old else "")
            bold = name.endswith("ratio")
            table.add_row(*[f"[bold]{c}[/]" if bold and c else c for c in row])
        table.add_section()
    console.print(table)


def plot(path: Path, results: list[Result]) -> None:
    """Horizontal bars of every ratio metric, with the 1.0 line marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[bench]'") from None
    bars = [
        (f"{r.key}\n{n}", v)
        for r in results
        for n, v in r.metrics.items()
        if n.endswith("ratio") and math.isfinite(v)
    ]
    fig, ax = plt.subplots(figsize=(9, 1 + 0.55 * max(len(bars), 1)))
    if bars:
        labels, values = zip(*bars, strict=True)
        ax.barh(
            range(len(bars)), values, color=["tab:red" if v > 2 else "tab:blue" for v in values]
        )
        ax.set_yticks(range(len(bars)), labels, fontsize=8)
        ax.invert_yaxis()
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("ratio (pyctr / baseline; lower is better, 1.0 = as fast as the baseline)")
    ax.set_title("pyctr benchmarks")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
