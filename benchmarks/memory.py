"""Daemon memory: RSS and PSS of pyctrd, next to a bare Python gRPC server.

The baseline is a Python process that imports grpc and serves one method on
a unix socket: what any Python gRPC daemon costs before doing anything.
PSS depends on what else shares the pages (other Python processes), so the
client pool is stopped first and RSS is reported alongside.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks import procinfo
from benchmarks.core import Metrics, measurement, ratio
from benchmarks.env import BenchEnv

REPO = Path(__file__).resolve().parents[1]
SETTLE = 1.0  # seconds after start-up before reading memory


def grpc_baseline_memory(env: BenchEnv) -> tuple[float, float]:
    sock = env.path("echo") / "echo.sock"
    code = f"from benchmarks.grpc_load import serve_main; serve_main({str(sock)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the baseline gRPC server did not start")
            time.sleep(0.05)
        time.sleep(SETTLE)
        return procinfo.memory_mib([proc.pid])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@measurement("memory", "daemon_idle")
def daemon_idle(env: BenchEnv) -> Metrics:
    """pyctrd just started, no containers; vs a bare grpc.aio Python server."""
    env.close_pool()
    with env.fresh_daemon() as (daemon, _):
        time.sleep(SETTLE)
        rss, pss = procinfo.memory_mib([daemon.pid])
    base_rss, base_pss = grpc_baseline_memory(env)
    return {
        "pyctrd_rss_mib": rss,
        "pyctrd_pss_mib": pss,
        "grpc_rss_mib": base_rss,
        "grpc_pss_mib": base_pss,
        "rss_ratio": ratio(rss, base_rss),
        "pss_ratio": ratio(pss, base_pss),
    }
