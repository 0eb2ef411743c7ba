"""The measurement model: registered functions, their results, small statistics.

A measurement is a function `fn(env) -> dict[str, float]` registered under a
group (what `--only` selects) and a name. It returns metrics named with their
unit as suffix (`median_ms`, `pss_mib`, `mb_per_s`, `ratio`), or raises
`NotAvailable` when the feature it needs has not landed (an RPC answers
UNIMPLEMENTED, a tool is missing): the suite reports the reason and goes on.
Anything else it raises is reported as an error, also without stopping the run.

Machines here are shared and noisy, so every comparison measures its baseline
in the same run, and ratios (not absolute times) are what to read.
"""

from __future__ import annotations

import math
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.env import BenchEnv


class NotAvailable(Exception):
    """The feature a measurement needs is not there (yet)."""


class Skipped(Exception):
    """Not measured in this mode (`--quick` runs small images only, say)."""


Metrics = dict[str, float]
MeasureFn = Callable[["BenchEnv"], Metrics]


@dataclass
class Measurement:
    group: str
    name: str
    fn: MeasureFn
    doc: str

    @property
    def key(self) -> str:
        return f"{self.group}.{self.name}"


@dataclass
class Result:
    key: str
    group: str
    status: str  # "ok", "unavailable", "skipped" or "error"
    metrics: Metrics = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "group": self.group,
            "status": self.status,
            "seconds": round(self.seconds, 3),
        }
        if self.metrics:
            out["metrics"] = self.metrics
        if self.reason:
            out["reason"] = self.reason
        return out


# Registration order is run order: baselines and cheap things first.
REGISTRY: list[Measurement] = []
GROUPS = ("api", "memory", "runc", "shim", "start", "pull", "lifecycle", "scale", "containerd")


def measurement(group: str, name: str) -> Callable[[MeasureFn], MeasureFn]:
    assert group in GROUPS, group

    def register(fn: MeasureFn) -> MeasureFn:
        REGISTRY.append(Measurement(group, name, fn, (fn.__doc__ or "").strip()))
        return fn

    return register


def measurement_each(
    group: str, values: Sequence[Any], name: str, doc: str, fn: Callable[[BenchEnv, Any], Metrics]
) -> None:
    """One measurement per value, `fn(env, value)`, named and described by
    `name` and `doc` formatted with the value."""
    assert group in GROUPS, group
    for value in values:

        def run(env: BenchEnv, value: Any = value) -> Metrics:
            return fn(env, value)

        REGISTRY.append(Measurement(group, name.format(value), run, doc.format(value)))


def run_one(m: Measurement, env: BenchEnv) -> Result:
    started = time.monotonic()
    env.running.add(m.key)  # a baseline that (indirectly) needs this one gets NotAvailable
    try:
        metrics = m.fn(env)
        result = Result(m.key, m.group, "ok", {k: _round(v) for k, v in metrics.items()})
    except NotAvailable as e:
        result = Result(m.key, m.group, "unavailable", reason=f"not available yet: {e}")
    except Skipped as e:
        result = Result(m.key, m.group, "skipped", reason=str(e))
    except Exception as e:  # noqa: BLE001 (one broken measurement must not stop the run)
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        result = Result(m.key, m.group, "error", reason=tb)
    result.seconds = time.monotonic() - started
    env.running.discard(m.key)
    env.results[m.key] = result
    return result


def _round(v: float) -> float:
    return float(f"{v:.4g}") if math.isfinite(v) else v


# -- statistics ---------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sample."""
    if not values:
        raise ValueError("empty sample")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(seconds: Sequence[float], prefix: str = "", tail: int = 99) -> Metrics:
    """median and p<tail> of durations given in seconds, as milliseconds."""
    pre = f"{prefix}_" if prefix else ""
    return {
        f"{pre}median_ms": statistics.median(seconds) * 1000,
        f"{pre}p{tail}_ms": percentile(seconds, tail) * 1000,
    }


class Samples(dict[str, list[float]]):
    """Seconds per phase over the runs of a measurement, phases in first-seen order."""

    def add(self, **phases: float) -> None:
        for name, seconds in phases.items():
            self.setdefault(name, []).append(seconds)

    def ms(self) -> Metrics:
        """`<phase>_median_ms` and `<phase>_p90_ms` of every phase."""
        out: Metrics = {}
        for name, values in self.items():
            out.update(summary_ms(values, name, tail=90))
        return out


def timed(fn: Callable[[], Any]) -> float:
    """Wall time of one call, in seconds."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def metric(env: BenchEnv, key: str, name: str) -> float:
    """A metric of measurement `key` in this run (run now if it was not), or NotAvailable.

    Baselines are always measured in the same run as what they are compared
    with: a noisy shared machine makes figures from another run incomparable.
    """
    if key not in env.results and key not in env.running:
        for m in REGISTRY:
            if m.key == key:
                run_one(m, env)
    r = env.results.get(key)
    if r is None or r.status != "ok" or name not in r.metrics:
        why = r.reason if r is not None and r.reason else "not run"
        raise NotAvailable(f"needs {key}.{name} ({why})")
    return r.metrics[name]


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan
