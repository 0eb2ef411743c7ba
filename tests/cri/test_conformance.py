"""The RuntimeService as critest and a kubelet (1.26-1.34) exercise it, from outside.

Each check states an expectation those clients have of any CRI runtime (and
that containerd meets): what idempotent calls answer for unknown IDs, the
fields the kubelet refuses a status without, timestamps in nanoseconds,
exit codes and reasons, the image fields the kubelet shows (image), keys its
image GC on (image_ref / image_id) and compares with ListImages' IDs, filters
that answer empty lists rather than errors (events: test_conformance_events).

One pod (run the way critest runs its pods: no log directory, hostname or
cgroup parent, names with capitals and UUIDs) serves the tests that only add
containers to it; each test removes what it created.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import BB, SLEEPER, CriEnv, Kubelet, code_of
from tests.cri.expectations import (
    NOT_FOUND,
    POD_UID,
    critest_pod,
    plausible_ns,
    verify_container_status,
    verify_sandbox_status,
)
from tests.support import cgroups

pytestmark = pytest.mark.root


@dataclass
class SharedPod:
    kube: Kubelet
    pod_id: str
    config: cri.PodSandboxConfig
    image_id: str
    made: list[str] = field(default_factory=list)

    def create(self, name: str, command: list[str] | None = None, **kw: Any) -> str:
        config = self.kube.container_config(name, command, **kw)
        # The kubelet creates containers from the pulled image's ID and keeps
        # what the pod spec said in user_specified_image.
        config.image.user_specified_image = config.image.image
        config.image.image = self.image_id
        cid = self.kube.create(self.pod_id, self.config, config)
        self.made.append(cid)
        return cid

    def run(self, name: str, command: list[str] | None = None, **kw: Any) -> str:
        cid = self.create(name, command, **kw)
        self.kube.start(cid)
        return cid

    def remove_made(self) -> None:
        for cid in self.made:
            self.kube.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=30)
        self.made.clear()


@pytest.fixture(scope="module")
def shared_pod(cri_env: CriEnv) -> Iterator[SharedPod]:
    kube = Kubelet(cri_env)
    try:
        image_id = kube.pull(cri_env.app_ref)
        config = kube.pod_config("Shared-Pod-" + uuid.uuid4().hex[:8])
        pod_id = kube.run_pod(config)
        yield SharedPod(kube, pod_id, config, image_id)
    finally:
        kube.cleanup()


@pytest.fixture
def pod(shared_pod: SharedPod) -> Iterator[SharedPod]:
    try:
        yield shared_pod
    finally:
        shared_pod.remove_made()


# -- runtime-wide ------------------------------------------------------------------


def test_version_status_and_runtime_config(cri_env: CriEnv) -> None:
    rt = cri_env.rt
    v = rt.Version(cri.VersionRequest(version="0.1.0"))
    assert (v.version, v.runtime_name, v.runtime_api_version) == ("0.1.0", "pyctr", "v1")
    assert v.runtime_version

    status = rt.Status(cri.StatusRequest(verbose=True))
    conds = {c.type: c for c in status.status.conditions}
    assert conds["RuntimeReady"].status and conds["NetworkReady"].status
    assert status.info  # crictl info shows it
    # The node's status shows these; the kubelet refuses pods that need a
    # feature the runtime does not claim (Strict supplemental groups, user
    # namespaces, recursive read-only mounts).
    assert status.features.supplemental_groups_policy
    handlers = {h.name: h.features for h in status.runtime_handlers}
    # crun is listed where it can run pods: installed, and not on this
    # hybrid-cgroup host (tests/cri/test_handlers.py has the details).
    assert set(handlers) - {"crun"} == {"", "runc", "alt"}
    for features in handlers.values():
        # runc 1.1 lists `rro` in `runc features` and this kernel has mount_setattr;
        # user namespaces need only the kernel (pyctr ID-maps the mounts itself).
        assert features.user_namespaces and features.recursive_read_only_mounts

    # The kubelet (1.28+) takes its cgroup driver from here, and so does critest.
    linux = rt.RuntimeConfig(cri.RuntimeConfigRequest()).linux
    assert linux.cgroup_driver == (cri.SYSTEMD if cgroups.SYSTEMD else cri.CGROUPFS)
    # What the kubelet sends once it knows the node's pod CIDR, and an empty one.
    for cidr in ("10.244.1.0/24", ""):
        net = cri.NetworkConfig(pod_cidr=cidr)
        rt.UpdateRuntimeConfig(
            cri.UpdateRuntimeConfigRequest(runtime_config=cri.RuntimeConfig(network_config=net))
        )
    # critest runs its metrics tests when these answer (tests/cri/test_metrics.py has the rest).
    descriptors = rt.ListMetricDescriptors(cri.ListMetricDescriptorsRequest()).descriptors
    assert "container_cpu_usage_seconds_total" in {d.name for d in descriptors}
    rt.ListPodSandboxMetrics(cri.ListPodSandboxMetricsRequest())


def test_unknown_ids_idempotent_calls_and_not_found(cri_env: CriEnv) -> None:
    """critest's Idempotence suite, with the UUIDs it uses as unknown IDs."""
    rt = cri_env.rt
    for unknown in (str(uuid.uuid4()), "f" * 64, "0123456789ab"):
        rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=unknown), timeout=10)
        rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=unknown), timeout=10)
        rt.StopContainer(cri.StopContainerRequest(container_id=unknown, timeout=0), timeout=10)
        rt.RemoveContainer(cri.RemoveContainerRequest(container_id=unknown), timeout=10)
        # Status and stats calls say NOT_FOUND: the kubelet reads that as "gone".
        for call, req in (
            (rt.PodSandboxStatus, cri.PodSandboxStatusRequest(pod_sandbox_id=unknown)),
            (rt.ContainerStatus, cri.ContainerStatusRequest(container_id=unknown)),
            (rt.ContainerStats, cri.ContainerStatsRequest(container_id=unknown)),
            (rt.PodSandboxStats, cri.PodSandboxStatsRequest(pod_sandbox_id=unknown)),
        ):
            with pytest.raises(grpc.RpcError) as e:
                call(req, timeout=10)
            assert code_of(e.value) == NOT_FOUND, (call, unknown)
    fake_image = cri.ImageSpec(image="0" * 64)
    for _ in range(2):
        cri_env.images.RemoveImage(cri.RemoveImageRequest(image=fake_image), timeout=10)


# -- pods --------------------------------------------------------------------------


def test_critest_pod_attributes_filters_and_lifecycle(cri_env: CriEnv, kube: Kubelet) -> None:
    since = time.time_ns()
    config = critest_pod("PodSandbox-with-attributes-", labels={"foo": "bar"})
    pod_id = kube.run_pod(config)
    st = kube.pod_status(pod_id)
    verify_sandbox_status(st)
    assert st.id == pod_id and st.state == cri.SANDBOX_READY
    assert st.metadata == config.metadata
    assert dict(st.labels) == dict(config.labels)
    assert dict(st.annotations) == {"abc": "def"}
    plausible_ns(st.created_at, since)
    assert st.network.ip.startswith(str(cri_env.subnet.network_address).rsplit(".", 1)[0])
    ns = st.linux.namespaces.options
    assert (ns.network, ns.pid, ns.ipc) == (cri.POD, cri.POD, cri.POD)
    resp = kube.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    plausible_ns(resp.timestamp, since)
    assert list(resp.containers_statuses) == []

    def listed(f: cri.PodSandboxFilter | None = None) -> list[cri.PodSandbox]:
        return list(kube.rt.ListPodSandbox(cri.ListPodSandboxRequest(filter=f)).items)

    [item] = listed(cri.PodSandboxFilter(id=pod_id))
    assert item.metadata == config.metadata and item.state == cri.SANDBOX_READY
    assert dict(item.labels) == dict(config.labels) and item.created_at == st.created_at
    assert [p.id for p in listed(cri.PodSandboxFilter(id=pod_id[:13]))] == [pod_id]
    assert pod_id in {p.id for p in listed()} | {p.id for p in listed(cri.PodSandboxFilter())}
    ready = cri.PodSandboxStateValue(state=cri.SANDBOX_READY)
    notready = cri.PodSandboxStateValue(state=cri.SANDBOX_NOTREADY)
    by_uid = {POD_UID: config.metadata.uid}
    assert [p.id for p in listed(cri.PodSandboxFilter(label_selector=by_uid))] == [pod_id]
    assert [p.id for p in listed(cri.PodSandboxFilter(state=ready, label_selector=by_uid))] == [
        pod_id
    ]
    # Filters on values nothing has answer empty lists, never errors.
    for f in (
        cri.PodSandboxFilter(state=notready, label_selector=by_uid),
        cri.PodSandboxFilter(id=str(uuid.uuid4())),
        cri.PodSandboxFilter(id="0" * 64),
        cri.PodSandboxFilter(label_selector={"foo": "baz"}),
        cri.PodSandboxFilter(label_selector={"no-such-label": ""}),
    ):
        assert listed(f) == [], f

    # Stop twice (critest Idempotence), then the pod is NOTREADY and has no IP.
    kube.stop_pod(pod_id)
    kube.stop_pod(pod_id)
    st = kube.pod_status(pod_id)
    verify_sandbox_status(st)
    assert st.state == cri.SANDBOX_NOTREADY and st.network.ip == ""
    assert [p.id for p in listed(cri.PodSandboxFilter(state=notready, label_selector=by_uid))] == [
        pod_id
    ]
    assert listed(cri.PodSandboxFilter(state=ready, label_selector=by_uid)) == []
    kube.remove_pod(pod_id)
    kube.remove_pod(pod_id)
    assert listed(cri.PodSandboxFilter(id=pod_id)) == []
    with pytest.raises(grpc.RpcError) as e:
        kube.pod_status(pod_id)
    assert code_of(e.value) == NOT_FOUND


def test_containers_in_a_stopped_or_removed_pod_are_refused_cleanly(
    cri_env: CriEnv, kube: Kubelet
) -> None:
    config = kube.pod_config("Doomed")
    pod_id = kube.run_pod(config)
    kube.pull(cri_env.app_ref)
    early = kube.create(pod_id, config, kube.container_config("early"))
    kube.stop_pod(pod_id)
    with pytest.raises(grpc.RpcError) as e:
        kube.create(pod_id, config, kube.container_config("late"))
    assert code_of(e.value) == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as e:
        kube.start(early)
    assert code_of(e.value) == grpc.StatusCode.FAILED_PRECONDITION
    f = cri.ContainerFilter(pod_sandbox_id=pod_id)
    listed = kube.rt.ListContainers(cri.ListContainersRequest(filter=f)).containers
    assert [c.id for c in listed] == [early]
    assert kube.status(early).state == cri.CONTAINER_CREATED
    kube.remove_pod(pod_id)
    with pytest.raises(grpc.RpcError) as e:
        kube.create(pod_id, config, kube.container_config("later"))
    assert code_of(e.value) == NOT_FOUND
    assert list(kube.rt.ListContainers(cri.ListContainersRequest(filter=f)).containers) == []


# -- containers --------------------------------------------------------------------


def test_container_status_fields_timestamps_and_exit_reasons(
    cri_env: CriEnv, pod: SharedPod
) -> None:
    kube, since = pod.kube, time.time_ns()
    cid = pod.create("main", SLEEPER, annotations={"note": "x"})
    st = kube.status(cid)
    verify_container_status(st)
    assert st.state == cri.CONTAINER_CREATED
    assert st.metadata == cri.ContainerMetadata(name="main", attempt=0)
    plausible_ns(st.created_at, since)
    assert (st.started_at, st.finished_at, st.exit_code, st.reason) == (0, 0, 0, "")
    assert st.labels["container"] == "main" and st.annotations["note"] == "x"
    # The signal a stop will send: SIGTERM by default, else the image's.
    assert st.stop_signal == cri.SIGNAL_SIGTERM
    kube.pull(cri_env.stopsig_ref)
    config = kube.container_config("stopsig", image=cri_env.stopsig_ref)
    pod.made.append(kube.create(pod.pod_id, pod.config, config))
    assert kube.status(pod.made[-1]).stop_signal == cri.SIGNAL_SIGUSR1
    # The full path: the pod's log directory joined with the container's log_path.
    assert st.log_path == f"{pod.config.log_directory}/main/0.log"

    # Image fields as containerd gives them: the tag the image is known by
    # (the kubelet shows it as the pod's containerStatuses[].image), the repo
    # digest (containerStatuses[].imageID) and the image's ID.
    repo = cri_env.app_ref.rsplit(":", 1)[0]
    assert st.image.image == cri_env.app_ref
    assert st.image.user_specified_image == cri_env.app_ref
    assert st.image_ref.startswith(repo + "@sha256:") and len(st.image_ref) == len(repo) + 72
    assert st.image_id == pod.image_id
    image = cri_env.images.ImageStatus(
        cri.ImageStatusRequest(image=cri.ImageSpec(image=pod.image_id))
    ).image
    assert st.image_ref in image.repo_digests
    # ListContainers: the spec as created, and image_ref = the image ID, which
    # the kubelet's image GC (before 1.30: ImageRef only) matches to ListImages.
    f = cri.ContainerFilter(id=cid)
    [c] = kube.rt.ListContainers(cri.ListContainersRequest(filter=f)).containers
    assert c.image.image == pod.image_id
    assert c.image_ref == c.image_id == image.id == pod.image_id
    assert (c.pod_sandbox_id, c.metadata, c.state) == (pod.pod_id, st.metadata, st.state)
    assert c.created_at == st.created_at

    kube.start(cid)
    st = kube.status(cid)
    assert st.state == cri.CONTAINER_RUNNING and st.finished_at == 0
    plausible_ns(st.started_at, since)
    assert st.started_at >= st.created_at

    exits = {
        "zero": ([BB, "true"], 0, "Completed"),
        "one": ([BB, "sh", "-c", "exit 1"], 1, "Error"),
        "killed": ([BB, "sh", "-c", "kill -KILL $$"], 137, "Error"),
    }
    made = {name: pod.run(name, command) for name, (command, _, _) in exits.items()}
    for name, (_, code, reason) in exits.items():
        st = kube.wait_state(made[name], cri.CONTAINER_EXITED)
        verify_container_status(st)
        assert (st.state, st.exit_code, st.reason) == (cri.CONTAINER_EXITED, code, reason), name
        plausible_ns(st.finished_at, since)
        assert st.created_at <= st.started_at <= st.finished_at, name

    # A process that cannot start: StartError, 128, why, and no start time.
    broken = pod.create("broken", ["/no/such/binary"])
    with pytest.raises(grpc.RpcError):
        kube.start(broken)
    st = kube.status(broken)
    verify_container_status(st)
    assert (st.state, st.exit_code, st.reason) == (cri.CONTAINER_EXITED, 128, "StartError")
    assert "/no/such/binary" in st.message and st.started_at == 0
    plausible_ns(st.finished_at, since)


def test_list_container_filters(pod: SharedPod) -> None:
    kube = pod.kube
    running = pod.run("lister", labels={"container": "lister", "tier": "a"})
    created = pod.create("lister-new", labels={"container": "lister-new", "tier": "a"})

    def ids(f: cri.ContainerFilter | None = None) -> set[str]:
        return {
            c.id for c in kube.rt.ListContainers(cri.ListContainersRequest(filter=f)).containers
        }

    state = cri.ContainerStateValue
    assert {running, created} <= ids() and {running, created} <= ids(cri.ContainerFilter())
    assert ids(cri.ContainerFilter(id=running)) == {running}
    assert ids(cri.ContainerFilter(id=created[:12])) == {created}
    assert ids(cri.ContainerFilter(pod_sandbox_id=pod.pod_id)) == {running, created}
    assert ids(cri.ContainerFilter(pod_sandbox_id=pod.pod_id[:12])) == {running, created}
    assert ids(cri.ContainerFilter(label_selector={"tier": "a"})) == {running, created}
    assert ids(
        cri.ContainerFilter(state=state(state=cri.CONTAINER_RUNNING), label_selector={"tier": "a"})
    ) == {running}
    assert ids(
        cri.ContainerFilter(state=state(state=cri.CONTAINER_CREATED), pod_sandbox_id=pod.pod_id)
    ) == {created}
    for f in (
        cri.ContainerFilter(id=str(uuid.uuid4())),
        cri.ContainerFilter(id="0" * 64),
        cri.ContainerFilter(pod_sandbox_id="0" * 64),
        cri.ContainerFilter(pod_sandbox_id=str(uuid.uuid4())),
        cri.ContainerFilter(label_selector={"tier": "b"}),
        cri.ContainerFilter(id=running, pod_sandbox_id="0" * 64),
        cri.ContainerFilter(state=state(state=cri.CONTAINER_EXITED), label_selector={"tier": "a"}),
        # A pod's ID is not a container's.
        cri.ContainerFilter(id=pod.pod_id),
    ):
        assert ids(f) == set(), f


def test_stop_remove_and_name_conflicts(pod: SharedPod) -> None:
    kube = pod.kube
    stubborn = pod.run("stubborn", [BB, "sh", "-c", "trap '' TERM; while :; do sleep 1; done"])
    started = time.monotonic()
    # timeout 0: no grace period, SIGKILL at once.
    kube.rt.StopContainer(cri.StopContainerRequest(container_id=stubborn, timeout=0), timeout=30)
    assert time.monotonic() - started < 3
    st = kube.status(stubborn)
    assert (st.state, st.exit_code, st.reason) == (cri.CONTAINER_EXITED, 137, "Error")
    # Stopping an exited container succeeds and changes nothing.
    kube.rt.StopContainer(cri.StopContainerRequest(container_id=stubborn, timeout=10), timeout=30)
    assert kube.status(stubborn).finished_at == st.finished_at

    # One name and attempt per pod: the kubelet reads ALREADY_EXISTS as "made".
    with pytest.raises(grpc.RpcError) as e:
        pod.create("stubborn")
    assert code_of(e.value) == grpc.StatusCode.ALREADY_EXISTS and stubborn in e.value.details()
    retry = pod.create("stubborn", attempt=1)

    # Removing a running container (critest) stops it first; twice is fine.
    live = pod.run("live")
    for cid in (stubborn, stubborn, live, retry):
        kube.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=30)
    for cid in (stubborn, live, retry):
        for call, req in (
            (kube.rt.ContainerStatus, cri.ContainerStatusRequest(container_id=cid)),
            (kube.rt.ContainerStats, cri.ContainerStatsRequest(container_id=cid)),
        ):
            with pytest.raises(grpc.RpcError) as e:
                call(req, timeout=10)
            assert code_of(e.value) == NOT_FOUND
        kube.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=5), timeout=30)
    # The name is free again once its container is removed.
    pod.create("stubborn")


def test_volume_through_a_symlink_and_mounts_in_status(pod: SharedPod, tmp_path: Path) -> None:
    # critest: a host path that is a symlink; ContainerStatus.mounts echo the
    # request (the kubelet finds the termination-message file through them).
    real = tmp_path / "volume"
    real.mkdir()
    (real / "testVolume.file").write_text("")
    link = tmp_path / "volume-symlink"
    link.symlink_to(real)
    mount = cri.Mount(container_path=str(link), host_path=str(link), selinux_relabel=True)
    cid = pod.run("volume", mounts=[mount])
    assert pod.kube.sh(cid, f"ls -A {link}") == "testVolume.file\n"
    [m] = pod.kube.status(cid).mounts
    assert (m.container_path, m.host_path, m.readonly) == (str(link), str(link), False)
    assert m.propagation == cri.PROPAGATION_PRIVATE and m.selinux_relabel


def test_run_as_group_needs_a_user(pod: SharedPod) -> None:
    # critest: refused, as containerd refuses it (the kubelet always sends
    # run_as_user or run_as_username, from the image if the pod has none).
    group_only = cri.LinuxContainerSecurityContext(run_as_group=cri.Int64Value(value=1002))
    with pytest.raises(grpc.RpcError) as e:
        pod.create("group-only", security=group_only)
    assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT
    both = cri.LinuxContainerSecurityContext(
        run_as_user=cri.Int64Value(value=1001), run_as_group=cri.Int64Value(value=1002)
    )
    cid = pod.run("group-only", security=both)  # the name was not taken
    assert pod.kube.sh(cid, "echo $(id -u):$(id -g)") == "1001:1002\n"
    user = pod.kube.status(cid).user.linux
    assert (user.uid, user.gid, list(user.supplemental_groups)) == (1001, 1002, [1002])


def test_exec_sync_and_streaming_urls(pod: SharedPod) -> None:
    kube = pod.kube
    cid = pod.run("execer")
    r = kube.rt.ExecSync(
        cri.ExecSyncRequest(container_id=cid, cmd=["echo", "-n", "hello"], timeout=30), timeout=40
    )
    assert (r.stdout, r.stderr, r.exit_code) == (b"hello", b"", 0)
    # timeout 0 is no timeout at all.
    slow = [BB, "sh", "-c", "sleep 1.2; echo done; echo oops >&2; exit 7"]
    r = kube.rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=slow, timeout=0), timeout=30)
    assert (r.stdout, r.stderr, r.exit_code) == (b"done\n", b"oops\n", 7)

    urls = [
        kube.rt.Exec(
            cri.ExecRequest(container_id=cid, cmd=["sh"], stdin=True, stdout=True, tty=True)
        ).url,
        kube.rt.Attach(cri.AttachRequest(container_id=cid, stdout=True, stderr=True)).url,
        kube.rt.PortForward(cri.PortForwardRequest(pod_sandbox_id=pod.pod_id, port=[80])).url,
    ]
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        assert parts.scheme in ("http", "https") and parts.hostname and parts.port, url
    assert len(set(urls)) == 3  # each request its own token
    for req in (
        cri.ExecRequest(container_id=cid, cmd=[], stdout=True),
        cri.ExecRequest(container_id=cid, cmd=["sh"], stdout=True, stderr=True, tty=True),
        cri.ExecRequest(container_id=cid, cmd=["sh"]),
    ):
        with pytest.raises(grpc.RpcError) as e:
            kube.rt.Exec(req)
        assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT, req
    with pytest.raises(grpc.RpcError) as e:
        kube.rt.Exec(cri.ExecRequest(container_id="0" * 64, cmd=["sh"], stdout=True))
    assert code_of(e.value) == NOT_FOUND


# -- stats ---------------------------------------------------------------------------


def test_container_and_pod_stats_with_filters(pod: SharedPod) -> None:
    kube, since = pod.kube, time.time_ns()
    running = pod.run("stats-run", labels={"container": "stats-run", "foo": "bar"})
    created = pod.create("stats-new", labels={"container": "stats-new"})
    done = pod.run("stats-done", [BB, "true"], labels={"container": "stats-done"})
    kube.wait_state(done, cri.CONTAINER_EXITED)

    stats = kube.rt.ContainerStats(cri.ContainerStatsRequest(container_id=running)).stats
    assert stats.attributes.id == running and stats.attributes.metadata.name == "stats-run"
    assert stats.attributes.labels["foo"] == "bar"
    assert stats.cpu.timestamp != 0 and stats.memory.timestamp != 0  # critest
    plausible_ns(stats.cpu.timestamp, since)
    layer = stats.writable_layer
    assert layer.fs_id.mountpoint and layer.HasField("used_bytes")
    assert layer.HasField("inodes_used")
    plausible_ns(layer.timestamp, since)

    def listed(f: cri.ContainerStatsFilter | None = None) -> dict[str, cri.ContainerStats]:
        req = cri.ListContainerStatsRequest(filter=f)
        return {s.attributes.id: s for s in kube.rt.ListContainerStats(req).stats}

    # Like containerd, every container not yet removed has stats: the
    # kubelet counts exited containers' writable layers in the pod's
    # ephemeral storage.
    everything = listed()
    assert {running, created, done} <= set(everything) and listed(cri.ContainerStatsFilter()).keys()
    assert everything[done].writable_layer.HasField("used_bytes")
    assert not everything[done].cpu.HasField("usage_core_nano_seconds")
    assert set(listed(cri.ContainerStatsFilter(id=running))) == {running}
    assert set(listed(cri.ContainerStatsFilter(pod_sandbox_id=pod.pod_id))) == {
        running,
        created,
        done,
    }
    assert set(listed(cri.ContainerStatsFilter(label_selector={"foo": "bar"}))) == {running}
    for f in (
        cri.ContainerStatsFilter(label_selector={"foo": "baz"}),
        cri.ContainerStatsFilter(id=str(uuid.uuid4())),
        cri.ContainerStatsFilter(pod_sandbox_id="0" * 64),
    ):
        assert listed(f) == {}, f

    ps = kube.rt.PodSandboxStats(cri.PodSandboxStatsRequest(pod_sandbox_id=pod.pod_id)).stats
    assert ps.attributes.id == pod.pod_id and ps.attributes.metadata == pod.config.metadata
    assert ps.linux.cpu.timestamp != 0 and ps.linux.memory.timestamp != 0
    assert running in {c.attributes.id for c in ps.linux.containers}

    def pods(f: cri.PodSandboxStatsFilter | None = None) -> set[str]:
        req = cri.ListPodSandboxStatsRequest(filter=f)
        return {s.attributes.id for s in kube.rt.ListPodSandboxStats(req).stats}

    assert pod.pod_id in pods() and pods(cri.PodSandboxStatsFilter(id=pod.pod_id)) == {pod.pod_id}
    assert pods(cri.PodSandboxStatsFilter(label_selector=dict(pod.config.labels))) == {pod.pod_id}
    assert pods(cri.PodSandboxStatsFilter(id=str(uuid.uuid4()))) == set()
    assert pods(cri.PodSandboxStatsFilter(label_selector={"app": "nothing"})) == set()
