"""The daemon's own Prometheus metrics, on `[metrics] address` (off by default).

    GET http://127.0.0.1:1338/metrics

Per-RPC latency and outcome, pulls (per layer bytes and seconds), garbage
collection, NRI plugin calls (by plugin, method, result) and plugins
connected, and the containers, pods and shims the daemon keeps, counted at
scrape time from the records (no bookkeeping on the hot path but one
histogram observation per call). Names and labels follow Prometheus'
conventions: a `pyctr_` prefix, base units (seconds, bytes), `_total` for
counters. The endpoint has no authentication: keep it on a loopback address.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pyctr.daemon.errors import InvalidArgument

if TYPE_CHECKING:
    from pyctr.daemon.context import Context

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

RPC_SECONDS = Histogram(
    "pyctr_grpc_request_duration_seconds",
    "Time pyctrd took to answer a gRPC call, by method.",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
RPC_CALLS = Counter(
    "pyctr_grpc_requests_total",
    "gRPC calls answered, by method and status code.",
    ["method", "code"],
    registry=REGISTRY,
)
PULLS = Counter(
    "pyctr_image_pulls_total", "Image pulls, by result (ok or failed).", ["result"],
    registry=REGISTRY,
)  # fmt: skip
LAYER_BYTES = Counter(
    "pyctr_image_pull_layer_bytes_total", "Bytes of image layers downloaded.", registry=REGISTRY
)
LAYER_SECONDS = Histogram(
    "pyctr_image_pull_layer_duration_seconds",
    "Time to download one image layer (layers already present are not counted).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
GC_RUNS = Counter("pyctr_gc_runs_total", "Garbage collections run.", registry=REGISTRY)
GC_FREED = Counter(
    "pyctr_gc_freed_bytes_total", "Bytes garbage collection gave back.", registry=REGISTRY
)
GC_SECONDS = Histogram(
    "pyctr_gc_duration_seconds", "Time one garbage collection took.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60), registry=REGISTRY,
)  # fmt: skip
NRI_CALLS = Counter(
    "pyctr_nri_plugin_requests_total",
    "Calls to NRI plugins, by plugin, method and result (ok, error, timeout, lost).",
    ["plugin", "method", "result"],
    registry=REGISTRY,
)
NRI_SECONDS = Histogram(
    "pyctr_nri_plugin_request_duration_seconds",
    "Time an NRI plugin took to answer, by method.",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2),
    registry=REGISTRY,
)


def observe_rpc(method: str, code: str, seconds: float) -> None:
    RPC_SECONDS.labels(method).observe(seconds)
    RPC_CALLS.labels(method, code).inc()


class RecordsCollector(Collector):
    """Containers and pods by kind and state, and live shims, read at scrape."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[GaugeMetricFamily]:
        runtime = getattr(self.ctx, "runtime", None)
        records = runtime.store.list() if runtime is not None else []
        by_state = Tally((r.TYPE, str(r.status)) for r in records)
        states = GaugeMetricFamily(
            "pyctr_containers",
            "Containers pyctrd keeps, by kind (native, cri, sandbox) and state.",
            labels=["kind", "state"],
        )
        for (kind, state), n in sorted(by_state.items()):
            states.add_metric([kind, state], n)
        yield states
        shims = GaugeMetricFamily("pyctr_shims", "Live shim processes (one per container).")
        if runtime is not None:
            shims.add_metric(
                [], sum(1 for r in records if runtime.shims.shim_pid(runtime.task_dir(r.id)))
            )
        yield shims
        nri = getattr(self.ctx, "nri", None)
        plugins = GaugeMetricFamily(
            "pyctr_nri_plugins", "NRI plugins connected and synchronized (getting events)."
        )
        plugins.add_metric([], len(nri.plugins) if nri is not None else 0)
        yield plugins


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InvalidArgument(f"metrics.address {address!r}: want host:port (e.g. 127.0.0.1:1338)")
    return host.strip("[]"), int(port)


class MetricsServer:
    def __init__(self, ctx: Context, address: str) -> None:
        self.host, self.port = parse_address(address)
        self.collector = RecordsCollector(ctx)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        REGISTRY.register(self.collector)
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            REGISTRY.unregister(self.collector)
            raise
        self._runner = runner
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            REGISTRY.unregister(self.collector)
