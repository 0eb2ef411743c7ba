"""Pod sandboxes over CRI with real runc and CNI: networking, namespaces,
pod files, the kubelet's call sequence, and what is left afterwards."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import time
from pathlib import Path

import grpc
import pytest

from pyctr.daemon.pods import netns
from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import BB, INDEX_HTML, PAUSE_SCRIPT, CriEnv, Kubelet, code_of

pytestmark = pytest.mark.root

HTTPD = [BB, "httpd", "-f", "-p", "8080", "-h", "/www"]


def wget(url: str) -> list[str]:
    # (busybox's own wget -T crashes; its timeout applet does the job)
    return [BB, "timeout", "5", BB, "wget", "-q", "-O", "-", url]


def fetch(kube: Kubelet, cid: str, url: str, attempts: int = 50) -> str:
    """wget from inside a container, retrying while the server comes up."""
    for _ in range(attempts):
        r = kube.exec(cid, wget(url))
        if r.exit_code == 0:
            return r.stdout.decode()
        time.sleep(0.1)
    raise AssertionError(f"{url} not reachable from {cid[:12]}: {r.stderr.decode()}")


def state_entries(env: CriEnv, name: str) -> list[str]:
    d = env.daemon.state / name
    return sorted(os.listdir(d)) if d.is_dir() else []


def test_pod_shares_localhost_reaches_other_pods_and_stop_releases(
    cri_env: CriEnv, kube: Kubelet
) -> None:
    web = kube.pod_config("web")
    web_id = kube.run_pod(web)
    kube.run(web_id, web, "server", HTTPD)
    client = kube.run(web_id, web, "client")
    # Two containers of one pod share the loopback interface.
    assert fetch(kube, client, "http://127.0.0.1:8080/index.html") == INDEX_HTML.decode()

    web_ip = kube.pod_status(web_id).network.ip
    assert ipaddress.ip_address(web_ip) in cri_env.subnet
    assert f"inet {web_ip}/" in kube.sh(client, f"{BB} ip -4 addr show eth0")

    other = kube.pod_config("other")
    other_id = kube.run_pod(other)
    visitor = kube.run(other_id, other, "visitor")
    other_ip = kube.pod_status(other_id).network.ip
    assert other_ip != web_ip and ipaddress.ip_address(other_ip) in cri_env.subnet
    # The second pod reaches the first over the bridge, by its pod IP...
    assert fetch(kube, visitor, f"http://{web_ip}:8080/index.html") == INDEX_HTML.decode()
    # ...but not on its own localhost: that is another namespace.
    r = kube.exec(visitor, wget("http://127.0.0.1:8080/"))
    assert r.exit_code != 0

    assert cri_env.reservations() == sorted([web_ip, other_ip])
    assert len(cri_env.veths()) == 2
    assert state_entries(cri_env, "netns") == sorted([web_id, other_id])

    kube.stop_pod(web_id)
    kube.stop_pod(other_id)
    assert cri_env.reservations() == []
    assert cri_env.veths() == []
    assert state_entries(cri_env, "netns") == []
    for pod_id in (web_id, other_id):
        st = kube.pod_status(pod_id)
        assert st.state == cri.SANDBOX_NOTREADY and st.network.ip == ""
    listed = kube.rt.ListContainers(cri.ListContainersRequest()).containers
    assert {c.state for c in listed} == {cri.CONTAINER_EXITED}

    # Stop and remove are idempotent.
    kube.stop_pod(web_id)
    kube.remove_pod(web_id)
    kube.remove_pod(web_id)
    with pytest.raises(grpc.RpcError) as e:
        kube.pod_status(web_id)
    assert code_of(e.value) == grpc.StatusCode.NOT_FOUND


def test_kubelet_sequence_leaves_nothing_behind(cri_env: CriEnv, kube: Kubelet) -> None:
    pod = kube.pod_config("seq")
    pod_id = kube.run_pod(pod)
    assert kube.pod_status(pod_id).state == cri.SANDBOX_READY
    image_ref = kube.pull(cri_env.app_ref)
    script = "echo started; echo oops >&2; trap 'echo bye; exit 0' TERM; while :; do sleep 1; done"
    config = kube.container_config("main", [BB, "sh", "-c", script])
    config.image.image = image_ref  # the kubelet passes the pulled image's ID
    config.image.user_specified_image = cri_env.app_ref
    cid = kube.create(pod_id, pod, config)
    st = kube.status(cid)
    assert st.state == cri.CONTAINER_CREATED and st.started_at == 0
    kube.start(cid)
    st = kube.wait_state(cid, cri.CONTAINER_RUNNING)
    assert st.state == cri.CONTAINER_RUNNING
    # The status names the image by its tag (the kubelet shows it), not the ID.
    assert st.image.image == cri_env.app_ref == st.image.user_specified_image
    assert st.image_id == image_ref
    assert st.image_ref.startswith(cri_env.app_ref.rsplit(":", 1)[0] + "@sha256:")
    log_path = st.log_path
    assert log_path == os.path.join(pod.log_directory, "main/0.log")
    for _ in range(100):
        if os.path.exists(log_path) and "oops" in Path(log_path).read_text():
            break
        time.sleep(0.05)
    lines = Path(log_path).read_text().splitlines()
    assert any(line.endswith(" stdout F started") for line in lines), lines
    assert any(line.endswith(" stderr F oops") for line in lines), lines

    kube.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=10), timeout=30)
    st = kube.status(cid)
    assert st.state == cri.CONTAINER_EXITED
    assert (st.exit_code, st.reason) == (0, "Completed")
    assert st.finished_at >= st.started_at > st.created_at
    kube.stop_pod(pod_id)
    kube.remove_pod(pod_id)

    assert list(kube.rt.ListPodSandbox(cri.ListPodSandboxRequest()).items) == []
    assert list(kube.rt.ListContainers(cri.ListContainersRequest()).containers) == []
    for name in ("pods", "netns", "tasks"):
        assert state_entries(cri_env, name) == [], name
    assert os.listdir(cri_env.daemon.root / "cni") == []
    assert cri_env.reservations() == [] and cri_env.veths() == []
    # The log belongs to the kubelet: it stays for it to rotate and remove.
    assert "bye" in Path(log_path).read_text()


def test_pod_files_shared_namespaces_and_sysctls(cri_env: CriEnv, kube: Kubelet) -> None:
    dns = cri.DNSConfig(
        servers=["10.96.0.10"],
        searches=["default.svc.cluster.local", "svc.cluster.local"],
        options=["ndots:5"],
    )
    pod = kube.pod_config(
        "files",
        hostname="files-0",
        dns=dns,
        sysctls={"net.ipv4.ip_unprivileged_port_start": "80", "kernel.shm_rmid_forced": "1"},
    )
    pod_id = kube.run_pod(pod)
    a = kube.run(pod_id, pod, "a")
    b = kube.run(pod_id, pod, "b")
    ip = kube.pod_status(pod_id).network.ip
    for cid in (a, b):
        assert kube.sh(cid, "hostname; echo $HOSTNAME") == "files-0\nfiles-0\n"
        assert kube.sh(cid, "cat /etc/resolv.conf") == (
            "search default.svc.cluster.local svc.cluster.local\n"
            "nameserver 10.96.0.10\noptions ndots:5\n"
        )
        assert f"{ip}\tfiles-0\n" in kube.sh(cid, "cat /etc/hosts")
        assert kube.sh(cid, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start") == "80\n"
        assert kube.sh(cid, "cat /proc/sys/kernel/shm_rmid_forced") == "1\n"
    # One /dev/shm per pod: a 64 MiB tmpfs both containers see.
    kube.sh(a, "echo shared > /dev/shm/note")
    assert kube.sh(b, "cat /dev/shm/note") == "shared\n"
    assert kube.sh(b, f"{BB} df -k /dev/shm | {BB} tail -1").split()[1] == "65536"
    # Network, IPC, UTS and (mode POD) PID namespaces are the pod's.
    ns = "for n in net ipc uts pid; do readlink /proc/self/ns/$n; done"
    assert kube.sh(a, ns.replace("readlink", f"{BB} readlink")) == kube.sh(
        b, ns.replace("readlink", f"{BB} readlink")
    )
    assert PAUSE_SCRIPT.split(";")[0] in kube.sh(a, f"{BB} cat /proc/1/cmdline | {BB} tr '\\0' ' '")
    # Another pod has other namespaces.
    other = kube.pod_config("files-other")
    other_id = kube.run_pod(other)
    c = kube.run(other_id, other, "c")
    assert kube.sh(c, f"{BB} readlink /proc/self/ns/ipc") != kube.sh(
        a, f"{BB} readlink /proc/self/ns/ipc"
    )
    assert kube.sh(c, "cat /dev/shm/note 2>/dev/null || echo none") == "none\n"


def test_pid_namespace_modes(cri_env: CriEnv, kube: Kubelet) -> None:
    pod = kube.pod_config("pids")
    pod_id = kube.run_pod(pod)
    cmdline1 = f"{BB} cat /proc/1/cmdline | {BB} tr '\\0' ' '"
    shared = kube.run(pod_id, pod, "shared")
    assert "trap 'exit 0' TERM INT" in kube.sh(shared, cmdline1)  # the pause is PID 1
    own_sc = cri.LinuxContainerSecurityContext(
        namespace_options=cri.NamespaceOption(pid=cri.CONTAINER)
    )
    own = kube.run(pod_id, pod, "own", [BB, "sh", "-c", "exec sleep 300"], security=own_sc)
    assert kube.sh(own, cmdline1).startswith("sleep 300")
    target_sc = cri.LinuxContainerSecurityContext(
        namespace_options=cri.NamespaceOption(pid=cri.TARGET, target_id=own)
    )
    debug = kube.run(pod_id, pod, "debug", security=target_sc)
    assert kube.sh(debug, cmdline1).startswith("sleep 300")
    assert kube.sh(debug, f"{BB} readlink /proc/self/ns/pid") == kube.sh(
        own, f"{BB} readlink /proc/self/ns/pid"
    )
    # A target in another pod is refused.
    other = kube.pod_config("pids-other")
    other_id = kube.run_pod(other)
    with pytest.raises(grpc.RpcError) as e:
        kube.create(other_id, other, kube.container_config("x", security=target_sc))
    assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT

    host_pod = kube.pod_config("hostpid", pid=cri.NODE)
    host_id = kube.run_pod(host_pod)
    node_sc = cri.LinuxContainerSecurityContext(namespace_options=cri.NamespaceOption(pid=cri.NODE))
    h = kube.run(host_id, host_pod, "h", security=node_sc)
    # The host's PID namespace: the daemon's own PID is visible.
    assert kube.sh(h, f"{BB} cat /proc/{cri_env.daemon.pid}/comm").strip().startswith("python")
    assert kube.sh(h, f"{BB} readlink /proc/self/ns/pid") == (
        os.readlink("/proc/self/ns/pid") + "\n"
    )


def test_host_namespaces_pod_needs_no_cni(cri_env: CriEnv, kube: Kubelet) -> None:
    pod = kube.pod_config("hostns", network=cri.NODE, ipc=cri.NODE)
    pod_id = kube.run_pod(pod)
    marker = Path("/dev/shm") / f"pyctr-test-{os.getpid()}-{random.randrange(10**6)}"
    marker.write_text("host shm\n")
    try:
        cid = kube.run(pod_id, pod, "c")
        st = kube.pod_status(pod_id)
        assert st.state == cri.SANDBOX_READY and st.network.ip == ""
        assert st.linux.namespaces.options.network == cri.NODE
        assert st.linux.namespaces.options.ipc == cri.NODE
        # The node's network namespace (here: the daemon's)...
        daemon_net = os.readlink(f"/proc/{cri_env.daemon.pid}/ns/net")
        assert kube.sh(cid, f"{BB} readlink /proc/self/ns/net") == daemon_net + "\n"
        # ...and the node's IPC namespace and /dev/shm.
        host_ipc = os.readlink("/proc/self/ns/ipc")
        assert kube.sh(cid, f"{BB} readlink /proc/self/ns/ipc") == host_ipc + "\n"
        assert kube.sh(cid, f"cat {marker}") == "host shm\n"
    finally:
        marker.unlink()
    assert cri_env.reservations() == []
    assert state_entries(cri_env, "netns") == []
    kube.stop_pod(pod_id)
    kube.remove_pod(pod_id)


def _http_get(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data


def test_port_mapping(cri_env: CriEnv, kube: Kubelet) -> None:
    port = random.randrange(30000, 32000)
    pod = kube.pod_config(
        "ports", ports=[cri.PortMapping(protocol=cri.TCP, container_port=8080, host_port=port)]
    )
    pod_id = kube.run_pod(pod)
    server = kube.run(pod_id, pod, "server", HTTPD)
    fetch(kube, server, "http://127.0.0.1:8080/index.html")
    # From the node (the host namespace), at the node's bridge address.
    reply = netns.run_in(cri_env.host_ns, lambda: _http_get(cri_env.gateway, port))
    assert reply.startswith(b"HTTP/1.") and reply.endswith(INDEX_HTML)
    kube.stop_pod(pod_id)
    nat = cri_env.host(["iptables", "-t", "nat", "-S"]).stdout
    assert str(port) not in nat


def test_network_not_ready_without_cni_config(cri_env: CriEnv, kube: Kubelet) -> None:
    conf = cri_env.conf_dir / "10-test.conflist"
    moved = cri_env.base / "10-test.conflist.off"
    conf.rename(moved)
    try:
        conds = {c.type: c for c in kube.rt.Status(cri.StatusRequest()).status.conditions}
        assert conds["RuntimeReady"].status is True
        net = conds["NetworkReady"]
        assert net.status is False and net.reason == "NetworkPluginNotReady"
        assert str(cri_env.conf_dir) in net.message
        with pytest.raises(grpc.RpcError) as e:
            kube.run_pod(kube.pod_config("nonet"))
        assert code_of(e.value) == grpc.StatusCode.FAILED_PRECONDITION
        assert state_entries(cri_env, "netns") == [] and state_entries(cri_env, "pods") == []
        # Host-network pods do not need the pod network.
        host_pod = kube.pod_config("nonet-host", network=cri.NODE)
        kube.run_pod(host_pod)
    finally:
        moved.rename(conf)
    conds = {c.type: c for c in kube.rt.Status(cri.StatusRequest()).status.conditions}
    assert conds["NetworkReady"].status is True


def test_names_ids_filters_and_idempotency(cri_env: CriEnv, kube: Kubelet) -> None:
    pod = kube.pod_config("names", labels={"app": "names", "tier": "web"})
    pod_id = kube.run_pod(pod)
    # The kubelet relies on the name reservation to detect a duplicate.
    with pytest.raises(grpc.RpcError) as e:
        kube.rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod), timeout=30)
    assert code_of(e.value) == grpc.StatusCode.ALREADY_EXISTS and pod_id in e.value.details()
    kube.pull(cri_env.app_ref)
    cid = kube.create(pod_id, pod, kube.container_config("app"))
    with pytest.raises(grpc.RpcError) as e:
        kube.create(pod_id, pod, kube.container_config("app"))
    assert code_of(e.value) == grpc.StatusCode.ALREADY_EXISTS and cid in e.value.details()
    retry = kube.create(pod_id, pod, kube.container_config("app", attempt=1))
    kube.start(cid)

    # Unique ID prefixes work wherever an ID does.
    assert kube.pod_status(pod_id[:12]).id == pod_id
    assert kube.status(cid[:12]).id == cid
    assert kube.sh(cid[:10], "echo hi") == "hi\n"

    missing = "f" * 64 if not pod_id.startswith("f") else "e" * 64
    for call, req in (
        (kube.rt.PodSandboxStatus, cri.PodSandboxStatusRequest(pod_sandbox_id=missing)),
        (kube.rt.ContainerStatus, cri.ContainerStatusRequest(container_id=missing)),
        (kube.rt.ContainerStatus, cri.ContainerStatusRequest(container_id=pod_id)),
        (kube.rt.PodSandboxStatus, cri.PodSandboxStatusRequest(pod_sandbox_id=cid)),
        (kube.rt.ExecSync, cri.ExecSyncRequest(container_id=missing, cmd=["true"])),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call(req, timeout=10)
        assert code_of(e.value) == grpc.StatusCode.NOT_FOUND, call
    # Stopping and removing what does not exist succeeds.
    kube.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=missing), timeout=10)
    kube.rt.StopContainer(cri.StopContainerRequest(container_id=missing), timeout=10)
    kube.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=missing), timeout=10)
    kube.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=missing), timeout=10)

    def pods(**f: object) -> set[str]:
        req = cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(**f))  # type: ignore[arg-type]
        return {p.id for p in kube.rt.ListPodSandbox(req).items}

    def containers(**f: object) -> set[str]:
        req = cri.ListContainersRequest(filter=cri.ContainerFilter(**f))  # type: ignore[arg-type]
        return {c.id for c in kube.rt.ListContainers(req).containers}

    assert pod_id in pods()
    assert pods(id=pod_id[:8]) == {pod_id}
    assert pods(label_selector={"tier": "web"}) == {pod_id}
    assert pods(label_selector={"tier": "db"}) == set()
    ready = cri.PodSandboxStateValue(state=cri.SANDBOX_READY)
    assert pod_id in pods(state=ready)
    assert containers(pod_sandbox_id=pod_id) == {cid, retry}
    running = cri.ContainerStateValue(state=cri.CONTAINER_RUNNING)
    assert containers(pod_sandbox_id=pod_id, state=running) == {cid}
    assert containers(id=retry[:12]) == {retry}
    assert containers(label_selector={"container": "app"}, pod_sandbox_id=pod_id) == {cid, retry}
    [summary] = [
        c for c in kube.rt.ListContainers(cri.ListContainersRequest()).containers if c.id == cid
    ]
    assert summary.metadata.name == "app" and summary.pod_sandbox_id == pod_id
    verbose = kube.rt.ContainerStatus(
        cri.ContainerStatusRequest(container_id=cid, verbose=True)
    ).info
    info = json.loads(verbose["info"])
    assert info["sandboxID"] == pod_id and info["runtimeSpec"]["process"]["args"][0] == BB
    pverbose = kube.rt.PodSandboxStatus(
        cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
    )
    assert json.loads(pverbose.info["info"])["netns"].endswith(pod_id)
    assert {s.id for s in pverbose.containers_statuses} == {cid, retry}

    # Stop and remove of a container: idempotent.
    stop = cri.StopContainerRequest(container_id=cid, timeout=5)
    kube.rt.StopContainer(stop, timeout=30)
    kube.rt.StopContainer(stop, timeout=30)
    kube.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=30)
    kube.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=30)
    assert containers(pod_sandbox_id=pod_id) == {retry}
    # RemovePodSandbox removes the containers left in it.
    kube.remove_pod(pod_id)
    assert containers() & {retry} == set()
