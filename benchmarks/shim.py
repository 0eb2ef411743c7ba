"""pyctr-shim on its own: what one container costs through the shim, no daemon.

The daemon's own shim client (pyctr.daemon.shim_client) drives shims on the
same busybox bundles as the bare runc figures, so the ratios show what the
shim adds: its start-up (a Python process), its socket round trips, and its
memory, paid once per container. containerd's figure for the same thing is
containerd-shim-runc-v2's PSS (containerd.n_containers).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import time
from typing import Any

from benchmarks import procinfo
from benchmarks.core import Metrics, NotAvailable, measurement, metric, percentile, ratio
from benchmarks.cri import SLEEPER
from benchmarks.env import BenchEnv
from benchmarks.runc_bare import Runc


def _client() -> Any:
    try:
        from pyctr.daemon import shim_client
    except ImportError as e:
        raise NotAvailable(f"pyctr.daemon.shim_client: {e}") from None
    return shim_client


class Shims:
    def __init__(self, env: BenchEnv) -> None:
        self.sc = _client()
        self.runc = Runc(env)
        self.state = env.path("shims")
        self.clients: list[Any] = []

    async def spawn(self) -> Any:
        cid = self.runc.new_id()
        opts = self.sc.ShimOptions(
            id=cid,
            bundle=str(self.runc.bundle(SLEEPER)),
            state_dir=str(self.state / cid),
            runc_root=str(self.runc.root),
        )
        shim = await self.sc.spawn_shim(opts)
        self.clients.append(shim)
        return shim

    async def remove(self, shim: Any, deleted: bool = False) -> None:
        if not deleted:
            with contextlib.suppress(Exception):
                await shim.delete(force=True)
        with contextlib.suppress(Exception):
            await shim.close()
        self.clients.remove(shim)

    async def remove_all(self) -> None:
        for shim in list(self.clients):
            await self.remove(shim)
        self.runc.delete_all()

    def pids(self) -> list[int]:
        return procinfo.find_processes("--serve", str(self.state))


async def _start_stop(env: BenchEnv) -> dict[str, list[float]]:
    shims = Shims(env)
    phases: dict[str, list[float]] = {
        "create": [],
        "start": [],
        "total": [],
        "stop": [],
        "delete": [],
    }
    try:
        for i in range(env.options.runs + 1):
            t0 = time.perf_counter()
            shim = await shims.spawn()  # the shim forks off, runc create
            t1 = time.perf_counter()
            await shim.start()
            t2 = time.perf_counter()
            await shim.kill(signal.SIGKILL)
            await shim.wait()
            t3 = time.perf_counter()
            await shim.delete()
            t4 = time.perf_counter()
            await shims.remove(shim, deleted=True)
            if i:  # the first run warms caches
                for name, v in (
                    ("create", t1 - t0),
                    ("start", t2 - t1),
                    ("total", t2 - t0),
                    ("stop", t3 - t2),
                    ("delete", t4 - t3),
                ):
                    phases[name].append(v)
    finally:
        await shims.remove_all()
    return phases


@measurement("shim", "start_stop")
def start_stop(env: BenchEnv) -> Metrics:
    """spawn (shim + runc create), start, SIGKILL+wait, delete; vs bare runc."""
    phases = asyncio.run(_start_stop(env))
    out: Metrics = {}
    for name, values in phases.items():
        out[f"{name}_median_ms"] = statistics.median(values) * 1000
        out[f"{name}_p90_ms"] = percentile(values, 90) * 1000
    runc_start = metric(env, "runc.run_detached", "start_median_ms")
    runc_delete = metric(env, "runc.run_detached", "delete_median_ms")
    out["start_vs_runc_ratio"] = ratio(out["total_median_ms"], runc_start)
    removal = out["stop_median_ms"] + out["delete_median_ms"]
    out["remove_vs_runc_ratio"] = ratio(removal, runc_delete)
    return out


async def _memory(env: BenchEnv, n: int) -> tuple[float, float, int]:
    shims = Shims(env)
    try:
        for _ in range(n):
            shim = await shims.spawn()
            await shim.start()
        await asyncio.sleep(1.0)
        pids = shims.pids()
        rss, pss = procinfo.memory_mib(pids)
        return rss, pss, len(pids)
    finally:
        await shims.remove_all()


@measurement("shim", "memory")
def memory(env: BenchEnv) -> Metrics:
    """RSS/PSS of N shims with sleeping containers; vs containerd-shim-runc-v2."""
    n = env.options.containers
    env.close_pool()
    rss, pss, found = asyncio.run(_memory(env, n))
    if found != n:
        raise RuntimeError(f"started {n} shims, found {found} shim processes")
    out: Metrics = {
        "shims": n,
        "pss_per_container_mib": pss / n,
        "rss_per_container_mib": rss / n,
    }
    with contextlib.suppress(NotAvailable):
        theirs = metric(env, "containerd.n_containers", "shim_pss_per_container_mib")
        out["containerd_pss_per_container_mib"] = theirs
        out["pss_vs_containerd_ratio"] = ratio(out["pss_per_container_mib"], theirs)
    return out
