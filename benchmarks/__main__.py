"""python -m benchmarks: run the suite as root against real pyctrd, runc and registry.

    python -m benchmarks                         # everything; results/<timestamp>.json
    python -m benchmarks --quick --only api,runc # a smoke run (seconds)
    python -m benchmarks --compare benchmarks/results/OLD.json --plot ratios.png

Measurements whose feature has not landed report "not available yet: why".
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from benchmarks import report
from benchmarks.core import GROUPS, REGISTRY, Measurement, run_one
from benchmarks.env import BenchEnv, Options

RESULTS = Path(__file__).resolve().parent / "results"
# Importing a module registers its measurements: this order is the run order
# (cheap baselines first; "with N containers" after the empty-daemon figures).
MODULES = (
    "api",
    "memory",
    "runc_bare",
    "shim",
    "start",
    "network",
    "pull",
    "populated",
    "lifecycle",
    "containerd",
    "containerd_cri",
)
for _name in MODULES:
    importlib.import_module(f"benchmarks.{_name}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="few iterations, small images only (the smoke test's mode)",
    )
    p.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        help=f"groups or group.name to run; groups: {', '.join(GROUPS)}",
    )
    p.add_argument("--runs", type=int, metavar="N", help="iterations per start/stop figure")
    p.add_argument(
        "--containers",
        type=int,
        metavar="N",
        help="N in the 'with N containers' figures (default 50, quick 5)",
    )
    p.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="results JSON (default benchmarks/results/<timestamp>.json)",
    )
    p.add_argument(
        "--compare",
        type=Path,
        metavar="FILE",
        help="previous results JSON: print now/prev for each figure",
    )
    p.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="bar chart of the ratios (needs the 'bench' extra: matplotlib)",
    )
    p.add_argument("--list", action="store_true", help="list the measurements and exit")
    return p


def select(only: str | None) -> list[Measurement]:
    if not only:
        return list(REGISTRY)
    wanted = {w.strip() for w in only.split(",") if w.strip()}
    known = set(GROUPS) | {m.key for m in REGISTRY}
    unknown = wanted - known
    if unknown:
        raise SystemExit(f"--only: unknown {', '.join(sorted(unknown))} (see --list)")
    return [m for m in REGISTRY if m.group in wanted or m.key in wanted]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for m in REGISTRY:
            print(f"{m.key:40} {m.doc.splitlines()[0] if m.doc else ''}")
        return 0
    if os.geteuid() != 0:
        print("benchmarks: run as root (pyctrd and runc need it)", file=sys.stderr)
        return 2
    chosen = select(args.only)
    previous = report.previous_metrics(report.load(args.compare)) if args.compare else None
    options = Options.make(args.quick, args.runs)
    if args.containers:
        options.containers = args.containers
    started = time.time()
    meta = report.meta(vars(options) | {"only": args.only}, started)
    env = BenchEnv(options)
    try:
        for m in chosen:
            if m.key in env.results:
                continue  # already run as another measurement's baseline
            print(f"-- {m.key} ...", file=sys.stderr, flush=True)
            r = run_one(m, env)
            print(f"   {r.status} in {r.seconds:.1f}s {r.reason}", file=sys.stderr, flush=True)
    finally:
        env.close()
    # Baselines a measurement needed are in here too, in the order they ran.
    results = list(env.results.values())
    output = args.output or RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    report.write_json(output, report.to_json(meta, results))
    report.print_table(results, previous)
    print(f"results: {output}")
    if args.plot:
        report.plot(args.plot, results)
        print(f"chart: {args.plot}")
    return 1 if any(r.status == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
