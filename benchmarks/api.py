"""CRI API latency, each figure next to a raw-gRPC baseline measured the same way.

For every call: pyctrd answering it, then `EchoServer` answering with the very
bytes pyctrd sent (same response size), from the same client processes.
`*_ratio` = pyctr / baseline. The CRI target is Version p99 under 16
concurrent clients below 5 ms (reported as `pyctr_p99_ms`).
"""

from __future__ import annotations

from typing import Any

import grpc

from benchmarks.core import Metrics, NotAvailable, measurement, ratio
from benchmarks.env import CLIENTS, BenchEnv
from benchmarks.grpc_load import EchoServer, Load, run_load
from pyctr.proto import cri_pb2 as cri

RUNTIME = "/runtime.v1.RuntimeService/"
VERSION_TARGET_P99_MS = 5.0
ROUNDS = 4


def _answer(address: str, method: str, request: bytes) -> bytes:
    """One call, for the bytes the baseline will answer with."""
    with grpc.insecure_channel(f"unix:{address}") as channel:
        try:
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            return bytes(call(request, timeout=30))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise NotAvailable(f"{method} answers UNIMPLEMENTED ({e.details()})") from None
            raise


def compare(env: BenchEnv, method: str, request: Any, clients: int, calls: int) -> Metrics:
    """pyctr vs baseline for one unary call; `calls` per client in all.

    The two alternate in ROUNDS slices, so a burst of load from a neighbour on
    this shared machine lands on both rather than on one.
    """
    address = env.daemon().address
    request_bytes = request.SerializeToString()
    response = _answer(address, method, request_bytes)
    pool = env.pool()
    per_round = max(calls // ROUNDS, 1)
    mine, base = Load([], 0.0), Load([], 0.0)
    with EchoServer(str(env.path("echo") / "echo.sock"), response) as echo:
        for _ in range(ROUNDS):
            mine += run_load(pool, f"unix:{address}", method, request_bytes, clients, per_round)
            base += run_load(pool, echo.target, echo.method, request_bytes, clients, per_round)
    out = {**mine.metrics("pyctr"), **base.metrics("grpc")}
    for stat in ("median", "p99"):
        out[f"{stat}_ratio"] = ratio(out[f"pyctr_{stat}_ms"], out[f"grpc_{stat}_ms"])
    return out


@measurement("api", "version")
def version(env: BenchEnv) -> Metrics:
    """CRI Version, one client, sequential calls."""
    req = cri.VersionRequest(version="0.1.0")
    return compare(env, RUNTIME + "Version", req, 1, env.options.api_calls)


@measurement("api", f"version_{CLIENTS}_clients")
def version_concurrent(env: BenchEnv) -> Metrics:
    """CRI Version from 16 client processes at once (target: p99 < 5 ms)."""
    req = cri.VersionRequest(version="0.1.0")
    out = compare(env, RUNTIME + "Version", req, CLIENTS, env.options.api_calls_per_client)
    out["target_p99_ms"] = VERSION_TARGET_P99_MS
    return out


@measurement("api", "list_containers_empty")
def list_containers_empty(env: BenchEnv) -> Metrics:
    """CRI ListContainers with no containers, one client."""
    if env.populated:
        raise NotAvailable("the shared daemon already has containers")
    req = cri.ListContainersRequest()
    return compare(env, RUNTIME + "ListContainers", req, 1, env.options.api_calls)
