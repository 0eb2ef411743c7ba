"""CRI metrics: the cAdvisor series the kubelet serves on /metrics/cadvisor.

With PodAndContainerStatsFromCRI the kubelet stops running cAdvisor and asks
the runtime instead: ListMetricDescriptors once (name, help, label keys), then
ListPodSandboxMetrics at every scrape. Names and help texts are cAdvisor's, so
dashboards and alerts keep working. Every series carries the labels id (the
container's or sandbox's ID), name (the container's name; "POD" for the
pod-level series) and image; the kubelet appends namespace, pod and container
itself, so they must not be among ours. Values are whole numbers on the wire
(UInt64Value): seconds are truncated, as in CRI-O and containerd. Timestamps
are 0: everything is read live from the cgroup files and /proc.

A series is sent only where its counter exists (cgroup v2 has no memory
failcnt, v1 no memory.peak before the kernel keeps one); a running container
gets container series, a ready pod its own cgroup's series (when the kubelet
gave it a cgroup parent) and the network series of each interface in its
network namespace.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from pyctr.daemon.context import Context
from pyctr.daemon.cri import convert
from pyctr.daemon.cri.stats import CGROUP_ROOT, StatsCollector, net_dev
from pyctr.daemon.runtime.records import CriContainer, Sandbox
from pyctr.proto import cri_pb2 as cri
from pyctr.shim.cgroups import read_int, read_keyed, read_text

BASE_LABELS = ("id", "name", "image")
NS = 1_000_000_000
METRICS_CHUNK = 20  # pods per StreamPodSandboxMetrics message (~50 series per container)
UNLIMITED = 1 << 62  # at or above: "no limit" (cAdvisor reports such specs as 0)

Sample = dict[str, object]  # counter name -> int, or a dict for per-device counters
Values = list[tuple[tuple[str, ...], int]]  # (extra label values, value)


@dataclass(frozen=True)
class Series:
    name: str
    help: str
    values: Callable[[Sample], Values]
    labels: tuple[str, ...] = ()  # after BASE_LABELS
    counter: bool = False

    @property
    def descriptor(self) -> cri.MetricDescriptor:
        return cri.MetricDescriptor(
            name=self.name, help=self.help, label_keys=[*BASE_LABELS, *self.labels]
        )


def _one(key: str, scale: int = 1) -> Callable[[Sample], Values]:
    def values(s: Sample) -> Values:
        v = s.get(key)
        return [((), v // scale)] if isinstance(v, int) and v >= 0 else []

    return values


def _labelled(key: str, scale: int, *labels: str) -> Callable[[Sample], Values]:
    def values(s: Sample) -> Values:
        v = s.get(key)
        return [(labels, v // scale)] if isinstance(v, int) and v >= 0 else []

    return values


def _per(key: str, index: int) -> Callable[[Sample], Values]:
    """One value per device or interface: key maps a name to a tuple of counters."""

    def values(s: Sample) -> Values:
        found = s.get(key)
        if not isinstance(found, dict):
            return []
        return [((name,), counts[index]) for name, counts in sorted(found.items())]

    return values


def _failures(s: Sample) -> Values:
    out: Values = []
    for kind in ("pgfault", "pgmajfault"):
        for scope in ("container", "hierarchy"):
            v = s.get(f"{kind}_{scope}")
            if isinstance(v, int):
                out.append(((kind, scope), v))
    return out


def _limit(key: str) -> Callable[[Sample], Values]:
    def values(s: Sample) -> Values:
        v = s.get(key)
        if not isinstance(v, int):
            return []
        return [((), 0 if v < 0 or v >= UNLIMITED else v)]

    return values


CPU = (
    Series("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.",
           _one("cpu_user_ns", NS), counter=True),
    Series("container_cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds.",
           _one("cpu_system_ns", NS), counter=True),
    Series("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.",
           _labelled("cpu_usage_ns", NS, "total"),
           labels=("cpu",), counter=True),
    Series("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.",
           _one("cfs_periods"), counter=True),
    Series("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.",
           _one("cfs_throttled_periods"), counter=True),
    Series("container_cpu_cfs_throttled_seconds_total",
           "Total time duration the container has been throttled.",
           _one("cfs_throttled_ns", NS), counter=True),
)  # fmt: skip

MEMORY = (
    Series("container_memory_cache", "Number of bytes of page cache memory.", _one("mem_cache")),
    Series("container_memory_rss", "Size of RSS in bytes.", _one("mem_rss")),
    Series("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.",
           _one("mem_kernel")),
    Series("container_memory_mapped_file", "Size of memory mapped files in bytes.",
           _one("mem_mapped_file")),
    Series("container_memory_swap", "Container swap usage in bytes.", _one("mem_swap")),
    Series("container_memory_failcnt", "Number of memory usage hits limits",
           _one("mem_failcnt"), counter=True),
    Series("container_memory_usage_bytes",
           "Current memory usage in bytes, including all memory regardless of when it was accessed",
           _one("mem_usage")),
    Series("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes",
           _one("mem_max_usage")),
    Series("container_memory_working_set_bytes", "Current working set in bytes.",
           _one("mem_working_set")),
    Series("container_memory_total_active_file_bytes",
           "Current total active file in bytes.", _one("mem_active_file")),
    Series("container_memory_total_inactive_file_bytes",
           "Current total inactive file in bytes.", _one("mem_inactive_file")),
    Series("container_memory_failures_total", "Cumulative count of memory allocation failures.",
           _failures, labels=("failure_type", "scope"), counter=True),
    Series("container_oom_events_total", "Count of out of memory events observed for the container",
           _one("oom_kills"), counter=True),
)  # fmt: skip

PROCESSES = (
    Series("container_processes", "Number of processes running inside the container.",
           _one("processes")),
    Series("container_threads", "Number of threads running inside the container",
           _one("threads")),
    Series("container_threads_max",
           "Maximum number of threads allowed inside the container, infinity if value is zero",
           _limit("threads_max")),
)  # fmt: skip

SPEC = (
    Series("container_spec_cpu_period", "CPU period of the container.", _one("spec_cpu_period")),
    Series("container_spec_cpu_quota", "CPU quota of the container.", _one("spec_cpu_quota")),
    Series("container_spec_cpu_shares", "CPU share of the container.", _one("spec_cpu_shares")),
    Series("container_spec_memory_limit_bytes", "Memory limit for the container.",
           _limit("spec_memory_limit")),
    Series("container_spec_memory_reservation_limit_bytes",
           "Memory reservation limit for the container.", _limit("spec_memory_reservation")),
    Series("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container.",
           _limit("spec_swap_limit")),
    Series("container_start_time_seconds",
           "Start time of the container since unix epoch in seconds.", _one("started_at", NS)),
    Series("container_last_seen", "Last time a container was seen by the exporter",
           _one("now", NS)),
)  # fmt: skip

FILESYSTEM = (
    Series("container_fs_usage_bytes",
           "Number of bytes that are consumed by the container on this filesystem.",
           _per("fs", 0), labels=("device",)),
    Series("container_fs_reads_bytes_total", "Cumulative count of bytes read",
           _per("io", 0), labels=("device",), counter=True),
    Series("container_fs_writes_bytes_total", "Cumulative count of bytes written",
           _per("io", 1), labels=("device",), counter=True),
)  # fmt: skip

_NET = (  # (name suffix, help, index in a /proc/net/dev line's counters)
    ("receive_bytes_total", "Cumulative count of bytes received", 0),
    ("receive_packets_total", "Cumulative count of packets received", 1),
    ("receive_errors_total", "Cumulative count of errors encountered while receiving", 2),
    ("receive_packets_dropped_total", "Cumulative count of packets dropped while receiving", 3),
    ("transmit_bytes_total", "Cumulative count of bytes transmitted", 8),
    ("transmit_packets_total", "Cumulative count of packets transmitted", 9),
    ("transmit_errors_total", "Cumulative count of errors encountered while transmitting", 10),
    (
        "transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
        11,
    ),
)
NETWORK = tuple(
    Series(f"container_network_{suffix}", text, _per("net", i), labels=("interface",), counter=True)
    for suffix, text, i in _NET
)

CGROUP_SERIES = (*CPU, *MEMORY, *PROCESSES, *SPEC)
ALL = (*CGROUP_SERIES, *FILESYSTEM, *NETWORK)


# -- reading the counters ---------------------------------------------------


def _int(path: str) -> int | None:
    return read_int(path, unlimited=UNLIMITED)


def _lines(path: str) -> int | None:
    text = read_text(path)
    return None if text is None else len(text.split())


def _device(major_minor: str) -> str:
    """/dev/<name> of a block device number, as cAdvisor labels it."""
    for line in (read_text(f"/sys/dev/block/{major_minor}/uevent") or "").splitlines():
        if line.startswith("DEVNAME="):
            return "/dev/" + line.removeprefix("DEVNAME=")
    return major_minor


def _shares_of_weight(weight: int) -> int:
    # The inverse of the kubelet's and runc's shares -> weight conversion.
    return 2 + ((weight - 1) * 262142) // 9999


_V2_CPU_USEC = (  # cpu.stat's microsecond fields
    ("cpu_usage_ns", "usage_usec"),
    ("cpu_user_ns", "user_usec"),
    ("cpu_system_ns", "system_usec"),
    ("cfs_throttled_ns", "throttled_usec"),
)


def counters_v2(d: str) -> Sample:
    cpu = read_keyed(f"{d}/cpu.stat")
    mem = read_keyed(f"{d}/memory.stat")
    usage = _int(f"{d}/memory.current")
    s: Sample = {
        "mem_cache": mem.get("file"),
        "mem_rss": mem.get("anon"),
        "mem_kernel": mem.get("kernel"),
        "mem_mapped_file": mem.get("file_mapped"),
        "mem_swap": _int(f"{d}/memory.swap.current"),
        "mem_usage": usage,
        "mem_max_usage": _int(f"{d}/memory.peak"),
        "mem_active_file": mem.get("active_file"),
        "mem_inactive_file": mem.get("inactive_file"),
        "pgfault_container": mem.get("pgfault"),
        "pgfault_hierarchy": mem.get("pgfault"),
        "pgmajfault_container": mem.get("pgmajfault"),
        "pgmajfault_hierarchy": mem.get("pgmajfault"),
        "oom_kills": read_keyed(f"{d}/memory.events").get("oom_kill"),
        "processes": _int(f"{d}/pids.current"),
        "threads": _lines(f"{d}/cgroup.threads"),
        "threads_max": _int(f"{d}/pids.max"),
        "spec_memory_limit": _int(f"{d}/memory.max"),
        "spec_memory_reservation": _int(f"{d}/memory.low"),
        "spec_swap_limit": _int(f"{d}/memory.swap.max"),
    }
    for key, field in _V2_CPU_USEC:
        if field in cpu:
            s[key] = cpu[field] * 1000
    s["cfs_periods"], s["cfs_throttled_periods"] = cpu.get("nr_periods"), cpu.get("nr_throttled")
    if usage is not None:
        s["mem_working_set"] = max(0, usage - mem.get("inactive_file", 0))
    quota, _, period = (read_text(f"{d}/cpu.max") or "").partition(" ")
    if period.strip().isdigit():
        s["spec_cpu_period"] = int(period)
        if quota.isdigit():
            s["spec_cpu_quota"] = int(quota)
    weight = _int(f"{d}/cpu.weight")
    if weight is not None:
        s["spec_cpu_shares"] = _shares_of_weight(weight)
    io: dict[str, tuple[int, int]] = {}
    for line in (read_text(f"{d}/io.stat") or "").splitlines():
        dev, *fields = line.split()
        values = dict(f.partition("=")[::2] for f in fields)
        if "rbytes" in values and "wbytes" in values:
            io[_device(dev)] = (int(values["rbytes"]), int(values["wbytes"]))
    s["io"] = io
    return s


def counters_v1(dirs: dict[str, str]) -> Sample:
    cpu, acct, mem, pids, blkio = (
        dirs.get(k, "") for k in ("cpu", "cpuacct", "memory", "pids", "blkio")
    )
    hz = os.sysconf("SC_CLK_TCK")
    ticks = read_keyed(f"{acct}/cpuacct.stat")
    throttling = read_keyed(f"{cpu}/cpu.stat")
    stat = read_keyed(f"{mem}/memory.stat")
    usage = _int(f"{mem}/memory.usage_in_bytes")
    memsw = _int(f"{mem}/memory.memsw.usage_in_bytes")
    s: Sample = {
        "cpu_usage_ns": _int(f"{acct}/cpuacct.usage"),
        "cfs_periods": throttling.get("nr_periods"),
        "cfs_throttled_periods": throttling.get("nr_throttled"),
        "cfs_throttled_ns": throttling.get("throttled_time"),
        "mem_cache": stat.get("total_cache"),
        "mem_rss": stat.get("total_rss"),
        "mem_kernel": _int(f"{mem}/memory.kmem.usage_in_bytes"),
        "mem_mapped_file": stat.get("total_mapped_file"),
        "mem_swap": memsw - usage if memsw is not None and usage is not None else None,
        "mem_failcnt": _int(f"{mem}/memory.failcnt"),
        "mem_usage": usage,
        "mem_max_usage": _int(f"{mem}/memory.max_usage_in_bytes"),
        "mem_active_file": stat.get("total_active_file"),
        "mem_inactive_file": stat.get("total_inactive_file"),
        "pgfault_container": stat.get("pgfault"),
        "pgfault_hierarchy": stat.get("total_pgfault"),
        "pgmajfault_container": stat.get("pgmajfault"),
        "pgmajfault_hierarchy": stat.get("total_pgmajfault"),
        "oom_kills": read_keyed(f"{mem}/memory.oom_control").get("oom_kill"),
        "processes": _int(f"{pids}/pids.current"),
        "threads": _lines(f"{pids}/tasks"),
        "threads_max": _int(f"{pids}/pids.max"),
        "spec_cpu_period": _int(f"{cpu}/cpu.cfs_period_us"),
        "spec_cpu_shares": _int(f"{cpu}/cpu.shares"),
        "spec_memory_limit": _int(f"{mem}/memory.limit_in_bytes"),
        "spec_memory_reservation": _int(f"{mem}/memory.soft_limit_in_bytes"),
        "spec_swap_limit": _int(f"{mem}/memory.memsw.limit_in_bytes"),
    }
    if "user" in ticks:
        s["cpu_user_ns"] = ticks["user"] * NS // hz
        s["cpu_system_ns"] = ticks.get("system", 0) * NS // hz
    quota = _int(f"{cpu}/cpu.cfs_quota_us")
    if quota is not None and quota > 0:
        s["spec_cpu_quota"] = quota
    if usage is not None:
        s["mem_working_set"] = max(0, usage - stat.get("total_inactive_file", 0))
    io: dict[str, list[int]] = {}
    service = read_text(f"{blkio}/blkio.throttle.io_service_bytes_recursive") or ""
    for line in service.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("Read", "Write"):
            io.setdefault(_device(parts[0]), [0, 0])[parts[1] == "Write"] += int(parts[2])
    s["io"] = {dev: (r, w) for dev, (r, w) in io.items()}
    return s


class MetricsCollector:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.cgroups = ctx.cgroups
        self.device = str(ctx.config.root_dir)

    def counters(self, path: str) -> Sample | None:
        """The counters of a cgroupsPath or cgroup parent; None when it has no cgroup."""
        found = self.cgroups.directory(path)
        if found is None:
            return None
        d = "/" + found.strip("/")
        if self.cgroups.v2:
            if not os.path.isdir(CGROUP_ROOT + d):
                return None
            return counters_v2(CGROUP_ROOT + d)
        names = ("cpu", "cpuacct", "memory", "pids", "blkio")
        dirs = {name: f"{CGROUP_ROOT}/{name}{d}" for name in names}
        return counters_v1(dirs) if os.path.isdir(dirs["memory"]) else None

    @staticmethod
    def metrics(
        sample: Sample, base: tuple[str, str, str], series: tuple[Series, ...]
    ) -> list[cri.Metric]:
        out = []
        for s in series:
            kind = cri.COUNTER if s.counter else cri.GAUGE
            for extra, value in s.values(sample):
                out.append(
                    cri.Metric(
                        name=s.name,
                        timestamp=0,  # read live
                        metric_type=kind,
                        label_values=[*base, *extra],
                        value=cri.UInt64Value(value=value),
                    )
                )
        return out

    def container(self, c: CriContainer, fs: int | None) -> cri.ContainerMetrics:
        out = cri.ContainerMetrics(container_id=c.id)
        path = (c.spec.get("linux") or {}).get("cgroupsPath") or ""
        sample = self.counters(path) if path else None
        if sample is None:
            return out
        sample["now"], sample["started_at"] = convert.now_ns(), c.started_at
        if fs is not None:
            sample["fs"] = {self.device: (fs,)}
        base = (c.id, c.metadata.name, c.image_name or c.image)
        out.metrics.extend(self.metrics(sample, base, (*CGROUP_SERIES, *FILESYSTEM)))
        return out

    def pod(
        self, sb: Sandbox, members: list[CriContainer], fs: dict[str, int | None]
    ) -> cri.PodSandboxMetrics:
        out = cri.PodSandboxMetrics(pod_sandbox_id=sb.id)
        sample: Sample = {}
        if sb.own_cgroup_parent:
            sample = self.counters(sb.cgroup_parent) or {}
        sample["now"], sample["started_at"] = convert.now_ns(), sb.started_at
        if sb.netns and sb.pid:
            sample["net"] = {k: v for k, v in net_dev(sb.pid).items() if k != "lo"}
        base = (sb.id, "POD", sb.image)
        out.metrics.extend(self.metrics(sample, base, (*CGROUP_SERIES, *NETWORK)))
        for c in members:
            if c.status.is_running:
                out.container_metrics.append(self.container(c, fs.get(c.id)))
        return out


class MetricsRpcs:
    ctx: Context

    async def ListMetricDescriptors(  # noqa: N802 (gRPC method names)
        self, request: cri.ListMetricDescriptorsRequest, context: grpc.aio.ServicerContext
    ) -> cri.ListMetricDescriptorsResponse:
        return cri.ListMetricDescriptorsResponse(descriptors=[s.descriptor for s in ALL])

    async def _pod_metrics(self) -> list[cri.PodSandboxMetrics]:
        pods = [sb for sb in self.ctx.runtime.store.list_of(Sandbox) if sb.status.is_running]
        members: dict[str, list[CriContainer]] = {sb.id: [] for sb in pods}
        for c in self.ctx.runtime.store.list_of(CriContainer):
            if c.sandbox_id in members and c.status.is_running:
                members[c.sandbox_id].append(c)
        running = [c for group in members.values() for c in group]
        stats = StatsCollector(self.ctx)  # its writable-layer walk, off the event loop

        def measure() -> dict[str, int | None]:
            found = {c.id: stats.writable(c) for c in running}
            return {cid: u.used_bytes.value if u else None for cid, u in found.items()}

        fs = await asyncio.to_thread(measure)
        collector = MetricsCollector(self.ctx)
        return [collector.pod(sb, members[sb.id], fs) for sb in pods]

    async def ListPodSandboxMetrics(  # noqa: N802
        self, request: cri.ListPodSandboxMetricsRequest, context: grpc.aio.ServicerContext
    ) -> cri.ListPodSandboxMetricsResponse:
        return cri.ListPodSandboxMetricsResponse(pod_metrics=await self._pod_metrics())

    async def StreamPodSandboxMetrics(  # noqa: N802
        self, request: cri.StreamPodSandboxMetricsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cri.StreamPodSandboxMetricsResponse]:
        metrics = await self._pod_metrics()
        for part in convert.chunks(metrics, METRICS_CHUNK):
            yield cri.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=part)
