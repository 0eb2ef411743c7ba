"""Unary-call load from client processes, and the raw-gRPC baseline server.

Each client is a worker process with its own channel; it sends pre-serialized
request bytes and does not parse the answer, so client-side cost is the same
whichever server it talks to. Workers start calling at one shared
CLOCK_MONOTONIC instant (system-wide on Linux), which lines the clients up
without a cross-process barrier.

`EchoServer` is the baseline: a grpc.aio server on a unix socket, in a thread
of the benchmark process, answering one prebuilt response. pyctr's latency
divided by its latency is what pyctr adds over gRPC itself.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc

from benchmarks.core import NotAvailable, percentile, summary_ms

WARMUP = 20


def start_delay(clients: int) -> float:
    """Seconds for every worker to get its task, connect and warm up."""
    return 0.2 + 0.1 * clients


def call_loop(task: tuple[str, str, bytes, int, float]) -> dict[str, Any]:
    """Worker: `n` sequential calls of `method` on its own channel."""
    target, method, request, n, start_at = task
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            for _ in range(WARMUP):
                call(request, timeout=30)
        except grpc.RpcError as e:
            return {"error": e.code().name, "details": e.details()}
        delay = start_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        latencies = []
        first = time.monotonic()
        for _ in range(n):
            t0 = time.perf_counter()
            call(request, timeout=30)
            latencies.append(time.perf_counter() - t0)
        return {"latencies": latencies, "first": first, "last": time.monotonic()}


@dataclass
class Load:
    latencies: list[float]
    wall: float

    def __add__(self, other: Load) -> Load:
        return Load(self.latencies + other.latencies, self.wall + other.wall)

    def metrics(self, prefix: str) -> dict[str, float]:
        out = summary_ms(self.latencies, prefix)
        out[f"{prefix}_p90_ms"] = percentile(self.latencies, 90) * 1000
        if self.wall > 0:
            out[f"{prefix}_calls_per_s"] = len(self.latencies) / self.wall
        return out


def run_load(pool: Any, target: str, method: str, request: bytes, clients: int, n: int) -> Load:
    start_at = time.monotonic() + start_delay(clients)
    tasks = [(target, method, request, n, start_at)] * clients
    answers = pool.map(call_loop, tasks, chunksize=1)
    for a in answers:
        if "error" in a:
            if a["error"] == "UNIMPLEMENTED":
                raise NotAvailable(f"{method} answers UNIMPLEMENTED ({a['details']})")
            raise RuntimeError(f"{method}: {a['error']}: {a['details']}")
    latencies = [x for a in answers for x in a["latencies"]]
    wall = max(a["last"] for a in answers) - min(a["first"] for a in answers)
    return Load(latencies, wall)


class EchoServer:
    """grpc.aio on a unix socket answering `/bench.Echo/Echo` with fixed bytes."""

    method = "/bench.Echo/Echo"

    def __init__(self, path: str, response: bytes) -> None:
        self.target = f"unix:{path}"
        self.response = response
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EchoServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("echo server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        response = self.response

        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return response

        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(self.target)
        await server.start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await server.stop(1)


def serve_main(path: str) -> None:
    """Run an EchoServer until SIGTERM (the memory baseline's process)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the server thread inherits it
    with EchoServer(path, b""):
        signal.sigwait({signal.SIGTERM})
