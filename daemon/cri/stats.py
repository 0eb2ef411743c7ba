"""CRI stats: containers' and pods' CPU, memory, processes, network, disk.

Read by the daemon straight from the cgroup files (v1 or v2; the paths are
the ones pyctr gave runc) and /proc, never through the shims, so listing
the stats of a node's containers costs file reads only. CPU rate
(usage_nano_cores) comes from the previous sample of the same container.
The writable layer's usage is measured on the snapshot (off the event loop).
A pod's usage is its cgroup parent's when the kubelet named one, else the
sum of its members.

Every container not yet removed has stats, as in containerd: created and
exited ones have their writable layer only. The kubelet counts an exited
container's layer (a finished init container's, a crash-looping one's) in
its pod's ephemeral-storage usage.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import grpc

from pyctr.daemon.context import Context
from pyctr.daemon.cri import convert
from pyctr.daemon.runtime.records import Container, CriContainer, Sandbox
from pyctr.proto import cri_pb2 as cri
from pyctr.shim.cgroups import Cgroup, pressure, swap

CGROUP_ROOT = "/sys/fs/cgroup"
STATS_CHUNK = 200  # stats per Stream*Stats message (a stats entry is larger)


def _u64(value: int | None) -> cri.UInt64Value | None:
    return cri.UInt64Value(value=value) if value is not None and value >= 0 else None


def net_dev(pid: int) -> dict[str, tuple[int, ...]]:
    """The 16 counters of /proc/net/dev per interface of pid's netns: bytes,
    packets, errs, drop, fifo, frame, compressed, multicast received, then
    bytes, packets, errs, drop, fifo, colls, carrier, compressed sent."""
    out: dict[str, tuple[int, ...]] = {}
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) >= 16:
            out[name.strip()] = tuple(int(f) for f in fields[:16])
    return out


class StatsCollector:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.cgroups = ctx.cgroups
        self.mountpoint = str(ctx.config.root_dir)
        self._cpu: dict[str, tuple[int, int]] = {}  # id -> (timestamp, usage ns)

    def cgroup(self, path: str) -> Cgroup:
        """The cgroup of a cgroupsPath or cgroup parent, as the driver names it."""
        found = self.cgroups.directory(path)
        d = "/" + (found or "/nonexistent").strip("/")
        if self.cgroups.v2:
            return Cgroup({}, CGROUP_ROOT + d)
        dirs = {name: f"{CGROUP_ROOT}/{name}{d}" for name in ("cpuacct", "memory", "pids")}
        return Cgroup(dirs, None)

    def raw(self, path: str) -> dict[str, int | None]:
        return self.cgroup(path).stats()

    def cpu(self, key: str, raw: dict[str, int | None]) -> cri.CpuUsage:
        ts, usage = int(raw["timestamp"] or 0), raw["cpu_usage_ns"]
        out = cri.CpuUsage(timestamp=ts, usage_core_nano_seconds=_u64(usage))
        if usage is not None:
            prev = self._cpu.get(key)
            if prev is not None and ts > prev[0] and usage >= prev[1]:
                rate = (usage - prev[1]) * 1_000_000_000 // (ts - prev[0])
                out.usage_nano_cores.value = rate
            self._cpu[key] = (ts, usage)
        return out

    def v2_dir(self, path: str) -> str | None:
        """The cgroup v2 directory of a cgroupsPath or parent (None on v1)."""
        found = self.cgroups.directory(path) if self.cgroups.v2 else None
        return None if found is None else CGROUP_ROOT + "/" + found.strip("/")

    @staticmethod
    def psi(directory: str, resource: str) -> cri.PsiStats | None:
        lines = pressure(directory, resource)
        if not lines:
            return None
        out = cri.PsiStats()
        for kind, field_ in (("some", out.Some), ("full", out.Full)):
            if kind in lines:
                avg10, avg60, avg300, total = lines[kind]
                field_.CopyFrom(cri.PsiData(Total=total, Avg10=avg10, Avg60=avg60, Avg300=avg300))
        return out

    def add_v2(self, directory: str, cpu: cri.CpuUsage, memory: cri.MemoryUsage) -> cri.IoUsage:
        """PSI of cpu, memory and io (cgroup v2 only); returns the io usage."""
        for usage, resource in ((cpu, "cpu"), (memory, "memory")):
            psi = self.psi(directory, resource)
            if psi is not None:
                usage.psi.CopyFrom(psi)
        io = cri.IoUsage(timestamp=cpu.timestamp)
        psi = self.psi(directory, "io")
        if psi is not None:
            io.psi.CopyFrom(psi)
        return io

    @staticmethod
    def swap_usage(directory: str, timestamp: int) -> cri.SwapUsage:
        usage, limit = swap(directory)
        available = limit - usage if limit is not None and usage is not None else None
        return cri.SwapUsage(
            timestamp=timestamp,
            swap_usage_bytes=_u64(usage),
            swap_available_bytes=_u64(available),
        )

    @staticmethod
    def memory(raw: dict[str, int | None]) -> cri.MemoryUsage:
        limit, working = raw["memory_limit"], raw["memory_working_set"]
        available = limit - working if limit is not None and working is not None else None
        return cri.MemoryUsage(
            timestamp=int(raw["timestamp"] or 0),
            working_set_bytes=_u64(working),
            available_bytes=_u64(available),
            usage_bytes=_u64(raw["memory_usage"]),
            rss_bytes=_u64(raw["memory_rss"]),
            page_faults=_u64(raw["page_faults"]),
            major_page_faults=_u64(raw["major_page_faults"]),
        )

    def writable(self, c: Container) -> cri.FilesystemUsage | None:
        """Blocking (walks the container's upper dir): call off the event loop."""
        snap = self.ctx.snapshotter
        if snap is None or not c.snapshot:
            return None
        try:
            usage = snap.usage(c.snapshot)
        except Exception:
            return None
        return cri.FilesystemUsage(
            timestamp=convert.now_ns(),
            fs_id=cri.FilesystemIdentifier(mountpoint=self.mountpoint),
            used_bytes=cri.UInt64Value(value=usage.size_bytes),
            inodes_used=cri.UInt64Value(value=usage.inodes),
        )

    def container(self, c: CriContainer, fs: cri.FilesystemUsage | None) -> cri.ContainerStats:
        attributes = cri.ContainerAttributes(
            id=c.id,
            metadata=convert.container_metadata(c),
            labels=c.labels,
            annotations=c.annotations,
        )
        out = cri.ContainerStats(attributes=attributes, writable_layer=fs)
        path = (c.spec.get("linux") or {}).get("cgroupsPath") or ""
        if c.status.is_running and path:
            raw = self.raw(path)
            out.cpu.CopyFrom(self.cpu(c.id, raw))
            out.memory.CopyFrom(self.memory(raw))
            v2 = self.v2_dir(path)
            if v2 is not None:
                out.io.CopyFrom(self.add_v2(v2, out.cpu, out.memory))
                out.swap.CopyFrom(self.swap_usage(v2, out.memory.timestamp))
        else:
            self._cpu.pop(c.id, None)
        return out

    def pod(
        self, sb: Sandbox, members: list[CriContainer], fs: dict[str, cri.FilesystemUsage | None]
    ) -> cri.PodSandboxStats:
        now = convert.now_ns()
        containers = [self.container(c, fs.get(c.id)) for c in members]
        linux = cri.LinuxPodSandboxStats(containers=containers)
        if sb.status.is_running:
            # The kubelet's pod cgroup holds them all; else add the members up.
            own = sb.own_cgroup_parent
            raw = self.raw(sb.cgroup_parent) if own else self._sum([sb, *members])
            linux.cpu.CopyFrom(self.cpu("pod:" + sb.id, raw))
            linux.memory.CopyFrom(self.memory(raw))
            v2 = self.v2_dir(sb.cgroup_parent) if own else None
            if v2 is not None:  # pressure does not add up: only from the pod's cgroup
                linux.io.CopyFrom(self.add_v2(v2, linux.cpu, linux.memory))
            linux.process.CopyFrom(
                cri.ProcessUsage(timestamp=now, process_count=_u64(raw["pids_current"]))
            )
            linux.network.CopyFrom(self.network(sb, now))
        return cri.PodSandboxStats(
            attributes=cri.PodSandboxAttributes(
                id=sb.id,
                metadata=convert.pod_metadata(sb),
                labels=sb.labels,
                annotations=sb.annotations,
            ),
            linux=linux,
        )

    def _sum(self, records: list[Container]) -> dict[str, int | None]:
        total: dict[str, int | None] = {"timestamp": convert.now_ns()}
        for c in records:
            path = (c.spec.get("linux") or {}).get("cgroupsPath") or ""
            if not c.status.is_running or not path:
                continue
            for key, value in self.raw(path).items():
                if key == "timestamp" or value is None:
                    continue
                if key in ("memory_limit", "pids_limit"):
                    continue  # limits do not add up to a pod limit
                total[key] = (total.get(key) or 0) + value
        for key in ("cpu_usage_ns", "memory_usage", "memory_working_set", "memory_rss",
                    "page_faults", "major_page_faults", "pids_current", "memory_limit",
                    "pids_limit"):  # fmt: skip
            total.setdefault(key, None)
        return total

    @staticmethod
    def network(sb: Sandbox, now: int) -> cri.NetworkUsage:
        out = cri.NetworkUsage(timestamp=now)
        if not sb.netns or not sb.pid:
            return out
        for name, counts in sorted(net_dev(sb.pid).items()):
            if name == "lo":
                continue
            rx, rx_err, tx, tx_err = counts[0], counts[2], counts[8], counts[10]
            iface = cri.NetworkInterfaceUsage(
                name=name,
                rx_bytes=cri.UInt64Value(value=rx),
                rx_errors=cri.UInt64Value(value=rx_err),
                tx_bytes=cri.UInt64Value(value=tx),
                tx_errors=cri.UInt64Value(value=tx_err),
            )
            if name == "eth0":
                out.default_interface.CopyFrom(iface)
            else:
                out.interfaces.append(iface)
        return out

    def forget(self, live: set[str]) -> None:
        for key in list(self._cpu):
            if key.removeprefix("pod:") not in live:
                del self._cpu[key]


class StatsRpcs:
    ctx: Context

    def _collector(self) -> StatsCollector:
        collector: StatsCollector | None = getattr(self, "_stats_collector", None)
        if collector is None:
            collector = StatsCollector(self.ctx)
            self._stats_collector = collector
        return collector

    async def _writable(
        self, containers: Sequence[Container]
    ) -> dict[str, cri.FilesystemUsage | None]:
        collector = self._collector()

        def measure() -> dict[str, cri.FilesystemUsage | None]:
            return {c.id: collector.writable(c) for c in containers}

        return await asyncio.to_thread(measure)

    async def ContainerStats(  # noqa: N802 (gRPC method names)
        self, request: cri.ContainerStatsRequest, context: grpc.aio.ServicerContext
    ) -> cri.ContainerStatsResponse:
        c = self.ctx.sandboxes.get_container(request.container_id)
        fs = await self._writable([c])
        return cri.ContainerStatsResponse(stats=self._collector().container(c, fs[c.id]))

    async def _container_stats(self, f: cri.ContainerStatsFilter) -> list[cri.ContainerStats]:
        found = [
            c
            for c in self.ctx.runtime.store.list_of(CriContainer)
            if (not f.id or c.id.startswith(f.id))
            and (not f.pod_sandbox_id or c.sandbox_id.startswith(f.pod_sandbox_id))
            and convert.labels_match(c.labels, f.label_selector)
        ]
        fs = await self._writable(found)
        collector = self._collector()
        return [collector.container(c, fs[c.id]) for c in found]

    async def ListContainerStats(  # noqa: N802
        self, request: cri.ListContainerStatsRequest, context: grpc.aio.ServicerContext
    ) -> cri.ListContainerStatsResponse:
        return cri.ListContainerStatsResponse(stats=await self._container_stats(request.filter))

    async def StreamContainerStats(  # noqa: N802
        self, request: cri.StreamContainerStatsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cri.StreamContainerStatsResponse]:
        stats = await self._container_stats(request.filter)
        for part in convert.chunks(stats, STATS_CHUNK):
            yield cri.StreamContainerStatsResponse(container_stats=part)

    async def _pod_stats(self, pods: list[Sandbox]) -> list[cri.PodSandboxStats]:
        members: dict[str, list[CriContainer]] = {sb.id: [] for sb in pods}
        for c in self.ctx.runtime.store.list_of(CriContainer):
            if c.sandbox_id in members:
                members[c.sandbox_id].append(c)
        fs = await self._writable([c for group in members.values() for c in group])
        collector = self._collector()
        # (collector.pod sums the usage of running members only)
        return [collector.pod(sb, members[sb.id], fs) for sb in pods]

    async def PodSandboxStats(  # noqa: N802
        self, request: cri.PodSandboxStatsRequest, context: grpc.aio.ServicerContext
    ) -> cri.PodSandboxStatsResponse:
        sb = self.ctx.sandboxes.get(request.pod_sandbox_id)
        [stats] = await self._pod_stats([sb])
        return cri.PodSandboxStatsResponse(stats=stats)

    async def _list_pod_stats(self, f: cri.PodSandboxStatsFilter) -> list[cri.PodSandboxStats]:
        pods = [
            sb
            for sb in self.ctx.runtime.store.list_of(Sandbox)
            if sb.status.is_running
            and (not f.id or sb.id.startswith(f.id))
            and convert.labels_match(sb.labels, f.label_selector)
        ]
        stats = await self._pod_stats(pods)
        if not f.id and not f.label_selector:
            with contextlib.suppress(Exception):
                live = {c.id for c in self.ctx.runtime.store.list() if c.status.is_running}
                self._collector().forget(live)
        return stats

    async def ListPodSandboxStats(  # noqa: N802
        self, request: cri.ListPodSandboxStatsRequest, context: grpc.aio.ServicerContext
    ) -> cri.ListPodSandboxStatsResponse:
        return cri.ListPodSandboxStatsResponse(stats=await self._list_pod_stats(request.filter))

    async def StreamPodSandboxStats(  # noqa: N802
        self, request: cri.StreamPodSandboxStatsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cri.StreamPodSandboxStatsResponse]:
        stats = await self._list_pod_stats(request.filter)
        for part in convert.chunks(stats, STATS_CHUNK):
            yield cri.StreamPodSandboxStatsResponse(pod_sandbox_stats=part)
