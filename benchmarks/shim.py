"""pyctr-shim on its own: what one container costs through the shim, no daemon.

The daemon's own shim client (pyctr.daemon.runtime.shim_launch) drives shims on the
same busybox bundles as the bare runc figures, so the ratios show what the
shim adds: its start-up, its socket round trips, and its memory, paid once
per container. containerd's figure for the same thing is
containerd-shim-runc-v2's PSS (containerd.n_containers).

Shims are forked from a zygote, as pyctrd does (`start_stop`, `memory`; the
zygote's own PSS is shared out among the shims), and, for comparison in the
same run, launched as a fresh Python process each (`*_launched`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

from benchmarks import procinfo
from benchmarks.core import Metrics, NotAvailable, Samples, measurement, metric, ratio
from benchmarks.cri import SLEEPER
from benchmarks.env import BenchEnv
from benchmarks.runc_bare import Runc


def _client() -> Any:
    """The module with ShimOptions, spawn_shim and read_shim_pid (older builds: shim_client)."""
    try:
        from pyctr.daemon.runtime import shim_launch

        return shim_launch
    except ImportError:
        pass
    try:
        from pyctr.daemon.runtime import shim_client  # type: ignore[attr-defined]
    except ImportError as e:
        raise NotAvailable(f"pyctr.daemon.runtime.shim_launch: {e}") from None
    return shim_client


class Shims:
    def __init__(self, env: BenchEnv, zygote: bool) -> None:
        self.sc = _client()
        self.runc = Runc(env)
        self.state = env.path("shims")
        self.clients: list[Any] = []
        self.zygote: Any = None
        if zygote:
            from pyctr.daemon.runtime.zygote import ShimZygote

            self.zygote = ShimZygote(self.state / "zygote")

    async def spawn(self) -> Any:
        if self.zygote is not None and not await self.zygote.start():
            raise RuntimeError("the shim zygote did not start")
        cid = self.runc.new_id()
        opts = self.sc.ShimOptions(
            id=cid,
            bundle=str(self.runc.bundle(SLEEPER)),
            state_dir=str(self.state / cid),
            runc_root=str(self.runc.root),
        )
        # No zygote argument for launched shims: they then also run against
        # builds from before the zygote (for before/after comparisons).
        kw = {} if self.zygote is None else {"zygote": self.zygote}
        shim = await self.sc.spawn_shim(opts, **kw)
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
        if self.zygote is not None:
            await self.zygote.close()

    def pids(self) -> list[int]:
        """The live shims' PIDs (launched or forked, found by their pid files)."""
        found = (self.sc.read_shim_pid(d) for d in self.state.iterdir() if d.is_dir())
        return sorted(pid for pid in found if pid is not None)


async def _start_stop(env: BenchEnv, zygote: bool) -> Samples:
    shims = Shims(env, zygote)
    phases = Samples()
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
                phases.add(
                    create=t1 - t0, start=t2 - t1, total=t2 - t0, stop=t3 - t2, delete=t4 - t3
                )
    finally:
        await shims.remove_all()
    return phases


@measurement("shim", "start_stop")
def start_stop(env: BenchEnv) -> Metrics:
    """spawn (zygote fork + runc create), start, SIGKILL+wait, delete; vs bare runc."""
    return _start_stop_metrics(env, zygote=True)


@measurement("shim", "start_stop_launched")
def start_stop_launched(env: BenchEnv) -> Metrics:
    """As start_stop, each shim launched as a new Python process (no zygote)."""
    return _vs_zygote(env, _start_stop_metrics(env, zygote=False), "start_stop", "total_median_ms")


def _vs_zygote(env: BenchEnv, out: Metrics, forked: str, name: str) -> Metrics:
    """`out` of launched shims, with metric `name` of zygote-forked ones (shim.<forked>) to it."""
    with contextlib.suppress(NotAvailable):
        theirs = metric(env, f"shim.{forked}", name)
        out["zygote_vs_launched_ratio"] = ratio(theirs, out[name])
    return out


def _start_stop_metrics(env: BenchEnv, zygote: bool) -> Metrics:
    out = asyncio.run(_start_stop(env, zygote)).ms()
    runc_start = metric(env, "runc.run_detached", "start_median_ms")
    runc_delete = metric(env, "runc.run_detached", "delete_median_ms")
    out["start_vs_runc_ratio"] = ratio(out["total_median_ms"], runc_start)
    removal = out["stop_median_ms"] + out["delete_median_ms"]
    out["remove_vs_runc_ratio"] = ratio(removal, runc_delete)
    return out


async def _memory(env: BenchEnv, n: int, zygote: bool) -> Metrics:
    shims = Shims(env, zygote)
    try:
        for _ in range(n):
            shim = await shims.spawn()
            await shim.start()
        await asyncio.sleep(1.0)
        pids = shims.pids()
        if len(pids) != n:
            raise RuntimeError(f"started {n} shims, found {len(pids)} shim processes")
        rss, pss = procinfo.memory_mib(pids)
        out: Metrics = {"shims": n, "rss_per_container_mib": rss / n}
        if shims.zygote is not None:
            # The zygote is paid once per node: shared out among the shims.
            _, zygote_pss = procinfo.memory_mib([shims.zygote.pid])
            out["shim_only_pss_per_container_mib"] = pss / n
            out["zygote_pss_mib"] = zygote_pss
            pss += zygote_pss
        out["pss_per_container_mib"] = pss / n
        return out
    finally:
        await shims.remove_all()


@measurement("shim", "memory")
def memory(env: BenchEnv) -> Metrics:
    """RSS/PSS of N zygote-forked shims with sleeping containers; vs containerd-shim-runc-v2."""
    return _memory_metrics(env, zygote=True)


@measurement("shim", "memory_launched")
def memory_launched(env: BenchEnv) -> Metrics:
    """As memory, each shim launched as a new Python process (no zygote)."""
    out = _memory_metrics(env, zygote=False)
    return _vs_zygote(env, out, "memory", "pss_per_container_mib")


def _memory_metrics(env: BenchEnv, zygote: bool) -> Metrics:
    env.close_pool()
    out = asyncio.run(_memory(env, env.options.containers, zygote))
    with contextlib.suppress(NotAvailable):
        theirs = metric(env, "containerd.n_containers", "shim_pss_per_container_mib")
        out["containerd_pss_per_container_mib"] = theirs
        out["pss_vs_containerd_ratio"] = ratio(out["pss_per_container_mib"], theirs)
    return out
