"""Container start latency through pyctr, against bare runc on the same busybox.

CRI, per phase as the kubelet calls them: RunPodSandbox, CreateContainer,
StartContainer (image pulled beforehand; teardown not timed). The target is
pod+container start median at most 2x `runc run -d` (`vs_runc_ratio`).

`pyctr run --rm IMAGE true` is the person-at-a-terminal path; it includes the
Python client's start-up, so `pyctr version` is timed alongside.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.core import Metrics, NotAvailable, Samples, metric, ratio, summary_ms
from benchmarks.core import measurement as measure
from benchmarks.cri import SLEEPER
from benchmarks.env import BenchEnv

START_TARGET_RATIO = 2.0


@measure("start", "cri_pod_container")
def cri_pod_container(env: BenchEnv) -> Metrics:
    """RunPodSandbox + CreateContainer + StartContainer, per phase."""
    client, ref = env.cri_with_image("small")
    samples = Samples()
    for i in range(env.options.runs + 1):
        phases = client.time_pod_start(client.pod_config(f"start{i}"), ref)
        if i:  # the first run warms caches (and pulls the pause image)
            samples.add(**phases)
    out = samples.ms()
    runc_ms = metric(env, "runc.run_detached", "start_median_ms")
    out["runc_start_median_ms"] = runc_ms
    out["vs_runc_ratio"] = ratio(out["total_median_ms"], runc_ms)
    out["target_vs_runc_max"] = START_TARGET_RATIO
    return out


def _native(env: BenchEnv, method: str, request: Any) -> Any:
    import grpc

    from pyctr.proto import containers_pb2_grpc

    stub = containers_pb2_grpc.ContainersStub(env.cri().channel)
    try:
        return getattr(stub, method)(request, timeout=120)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise NotAvailable(f"pyctr.v1.Containers/{method} answers UNIMPLEMENTED") from None
        raise


@measure("start", "native")
def native(env: BenchEnv) -> Metrics:
    """Native API Create, Start, Stop, Remove of a container (no pod), per phase."""
    from pyctr.proto import containers_pb2 as pb

    ref, _ = env.image("small")
    env.cri().pull(ref)
    samples = Samples()
    for i in range(env.options.runs + 1):
        create = pb.ContainerCreateRequest(image=ref, command=SLEEPER, network="host")
        t0 = time.perf_counter()
        cid = _native(env, "Create", create).container.id
        try:
            t1 = time.perf_counter()
            _native(env, "Start", pb.ContainerStartRequest(container=cid))
            t2 = time.perf_counter()
            _native(env, "Stop", pb.ContainerStopRequest(container=cid, timeout=10))
            t3 = time.perf_counter()
        finally:
            t4 = time.perf_counter()
            _native(env, "Remove", pb.ContainerRemoveRequest(container=cid, force=True))
            t5 = time.perf_counter()
        if i:
            samples.add(create=t1 - t0, start=t2 - t1, total=t2 - t0, stop=t3 - t2, remove=t5 - t4)
    out = samples.ms()
    runc_ms = metric(env, "runc.run_detached", "start_median_ms")
    out["vs_runc_ratio"] = ratio(out["total_median_ms"], runc_ms)
    return out


@measure("start", "pyctr_run")
def pyctr_run(env: BenchEnv) -> Metrics:
    """`pyctr run --rm IMAGE true` (CLI, client start-up included)."""
    daemon = env.daemon()
    probe = daemon.ctl("run", "--help")
    if probe.returncode != 0:
        raise NotAvailable("the pyctr client has no `run` command")
    ref, _ = env.image("small")
    if daemon.ctl("images", "pull", ref).returncode != 0:
        env.cri().pull(ref)

    def run() -> float:
        t0 = time.perf_counter()
        res = daemon.ctl("run", "--rm", ref, "true")
        took = time.perf_counter() - t0
        if res.returncode != 0:
            raise NotAvailable(f"pyctr run failed ({res.returncode}): {res.stderr.strip()[-300:]}")
        return took

    def version() -> float:
        t0 = time.perf_counter()
        daemon.ctl("version", check=True)
        return time.perf_counter() - t0

    run()
    runs = [run() for _ in range(env.options.runs)]
    versions = [version() for _ in range(env.options.runs)]
    out = {**summary_ms(runs, "run", tail=90), **summary_ms(versions, "client_version", tail=90)}
    runc_ms = metric(env, "runc.run_true", "median_ms")
    out["runc_run_median_ms"] = runc_ms
    out["vs_runc_ratio"] = ratio(out["run_median_ms"], runc_ms)
    return out
