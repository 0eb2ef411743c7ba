"""Pod lifecycle around the edges: the sandbox image pulled on demand, a
failed RunPodSandbox undone (CNI DEL included), container events streamed,
daemon restarts (graceful and crash) with pods running, runtime settings."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import grpc
import pytest

from pyctr.daemon.pods import netns
from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import BB, CriEnv, Kubelet, code_of
from tests.support import cgroups
from tests.support.timing import scaled

pytestmark = pytest.mark.root


def image_known(env: CriEnv, ref: str) -> bool:
    req = cri.ImageStatusRequest(image=cri.ImageSpec(image=ref))
    return env.images.ImageStatus(req, timeout=10).HasField("image")


def test_sandbox_image_pulled_on_demand(cri_env: CriEnv, kube: Kubelet) -> None:
    assert not image_known(cri_env, cri_env.pause_ref)
    pod = kube.pod_config("first")
    pod_id = kube.run_pod(pod)
    assert image_known(cri_env, cri_env.pause_ref)
    info = kube.rt.PodSandboxStatus(
        cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
    ).info["info"]
    assert cri_env.pause_ref in info


def test_failed_run_is_undone_including_the_network(cri_env: CriEnv, kube: Kubelet) -> None:
    # runc fails to apply a sysctl that does not exist, after CNI ADD ran.
    pod = kube.pod_config("broken", sysctls={"net.ipv4.no_such_knob": "1"})
    with pytest.raises(grpc.RpcError):
        kube.run_pod(pod)
    assert list(kube.rt.ListPodSandbox(cri.ListPodSandboxRequest()).items) == []
    assert cri_env.reservations() == [] and cri_env.veths() == []
    for name in ("netns", "pods", "tasks"):
        d = cri_env.daemon.state / name
        assert not d.is_dir() or os.listdir(d) == [], name
    assert os.listdir(cri_env.daemon.root / "cni") == []
    # The name is free again: a retry of the same pod works once fixed.
    fixed = kube.pod_config("broken", uid=pod.metadata.uid)
    kube.run_pod(fixed)


class EventReader:
    def __init__(self, env: CriEnv) -> None:
        self.stream = env.rt.GetContainerEvents(cri.GetEventsRequest())
        self.events: list[cri.ContainerEventResponse] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                self.events.append(event)
        except grpc.RpcError:
            pass

    def of(self, cid: str) -> list[Any]:
        return [e.container_event_type for e in self.events if e.container_id == cid]

    def wait_for(self, cid: str, kinds: list[Any], timeout: float = 10) -> None:
        deadline = time.monotonic() + scaled(timeout)
        while self.of(cid) != kinds and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.stream.cancel()
        self.thread.join(5)


def test_container_events(cri_env: CriEnv, kube: Kubelet) -> None:
    reader = EventReader(cri_env)
    try:
        time.sleep(0.2)  # let the subscription start
        pod = kube.pod_config("events")
        pod_id = kube.run_pod(pod)
        cid = kube.run(pod_id, pod, "c", [BB, "sh", "-c", "exit 4"])
        kube.wait_state(cid, cri.CONTAINER_EXITED)
        kube.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))
        kube.stop_pod(pod_id)
        kube.remove_pod(pod_id)
        lifecycle = [
            cri.CONTAINER_CREATED_EVENT,
            cri.CONTAINER_STARTED_EVENT,
            cri.CONTAINER_STOPPED_EVENT,
            cri.CONTAINER_DELETED_EVENT,
        ]
        reader.wait_for(cid, lifecycle)
        reader.wait_for(pod_id, lifecycle)
        assert reader.of(cid) == lifecycle
        assert reader.of(pod_id) == lifecycle
        events = {e.container_event_type: e for e in reader.events if e.container_id == cid}
        stopped = events[cri.CONTAINER_STOPPED_EVENT]
        assert stopped.pod_sandbox_status.id == pod_id
        assert stopped.pod_sandbox_status.state == cri.SANDBOX_READY
        [status] = [s for s in stopped.containers_statuses if s.id == cid]
        assert status.state == cri.CONTAINER_EXITED and status.exit_code == 4
        assert stopped.created_at > 0
    finally:
        reader.close()


def test_pods_survive_daemon_restart_and_crash(cri_env: CriEnv, kube: Kubelet) -> None:
    pod = kube.pod_config("durable")
    pod_id = kube.run_pod(pod)
    cid = kube.run(pod_id, pod, "app")
    ip = kube.pod_status(pod_id).network.ip

    cri_env.restart()
    assert kube.pod_status(pod_id).state == cri.SANDBOX_READY
    assert kube.pod_status(pod_id).network.ip == ip
    assert kube.status(cid).state == cri.CONTAINER_RUNNING
    assert kube.sh(cid, "echo alive") == "alive\n"

    # A crash (SIGKILL) mid-life; meanwhile the container exits on its own,
    # and something leaves a stray namespace and pod dir behind.
    state = cri_env.daemon.state
    stray = "ab" * 32
    container_pid = int(json.loads(verbose_info(kube, cid))["pid"])
    cri_env.daemon.kill()
    os.kill(container_pid, 9)
    netns.create(state / "netns" / stray)
    (state / "pods" / stray).mkdir()
    cri_env.restart(crash=True)
    st = kube.wait_state(cid, cri.CONTAINER_EXITED)
    assert st.state == cri.CONTAINER_EXITED and st.exit_code == 137
    assert kube.pod_status(pod_id).state == cri.SANDBOX_READY
    assert not (state / "netns" / stray).exists() and not (state / "pods" / stray).exists()

    # The network is still torn down from what was recorded before the crash.
    kube.stop_pod(pod_id)
    assert cri_env.reservations() == [] and cri_env.veths() == []
    kube.remove_pod(pod_id)


def verbose_info(kube: Kubelet, cid: str) -> str:
    req = cri.ContainerStatusRequest(container_id=cid, verbose=True)
    return kube.rt.ContainerStatus(req).info["info"]


def test_runtime_settings_and_status(cri_env: CriEnv, kube: Kubelet) -> None:
    got = kube.rt.RuntimeConfig(cri.RuntimeConfigRequest())
    # The driver the kubelet must use too: the one the daemon runs with.
    assert got.linux.cgroup_driver == (cri.SYSTEMD if cgroups.SYSTEMD else cri.CGROUPFS)
    kube.rt.UpdateRuntimeConfig(
        cri.UpdateRuntimeConfigRequest(
            runtime_config=cri.RuntimeConfig(
                network_config=cri.NetworkConfig(pod_cidr="10.1.0.0/24")
            )
        )
    )
    conds = {c.type: c for c in kube.rt.Status(cri.StatusRequest()).status.conditions}
    assert conds["RuntimeReady"].status and conds["NetworkReady"].status
    with pytest.raises(grpc.RpcError) as e:
        kube.rt.RunPodSandbox(
            cri.RunPodSandboxRequest(config=kube.pod_config("h"), runtime_handler="kata")
        )
    assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        kube.rt.RunPodSandbox(cri.RunPodSandboxRequest(config=kube.pod_config("bad/name")))
    assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT
    # User namespaces of a shape pyctr does not run (tests/cri/test_userns.py has the rest).
    userns = kube.pod_config("userns")
    mapping = cri.IDMapping(host_id=100000, container_id=0, length=1000)
    userns.linux.security_context.namespace_options.userns_options.CopyFrom(
        cri.UserNamespace(mode=cri.POD, uids=[mapping], gids=[mapping])
    )
    with pytest.raises(grpc.RpcError) as e:
        kube.rt.RunPodSandbox(cri.RunPodSandboxRequest(config=userns))
    assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "at least 65536 IDs" in e.value.details()
