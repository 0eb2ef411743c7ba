"""The daemon with N running pods (one sleeping container each): API and memory.

The pods are created once (`BenchEnv.populate`) in the shared daemon and
kept for every figure here; the memory figure, the last, removes them and
times that. N is `--containers` (default 50, 5 with --quick).
"""

from __future__ import annotations

import time

from benchmarks import procinfo
from benchmarks.api import RUNTIME, compare
from benchmarks.core import Metrics, NotAvailable, measurement, metric, ratio, timed
from benchmarks.env import BenchEnv
from pyctr.proto import cri_pb2 as cri


def shim_pids(env: BenchEnv) -> list[int]:
    """pyctr-shim processes of the shared daemon (their command line names its dirs)."""
    return procinfo.find_processes("shim", str(env.daemon().base))


@measurement("api", "version_n_containers")
def version_n(env: BenchEnv) -> Metrics:
    """CRI Version with N pods running, one client."""
    n = len(env.populate(env.options.containers))
    req = cri.VersionRequest(version="0.1.0")
    return {"containers": n, **compare(env, RUNTIME + "Version", req, 1, env.options.api_calls)}


@measurement("api", "list_containers_n")
def list_containers_n(env: BenchEnv) -> Metrics:
    """CRI ListContainers with N pods running, one client."""
    n = len(env.populate(env.options.containers))
    req = cri.ListContainersRequest()
    calls = env.options.api_calls
    return {"containers": n, **compare(env, RUNTIME + "ListContainers", req, 1, calls)}


@measurement("api", "container_status_n")
def container_status_n(env: BenchEnv) -> Metrics:
    """CRI ContainerStatus of one container among N, one client."""
    pods = env.populate(env.options.containers)
    req = cri.ContainerStatusRequest(container_id=pods[0][1])
    calls = env.options.api_calls
    return {"containers": len(pods), **compare(env, RUNTIME + "ContainerStatus", req, 1, calls)}


@measurement("memory", "daemon_n_containers")
def daemon_n(env: BenchEnv) -> Metrics:
    """pyctrd and shim RSS/PSS with N pods running; then removes them (timed)."""
    n = len(env.populate(env.options.containers))
    env.close_pool()
    time.sleep(1.0)
    daemon = env.daemon()
    rss, pss = procinfo.memory_mib([daemon.pid])
    shims = shim_pids(env)
    shim_rss, shim_pss = procinfo.memory_mib(shims)
    out: Metrics = {
        "containers": n,
        "pyctrd_rss_mib": rss,
        "pyctrd_pss_mib": pss,
        "shims": len(shims),
    }
    if shims:  # none found: the shim's command line changed, or no shims (yet)
        out["shim_pss_per_pod_mib"] = shim_pss / n
        out["shim_pss_per_shim_mib"] = shim_pss / len(shims)
        out["shim_rss_per_shim_mib"] = shim_rss / len(shims)
    try:
        idle = metric(env, "memory.daemon_idle", "pyctrd_pss_mib")
        out["pyctrd_pss_growth_per_container_kib"] = (pss - idle) * 1024 / n
    except NotAvailable:
        pass
    out["remove_all_s"] = timed(env.depopulate)
    out["remove_per_pod_ms"] = ratio(out["remove_all_s"] * 1000, n)
    return out
