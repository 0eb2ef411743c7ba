"""`pyctr top`: a live view of the pods' containers: CPU, memory, disk I/O.

Everything comes from the CRI stats and metrics RPCs, as the kubelet reads
it: CPU from ListContainerStats (the daemon's rate between two samples),
memory as the kubelet's working set, I/O rates from the cAdvisor byte
counters of ListPodSandboxMetrics between two refreshes.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass

from pyctr.ctl.client import Client
from pyctr.ctl.output import print_json, print_table
from pyctr.proto import cri_pb2 as cri
from pyctr.proto import cri_pb2_grpc

MiB = 1 << 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("top", help="live CPU, memory and I/O of the pods' containers")
    p.add_argument("-d", "--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="one table (two samples), then exit")
    p.add_argument("-n", "--namespace", help="only pods of this Kubernetes namespace")
    p.set_defaults(func=top)


@dataclass
class Row:
    id: str
    name: str
    pod: str
    namespace: str
    cpu_percent: float
    memory_bytes: int
    writable_bytes: int
    read_bytes_per_second: float
    write_bytes_per_second: float


@dataclass
class Sample:
    at: float
    stats: dict[str, cri.ContainerStats]
    io: dict[str, tuple[int, int]]  # container -> (read, written) bytes so far
    names: dict[str, tuple[str, str, str]]  # container -> (name, pod, namespace)


def sample(client: Client, namespace: str | None) -> Sample:
    rt = cri_pb2_grpc.RuntimeServiceStub(client.channel)
    pods = {
        p.id: p
        for p in rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=client.timeout).items
    }
    running = cri.ContainerFilter(state=cri.ContainerStateValue(state=cri.CONTAINER_RUNNING))
    names = {}
    for c in rt.ListContainers(
        cri.ListContainersRequest(filter=running), timeout=client.timeout
    ).containers:
        pod = pods.get(c.pod_sandbox_id)
        if pod is not None and (not namespace or pod.metadata.namespace == namespace):
            names[c.id] = (c.metadata.name, pod.metadata.name, pod.metadata.namespace)
    listed = rt.ListContainerStats(cri.ListContainerStatsRequest(), timeout=client.timeout).stats
    io: dict[str, tuple[int, int]] = {}
    metrics = rt.ListPodSandboxMetrics(cri.ListPodSandboxMetricsRequest(), timeout=client.timeout)
    for pod_metrics in metrics.pod_metrics:
        for cm in pod_metrics.container_metrics:
            read = sum(
                m.value.value for m in cm.metrics if m.name == "container_fs_reads_bytes_total"
            )
            wrote = sum(
                m.value.value for m in cm.metrics if m.name == "container_fs_writes_bytes_total"
            )
            io[cm.container_id] = (read, wrote)
    stats = {s.attributes.id: s for s in listed if s.attributes.id in names}
    return Sample(time.monotonic(), stats, io, names)


def rows(before: Sample, now: Sample) -> list[Row]:
    out = []
    span = max(now.at - before.at, 1e-6)
    for cid, s in now.stats.items():
        name, pod, namespace = now.names[cid]
        r0, w0 = before.io.get(cid, now.io.get(cid, (0, 0)))
        r1, w1 = now.io.get(cid, (0, 0))
        out.append(Row(
            cid, name, pod, namespace,
            s.cpu.usage_nano_cores.value / 1e7,  # nano-cores -> percent of one core
            s.memory.working_set_bytes.value, s.writable_layer.used_bytes.value,
            max(0, r1 - r0) / span, max(0, w1 - w0) / span,
        ))  # fmt: skip
    return sorted(out, key=lambda r: (-r.cpu_percent, -r.memory_bytes))


def _table(found: list[Row]) -> tuple[list[str], list[list[str]]]:
    headers = [
        "CONTAINER",
        "NAME",
        "POD",
        "NAMESPACE",
        "CPU %",
        "MEMORY",
        "WRITABLE",
        "READ/s",
        "WRITE/s",
    ]
    return headers, [
        [r.id[:13], r.name, r.pod, r.namespace, f"{r.cpu_percent:.1f}",
         f"{r.memory_bytes / MiB:.1f} MiB", f"{r.writable_bytes / MiB:.1f} MiB",
         f"{r.read_bytes_per_second / MiB:.2f} MiB", f"{r.write_bytes_per_second / MiB:.2f} MiB"]
        for r in found
    ]  # fmt: skip


def top(client: Client, opts: argparse.Namespace) -> int:
    interval = max(0.2, opts.interval)
    before = sample(client, opts.namespace)
    time.sleep(interval)
    now = sample(client, opts.namespace)
    if opts.once or opts.output == "json":
        found = rows(before, now)
        if opts.output == "json":
            print_json([asdict(r) for r in found])
        else:
            print_table(*_table(found))
        return 0
    from rich.live import Live
    from rich.table import Table

    def render(found: list[Row]) -> Table:
        headers, body = _table(found)
        table = Table(*headers, box=None, title=f"pyctr top (every {interval:g}s, Ctrl-C ends)")
        for row in body:
            table.add_row(*row)
        return table

    try:
        with Live(render(rows(before, now)), auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                before, now = now, sample(client, opts.namespace)
                live.update(render(rows(before, now)), refresh=True)
    except KeyboardInterrupt:
        return 0
