"""CRI metrics (ListMetricDescriptors, ListPodSandboxMetrics,
StreamPodSandboxMetrics) as the kubelet's /metrics/cadvisor reads them, from
a real pod's cgroups and network namespace."""

from __future__ import annotations

from collections import defaultdict

import pytest

from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import BB, CriEnv, Kubelet
from tests.support import cgroups

pytestmark = pytest.mark.root

MiB = 1024 * 1024
# Spins until the shell itself has used 1.1 s of CPU (utime + stime, in ticks).
BURN = (
    "while :; do i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done;"
    " set -- $(cat /proc/$$/stat); [ $((${14} + ${15})) -ge 110 ] && break; done"
)
# The labels the kubelet adds itself: a runtime sending them breaks its collector.
KUBELET_LABELS = {"namespace", "pod", "container"}

Series = dict[tuple[str, ...], int]  # label values -> value


def descriptors(kube: Kubelet) -> dict[str, cri.MetricDescriptor]:
    found = kube.rt.ListMetricDescriptors(cri.ListMetricDescriptorsRequest()).descriptors
    by_name = {d.name: d for d in found}
    assert len(by_name) == len(found), "descriptor names must be unique"
    return by_name


def series(metrics: list[cri.Metric], known: dict[str, cri.MetricDescriptor]) -> dict[str, Series]:
    out: dict[str, Series] = defaultdict(dict)
    for m in metrics:
        d = known[m.name]  # a name the kubelet was not told of would be dropped
        assert len(m.label_values) == len(d.label_keys), m.name
        assert m.timestamp == 0  # read live
        counter = m.name.endswith("_total") or m.name == "container_memory_failcnt"
        assert m.metric_type == (cri.COUNTER if counter else cri.GAUGE), m.name
        out[m.name][tuple(m.label_values)] = m.value.value
    return out


def pod_metrics(kube: Kubelet, pod_id: str) -> cri.PodSandboxMetrics | None:
    listed = kube.rt.ListPodSandboxMetrics(cri.ListPodSandboxMetricsRequest()).pod_metrics
    return next((p for p in listed if p.pod_sandbox_id == pod_id), None)


def test_descriptors_are_cadvisor_series(kube: Kubelet) -> None:
    known = descriptors(kube)
    for name in (
        "container_cpu_usage_seconds_total",
        "container_cpu_user_seconds_total",
        "container_cpu_cfs_throttled_periods_total",
        "container_memory_working_set_bytes",
        "container_memory_usage_bytes",
        "container_memory_rss",
        "container_oom_events_total",
        "container_processes",
        "container_threads",
        "container_spec_memory_limit_bytes",
        "container_spec_cpu_quota",
        "container_fs_usage_bytes",
        "container_network_receive_bytes_total",
        "container_network_transmit_packets_dropped_total",
        "container_start_time_seconds",
    ):
        assert name in known, name
    for d in known.values():
        assert d.name.startswith("container_") and d.help, d.name
        assert list(d.label_keys[:3]) == ["id", "name", "image"], d.name
        assert not KUBELET_LABELS & set(d.label_keys), d.name
        assert len(set(d.label_keys)) == len(d.label_keys), d.name
    assert list(known["container_cpu_usage_seconds_total"].label_keys)[3:] == ["cpu"]
    assert list(known["container_network_receive_bytes_total"].label_keys)[3:] == ["interface"]
    assert list(known["container_fs_usage_bytes"].label_keys)[3:] == ["device"]


def test_pod_and_container_metrics(cri_env: CriEnv, kube: Kubelet) -> None:
    known = descriptors(kube)
    config = kube.pod_config("metrics")
    pod_id = kube.run_pod(config)
    limits = cri.LinuxContainerResources(
        memory_limit_in_bytes=64 * MiB, cpu_quota=100_000, cpu_period=100_000, cpu_shares=512
    )
    cid = kube.run(pod_id, config, "work", resources=limits)
    kube.sh(cid, f"{BB} dd if=/dev/zero of=/big bs=1M count=3 2>/dev/null; sync")
    kube.sh(cid, f"{BB} ping -c 2 -W 2 {cri_env.gateway} >/dev/null")
    kube.sh(cid, BURN, timeout=120)
    stats = kube.rt.ContainerStats(cri.ContainerStatsRequest(container_id=cid)).stats

    found = pod_metrics(kube, pod_id)
    assert found is not None
    [container] = found.container_metrics
    assert container.container_id == cid
    c = series(list(container.metrics), known)
    image = kube.status(cid).image.image
    base = (cid, "work", image)

    def one(name: str, *extra: str) -> int:
        return c[name][(*base, *extra)]

    used = stats.cpu.usage_core_nano_seconds.value // 1_000_000_000
    assert used >= 1
    assert used <= one("container_cpu_usage_seconds_total", "total") <= used + 1
    user_system = one("container_cpu_user_seconds_total") + one(
        "container_cpu_system_seconds_total"
    )
    assert used - 2 <= user_system <= used + 2  # each truncated to whole seconds
    usage = one("container_memory_usage_bytes")
    assert 0 < one("container_memory_working_set_bytes") <= usage <= 64 * MiB
    assert one("container_spec_memory_limit_bytes") == 64 * MiB
    assert one("container_spec_cpu_quota") == 100_000
    assert one("container_spec_cpu_period") == 100_000
    shares = one("container_spec_cpu_shares")
    # cgroup v2 keeps a weight: shares -> weight -> shares loses a little.
    assert shares == 512 if not cgroups.V2 else abs(shares - 512) <= 15
    assert one("container_processes") >= 1
    assert one("container_threads") >= one("container_processes")
    assert one("container_oom_events_total") == 0
    assert one("container_fs_usage_bytes", str(cri_env.daemon.root)) >= 3 * MiB
    started = kube.status(cid).started_at // 1_000_000_000
    assert one("container_start_time_seconds") == started
    failures = c["container_memory_failures_total"]
    assert set(failures) == {(*base, k, s) for k in ("pgfault", "pgmajfault")
                             for s in ("container", "hierarchy")}  # fmt: skip
    assert failures[(*base, "pgfault", "hierarchy")] > 0

    # The pod's own series: its cgroup and each interface of its netns.
    p = series(list(found.metrics), known)
    pod_base = (pod_id, "POD")
    [(labels, tx)] = p["container_network_transmit_bytes_total"].items()
    assert labels[:2] == pod_base and labels[3:] == ("eth0",)
    assert tx > 0
    [(labels, packets)] = p["container_network_transmit_packets_total"].items()
    assert packets >= 2
    [(labels, pod_usage)] = p["container_memory_usage_bytes"].items()
    assert labels[:2] == pod_base and pod_usage >= usage
    [(labels, pod_cpu)] = p["container_cpu_usage_seconds_total"].items()
    assert pod_cpu >= used

    streamed = kube.rt.StreamPodSandboxMetrics(cri.StreamPodSandboxMetricsRequest())
    ids = [p.pod_sandbox_id for part in streamed for p in part.pod_sandbox_metrics]
    assert ids.count(pod_id) == 1

    # A stopped container has no series, a stopped pod none at all.
    kube.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    after = pod_metrics(kube, pod_id)
    assert after is not None and not after.container_metrics
    kube.stop_pod(pod_id)
    assert pod_metrics(kube, pod_id) is None
