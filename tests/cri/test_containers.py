"""Container calls against real containers: resources and OOM, live updates,
stats from the cgroups, stop signals and grace periods, ExecSync, log reopen."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import BB, CriEnv, Kubelet, code_of
from tests.support import cgroups

pytestmark = pytest.mark.root

MiB = 1024 * 1024


@pytest.fixture
def pod(kube: Kubelet) -> tuple[str, cri.PodSandboxConfig]:
    config = kube.pod_config("box")
    return kube.run_pod(config), config


def cgroups_path(kube: Kubelet, cid: str) -> str:
    info = json.loads(kube_info(kube, cid))
    return str(info["runtimeSpec"]["linux"]["cgroupsPath"])


def kube_info(kube: Kubelet, cid: str) -> str:
    req = cri.ContainerStatusRequest(container_id=cid, verbose=True)
    return kube.rt.ContainerStatus(req, timeout=10).info["info"]


def test_oom_killed_container_is_reported(
    kube: Kubelet, pod: tuple[str, cri.PodSandboxConfig]
) -> None:
    pod_id, config = pod
    limits = cri.LinuxContainerResources(memory_limit_in_bytes=32 * MiB)
    # dd reads /dev/zero into one 128 MiB buffer, touching every page of it.
    hog = [BB, "dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"]
    cid = kube.run(pod_id, config, "hog", hog, resources=limits)
    st = kube.wait_state(cid, cri.CONTAINER_EXITED, timeout=30)
    assert st.state == cri.CONTAINER_EXITED
    assert st.reason == "OOMKilled" and st.exit_code == 137
    # A plain failure is "Error", a clean exit "Completed".
    fail = kube.run(pod_id, config, "fail", [BB, "sh", "-c", "exit 3"])
    ok = kube.run(pod_id, config, "ok", [BB, "true"])
    st = kube.wait_state(fail, cri.CONTAINER_EXITED)
    assert (st.exit_code, st.reason) == (3, "Error")
    st = kube.wait_state(ok, cri.CONTAINER_EXITED)
    assert (st.exit_code, st.reason) == (0, "Completed")


def test_resources_applied_and_updated_live(
    kube: Kubelet, pod: tuple[str, cri.PodSandboxConfig]
) -> None:
    pod_id, config = pod
    limits = cri.LinuxContainerResources(
        memory_limit_in_bytes=64 * MiB, cpu_shares=256, oom_score_adj=500
    )
    cid = kube.run(pod_id, config, "limited", resources=limits)
    path = cgroups_path(kube, cid)
    # The driver's own spelling, under the pod's parent.
    if cgroups.SYSTEMD:
        assert path == f"{config.linux.cgroup_parent}:pyctr:{cid}"
        assert cgroups.directory(path).endswith(f"/{config.linux.cgroup_parent}/pyctr-{cid}.scope")
        assert f"pyctr-{cid}.scope" in cgroups.units()
    else:
        assert path == f"{config.linux.cgroup_parent}/{cid}"
    assert cgroups.memory_limit(path) == 64 * MiB
    assert cgroups.cpu_weight(path) == cgroups.shares_to_weight(256)
    pid = json.loads(kube_info(kube, cid))["pid"]
    assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "500"

    update = cri.LinuxContainerResources(
        memory_limit_in_bytes=128 * MiB, cpu_shares=512, cpu_quota=50000, cpu_period=100000
    )
    kube.rt.UpdateContainerResources(
        cri.UpdateContainerResourcesRequest(container_id=cid, linux=update), timeout=30
    )
    assert cgroups.memory_limit(path) == 128 * MiB
    assert cgroups.cpu_weight(path) == cgroups.shares_to_weight(512)
    assert cgroups.cpu_quota(path) == (50000, 100000)
    res = kube.status(cid).resources.linux
    assert (res.memory_limit_in_bytes, res.cpu_shares, res.cpu_quota) == (128 * MiB, 512, 50000)

    # A negative oom_score_adj is clamped to the daemon's own (0 here): this
    # host cannot lower it (no CAP_SYS_RESOURCE).
    guaranteed = cri.LinuxContainerResources(oom_score_adj=-997)
    g = kube.run(pod_id, config, "guaranteed", resources=guaranteed)
    pid = json.loads(kube_info(kube, g))["pid"]
    assert int(Path(f"/proc/{pid}/oom_score_adj").read_text()) >= 0

    # Updating a created container changes what it starts with.
    kube.pull(kube.env.app_ref)
    created = kube.create(pod_id, config, kube.container_config("later"))
    small = cri.LinuxContainerResources(memory_limit_in_bytes=48 * MiB)
    kube.rt.UpdateContainerResources(
        cri.UpdateContainerResourcesRequest(container_id=created, linux=small), timeout=30
    )
    kube.start(created)
    assert cgroups.memory_limit(cgroups_path(kube, created)) == 48 * MiB

    bad = cri.LinuxContainerResources(memory_limit_in_bytes=-1)
    with pytest.raises(grpc.RpcError) as e:
        kube.rt.UpdateContainerResources(
            cri.UpdateContainerResourcesRequest(container_id=cid, linux=bad), timeout=30
        )
    assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_stats(cri_env: CriEnv, kube: Kubelet, pod: tuple[str, cri.PodSandboxConfig]) -> None:
    pod_id, config = pod
    cid = kube.run(pod_id, config, "busy")
    kube.sh(cid, f"{BB} dd if=/dev/zero of=/big bs=1M count=3 2>/dev/null; sync")
    kube.sh(cid, "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done")
    kube.sh(cid, f"{BB} ping -c 1 -W 2 {cri_env.gateway} >/dev/null")

    stats = kube.rt.ContainerStats(cri.ContainerStatsRequest(container_id=cid)).stats
    assert stats.attributes.id == cid and stats.attributes.metadata.name == "busy"
    assert stats.attributes.labels["container"] == "busy"
    assert stats.cpu.usage_core_nano_seconds.value > 0
    assert stats.memory.working_set_bytes.value > 0 and stats.memory.usage_bytes.value > 0
    assert stats.writable_layer.used_bytes.value >= 3 * MiB
    if cgroups.V2:  # swap and pressure (PSI) come from the v2 files
        assert stats.swap.timestamp > 0 and stats.swap.HasField("swap_usage_bytes")
        if Path("/proc/pressure/cpu").exists():
            assert stats.cpu.HasField("psi") and stats.memory.HasField("psi")
            assert stats.io.HasField("psi") and stats.io.timestamp > 0
    assert stats.writable_layer.inodes_used.value >= 1

    req = cri.ListContainerStatsRequest(filter=cri.ContainerStatsFilter(pod_sandbox_id=pod_id))
    kube.rt.ListContainerStats(req)
    time.sleep(0.2)
    [listed] = kube.rt.ListContainerStats(req).stats
    assert listed.attributes.id == cid
    assert listed.cpu.HasField("usage_nano_cores")  # a rate, from two samples

    pstats = kube.rt.PodSandboxStats(cri.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats
    assert pstats.attributes.id == pod_id and pstats.attributes.metadata.name == "box"
    linux = pstats.linux
    assert linux.cpu.usage_core_nano_seconds.value >= stats.cpu.usage_core_nano_seconds.value
    assert linux.memory.working_set_bytes.value > 0
    assert linux.process.process_count.value >= 2  # the pause and the container
    assert linux.network.default_interface.name == "eth0"
    assert linux.network.default_interface.tx_bytes.value > 0
    assert [c.attributes.id for c in linux.containers] == [cid]

    listed_pods = kube.rt.ListPodSandboxStats(cri.ListPodSandboxStatsRequest()).stats
    assert pod_id in {p.attributes.id for p in listed_pods}
    with pytest.raises(grpc.RpcError) as e:
        kube.rt.ContainerStats(cri.ContainerStatsRequest(container_id="0" * 64))
    assert code_of(e.value) == grpc.StatusCode.NOT_FOUND


def test_stop_signals_and_grace_period(
    cri_env: CriEnv, kube: Kubelet, pod: tuple[str, cri.PodSandboxConfig]
) -> None:
    pod_id, config = pod

    def stop(cid: str, timeout: int) -> float:
        started = time.monotonic()
        req = cri.StopContainerRequest(container_id=cid, timeout=timeout)
        kube.rt.StopContainer(req, timeout=timeout + 30)
        return time.monotonic() - started

    loop = "while :; do sleep 1; done"
    # The image's StopSignal (SIGUSR1 in this image) is what stops it.
    img = kube.run(pod_id, config, "img", [BB, "sh", "-c", f"trap 'exit 7' USR1; {loop}"],
                   image=cri_env.stopsig_ref)  # fmt: skip
    # The request's stop_signal wins over the default.
    req_sig = kube.run(pod_id, config, "req", [BB, "sh", "-c", f"trap 'exit 5' INT; {loop}"],
                       stop_signal=cri.SIGNAL_SIGINT)  # fmt: skip
    stubborn = kube.run(pod_id, config, "stubborn", [BB, "sh", "-c", f"trap '' TERM; {loop}"])
    assert stop(img, 10) < 8
    assert kube.status(img).exit_code == 7
    assert stop(req_sig, 10) < 8
    assert kube.status(req_sig).exit_code == 5
    # Ignores SIGTERM: killed when the grace period is over.
    assert stop(stubborn, 2) >= 2
    st = kube.status(stubborn)
    assert (st.exit_code, st.reason) == (137, "Error")
    assert kube.status(req_sig).stop_signal == cri.SIGNAL_SIGINT


def test_exec_sync(kube: Kubelet, pod: tuple[str, cri.PodSandboxConfig]) -> None:
    pod_id, config = pod
    cid = kube.run(pod_id, config, "exec", envs=[cri.KeyValue(key="GREETING", value=b"hi there")])
    r = kube.exec(cid, [BB, "sh", "-c", "echo $GREETING; echo err >&2; exit 3"])
    assert (r.stdout, r.stderr, r.exit_code) == (b"hi there\n", b"err\n", 3)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        kube.exec(cid, [BB, "sleep", "30"], timeout=1)
    assert code_of(e.value) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 10
    # Nothing of the exec is left running.
    assert "sleep 30" not in kube.sh(cid, f"{BB} ps -o args")
    big = kube.exec(cid, [BB, "sh", "-c", f"{BB} dd if=/dev/zero bs=1M count=2 2>/dev/null"])
    assert big.stdout == b"\0" * (2 * MiB)

    kube.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=5))
    with pytest.raises(grpc.RpcError) as e:
        kube.exec(cid, ["true"])
    assert code_of(e.value) == grpc.StatusCode.FAILED_PRECONDITION


def test_reopen_container_log(kube: Kubelet, pod: tuple[str, cri.PodSandboxConfig]) -> None:
    pod_id, config = pod
    cid = kube.run(
        pod_id, config, "ticker", [BB, "sh", "-c", "while :; do echo tick; sleep 0.1; done"]
    )
    log = Path(kube.status(cid).log_path)
    deadline = time.monotonic() + 10
    while not (log.exists() and "tick" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    rotated = log.with_name(log.name + ".1")
    log.rename(rotated)  # what the kubelet's log rotation does
    kube.rt.ReopenContainerLog(cri.ReopenContainerLogRequest(container_id=cid))
    time.sleep(0.5)
    assert "stdout F tick" in log.read_text()
    size = rotated.stat().st_size
    time.sleep(0.3)
    assert rotated.stat().st_size == size  # nothing more goes to the old file
    kube.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0))
    with pytest.raises(grpc.RpcError) as e:
        kube.rt.ReopenContainerLog(cri.ReopenContainerLogRequest(container_id=cid))
    assert code_of(e.value) == grpc.StatusCode.FAILED_PRECONDITION
