"""Stop and remove latency, and how start cost and memory grow with N pods.

Stop is graceful: the container traps SIGTERM and exits at once, so the
figure is the runtime's path (signal, exit noticed, status recorded), not a
grace period. The baseline is `runc delete -f` from runc.run_detached.

Scale runs on a fresh daemon for each N: N pods of one sleeping container,
created one after another as a kubelet would; `growth_ratio` is the mean
start time of the last tenth over the first tenth (1.0 = no slowdown as the
node fills), then everything is removed (timed).
"""

from __future__ import annotations

import statistics
import time

from benchmarks import procinfo
from benchmarks.core import (
    Metrics,
    NotAvailable,
    Samples,
    Skipped,
    measurement,
    measurement_each,
    metric,
    ratio,
    timed,
)
from benchmarks.env import BenchEnv

SCALES = (10, 50, 100)


@measurement("lifecycle", "stop_remove")
def stop_remove(env: BenchEnv) -> Metrics:
    """StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox, per phase."""
    client, ref = env.cri_with_image("small")
    samples = Samples()
    for i in range(env.options.runs + 1):
        pod_id, cid = client.pod_with_container(ref, f"stop{i}")
        try:
            t0 = time.perf_counter()
            client.stop_container(cid, timeout=10)
            t1 = time.perf_counter()
            client.remove_container(cid)
            t2 = time.perf_counter()
            client.stop_pod(pod_id)
            t3 = time.perf_counter()
            client.remove_pod(pod_id)
            t4 = time.perf_counter()
        except BaseException:
            client.remove_pod_fully(pod_id)
            raise
        if i:
            samples.add(
                stop_container=t1 - t0,
                remove_container=t2 - t1,
                stop_pod=t3 - t2,
                remove_pod=t4 - t3,
                total=t4 - t0,
            )
    out = samples.ms()
    container_ms = out["stop_container_median_ms"] + out["remove_container_median_ms"]
    try:
        runc_ms = metric(env, "runc.run_detached", "delete_median_ms")
        out["runc_delete_median_ms"] = runc_ms
        out["container_vs_runc_ratio"] = ratio(container_ms, runc_ms)
    except NotAvailable:
        pass
    return out


def scale(env: BenchEnv, n: int) -> Metrics:
    if env.options.quick and n != SCALES[0]:
        raise Skipped(f"--quick runs scale.n{SCALES[0]} only")
    ref, _ = env.image("small")
    env.image("pause")
    env.close_pool()
    with env.fresh_daemon() as (daemon, client):
        client.pull(ref)
        pods: list[str] = []
        starts: list[float] = []
        t_all = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            pod_id, _ = client.pod_with_container(ref, f"s{i}")
            starts.append(time.perf_counter() - t0)
            pods.append(pod_id)
        total = time.perf_counter() - t_all
        time.sleep(1.0)
        shims = procinfo.find_processes("shim", str(daemon.base))
        _, shim_pss = procinfo.memory_mib(shims)
        _, daemon_pss = procinfo.memory_mib([daemon.pid])
        removes = []
        for pod_id in pods:
            removes.append(timed(lambda: client.remove_pod_fully(pod_id)))  # noqa: B023
    tenth = max(n // 10, 1)
    out = {
        "start_total_s": total,
        "start_per_pod_median_ms": statistics.median(starts) * 1000,
        "growth_ratio": ratio(statistics.mean(starts[-tenth:]), statistics.mean(starts[:tenth])),
        "shims": len(shims),
        "pyctrd_pss_mib": daemon_pss,
        "remove_total_s": sum(removes),
        "remove_per_pod_median_ms": statistics.median(removes) * 1000,
    }
    if shims:  # a pod's infra container may have a shim of its own
        out["shim_pss_per_pod_mib"] = shim_pss / n
        out["shim_pss_per_shim_mib"] = shim_pss / len(shims)
    return out


measurement_each(
    "scale",
    SCALES,
    "n{}",
    "{} pods one after another on a fresh daemon: time, growth, PSS, removal.",
    scale,
)
