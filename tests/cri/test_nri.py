"""NRI plugins against the real socket: events, adjustments, updates, failures.

The plugin is tests/support/nri_plugin.py, an implementation of the plugin end
of the wire written apart from the daemon's (daemon/nri), speaking to pyctrd's
NRI socket the way a plugin built on containerd's NRI stub does. The kubelet
side is the real CRI, runc, kernel and CNI of tests/cri.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pyctr.proto import cri_pb2 as cri
from pyctr.proto import nri_pb2 as nri
from tests.cri.conftest import BB, CriEnv, Kubelet, code_of
from tests.support.daemon import DaemonError, dump_toml
from tests.support.nri_plugin import Plugin, PluginError
from tests.support.timing import scaled

pytestmark = pytest.mark.root

CONTAINER_LIFECYCLE = [
    "CreateContainer", "PostCreateContainer", "StartContainer", "PostStartContainer",
    "UpdateContainer", "PostUpdateContainer", "StopContainer", "RemoveContainer",
]  # fmt: skip


def socket_of(env: CriEnv) -> str:
    return str(env.daemon.base / "nri" / "nri.sock")


@pytest.fixture
def plugins(cri_env: CriEnv) -> Iterator[list[Plugin]]:
    """Plugins a test connects; all closed at the end, and the daemon left with none."""
    made: list[Plugin] = []
    yield made
    for p in made:
        p.close()
    deadline = time.monotonic() + scaled(10)
    while nri_ls(cri_env)["plugins"] and time.monotonic() < deadline:
        time.sleep(0.05)


def connect(env: CriEnv, made: list[Plugin], name: str, idx: str = "10", **kw: Any) -> Plugin:
    p = Plugin(socket_of(env), name=name, idx=idx, **kw)
    made.append(p)
    return p


def nri_ls(env: CriEnv) -> dict[str, Any]:
    out = env.daemon.ctl("-o", "json", "nri", "ls")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def spec_of(kube: Kubelet, cid: str) -> dict[str, Any]:
    info = kube.status(cid, verbose=True)
    req = cri.ContainerStatusRequest(container_id=cid, verbose=True)
    info = json.loads(kube.rt.ContainerStatus(req, timeout=10).info["info"])
    return dict(info["runtimeSpec"])


def names_in_pod(kube: Kubelet, pod_id: str) -> list[str]:
    req = cri.ListContainersRequest(filter=cri.ContainerFilter(pod_sandbox_id=pod_id))
    return [c.metadata.name for c in kube.rt.ListContainers(req, timeout=10).containers]


def test_every_event_in_lifecycle_order(
    cri_env: CriEnv, kube: Kubelet, plugins: list[Plugin]
) -> None:
    p = connect(cri_env, plugins, "watcher")
    p.start()
    assert p.configure_request.runtime_name == "pyctr"
    assert p.configure_request.request_timeout == 2000  # ms, the default
    listed = nri_ls(cri_env)
    assert listed["enabled"] and listed["socket"] == socket_of(cri_env)
    (entry,) = listed["plugins"]
    assert (entry["index"], entry["name"], entry["kind"]) == ("10", "watcher", "external")
    assert entry["synchronized"] and "CREATE_CONTAINER" in entry["events"]
    info = cri_env.daemon.ctl("info").stdout
    assert "10-watcher" in info

    config = kube.pod_config("nri-life")
    pod_id = kube.run_pod(config)
    cid = kube.run(pod_id, config, "app")
    update = cri.UpdateContainerResourcesRequest(
        container_id=cid, linux=cri.LinuxContainerResources(cpu_shares=512)
    )
    kube.rt.UpdateContainerResources(update, timeout=30)
    kube.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=10), timeout=30)
    kube.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=30)
    kube.stop_pod(pod_id)
    kube.stop_pod(pod_id)  # idempotent: one StopPodSandbox event
    kube.remove_pod(pod_id)
    p.wait_for(lambda: "RemovePodSandbox" in p.events_for(pod_id))
    assert p.events_for(pod_id) == ["RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"]
    assert p.events_for(cid) == CONTAINER_LIFECYCLE

    create = next(m for name, m in p.received if name == "CreateContainer")
    assert create.pod.id == pod_id and create.pod.namespace == config.metadata.namespace
    assert create.pod.name == config.metadata.name and create.pod.uid == config.metadata.uid
    assert create.container.id == cid and create.container.name == "app"
    assert create.container.pod_sandbox_id == pod_id
    assert create.container.state == nri.CONTAINER_CREATED
    assert list(create.container.args)[:2] == [BB, "sh"]
    assert create.container.labels["container"] == "app"
    upd = next(m for name, m in p.received if name == "UpdateContainer")
    assert upd.linux_resources.cpu.shares.value == 512


def test_adjustments_reach_runc(
    cri_env: CriEnv, kube: Kubelet, plugins: list[Plugin], tmp_path: Path
) -> None:
    shared = tmp_path / "from-plugin"
    shared.mkdir()
    (shared / "note").write_text("mounted by a plugin\n")

    def adjust(req: Any) -> nri.CreateContainerResponse:
        a = nri.ContainerAdjustment()
        a.annotations["example.com/placed-by"] = "nri-test"
        a.env.add(key="FROM_PLUGIN", value="yes")
        a.env.add(key="-DROP_ME")
        a.mounts.add(destination="/plugin", type="bind", source=str(shared),
                     options=["rbind", "ro"])  # fmt: skip
        a.rlimits.add(type="RLIMIT_NOFILE", hard=4321, soft=1234)
        a.linux.resources.memory.limit.value = 96 * 1024 * 1024
        a.linux.resources.pids.limit = 77
        a.linux.oom_score_adj.value = 789
        return nri.CreateContainerResponse(adjust=a)

    p = connect(cri_env, plugins, "adjuster", events=["CREATE_CONTAINER"])
    p.handlers["CreateContainer"] = adjust
    p.start()
    config = kube.pod_config("nri-adjust")
    pod_id = kube.run_pod(config)
    cid = kube.run(pod_id, config, "app", envs=[cri.KeyValue(key="DROP_ME", value=b"1")])
    env = kube.sh(cid, f"{BB} env")
    assert "FROM_PLUGIN=yes" in env and "DROP_ME" not in env
    assert kube.sh(cid, f"{BB} cat /plugin/note") == "mounted by a plugin\n"
    assert "Read-only" in kube.exec(cid, [BB, "touch", "/plugin/x"]).stderr.decode()
    # The container's init, from the host: runc 1.1.5 (Go 1.19) races its own
    # soft NOFILE raise against the limits it sets for an exec, so an exec's
    # may be off.
    req = cri.ContainerStatusRequest(container_id=cid, verbose=True)
    pid = json.loads(kube.rt.ContainerStatus(req, timeout=10).info["info"])["pid"]
    limits = Path(f"/proc/{pid}/limits").read_text()
    (nofile,) = [line.split()[3:5] for line in limits.splitlines() if "open files" in line]
    assert nofile == ["1234", "4321"]
    assert kube.sh(cid, f"{BB} cat /proc/self/oom_score_adj").strip() == "789"
    limit = kube.sh(
        cid,
        f"{BB} cat /sys/fs/cgroup/memory.max 2>/dev/null"
        f" || {BB} cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    )
    assert limit.strip() == str(96 * 1024 * 1024)
    spec = spec_of(kube, cid)
    assert spec["annotations"]["example.com/placed-by"] == "nri-test"
    assert spec["linux"]["resources"]["pids"] == {"limit": 77}


def test_conflicting_plugins_refused_then_retry(
    cri_env: CriEnv, kube: Kubelet, plugins: list[Plugin]
) -> None:
    def setter(value: str) -> Any:
        def handle(req: Any) -> nri.CreateContainerResponse:
            a = nri.ContainerAdjustment()
            a.env.add(key="OWNER", value=value)
            return nri.CreateContainerResponse(adjust=a)

        return handle

    first = connect(cri_env, plugins, "first", "10", events=["CREATE_CONTAINER"])
    first.handlers["CreateContainer"] = setter("first")
    second = connect(cri_env, plugins, "second", "20", events=["CREATE_CONTAINER"])
    second.handlers["CreateContainer"] = setter("second")
    first.start()
    second.start()
    assert [e["name"] for e in nri_ls(cri_env)["plugins"]] == ["first", "second"]
    config = kube.pod_config("nri-conflict")
    pod_id = kube.run_pod(config)
    kube.pull(cri_env.app_ref)
    with pytest.raises(grpc.RpcError) as e:
        kube.create(pod_id, config, kube.container_config("app"))
    assert code_of(e.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "10-first" in e.value.details() and "20-second" in e.value.details()
    assert "env OWNER" in e.value.details()
    assert names_in_pod(kube, pod_id) == []
    # The second sees the container as the first left it (index order).
    seen = next(m for n, m in second.received if n == "CreateContainer")
    assert "OWNER=first" in seen.container.env

    second.close()
    second.closed.wait(5)
    cid = kube.create(pod_id, config, kube.container_config("app"))  # same name: nothing leaked
    kube.start(cid)
    assert "OWNER=first" in kube.sh(cid, f"{BB} env")


def test_plugin_error_fails_create_cleanly(
    cri_env: CriEnv, kube: Kubelet, plugins: list[Plugin]
) -> None:
    refuse = threading.Event()
    refuse.set()

    def gate(req: Any) -> nri.CreateContainerResponse:
        if refuse.is_set():
            raise PluginError(9, "quota exhausted for this namespace")
        return nri.CreateContainerResponse()

    p = connect(cri_env, plugins, "gate", events=["CREATE_CONTAINER", "RUN_POD_SANDBOX"])
    p.handlers["CreateContainer"] = gate
    p.start()
    config = kube.pod_config("nri-refused")
    pod_id = kube.run_pod(config)
    kube.pull(cri_env.app_ref)
    snapshots = len(cri_env.daemon.ctl("snapshots", "ls", "-q").stdout.split())
    with pytest.raises(grpc.RpcError) as e:
        kube.create(pod_id, config, kube.container_config("app"))
    assert code_of(e.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "10-gate" in e.value.details() and "quota exhausted" in e.value.details()
    assert names_in_pod(kube, pod_id) == []
    assert len(cri_env.daemon.ctl("snapshots", "ls", "-q").stdout.split()) == snapshots
    refuse.clear()
    cid = kube.create(pod_id, config, kube.container_config("app"))
    kube.start(cid)
    assert kube.status(cid).state == cri.CONTAINER_RUNNING


def test_run_pod_error_undoes_the_pod(
    cri_env: CriEnv, kube: Kubelet, plugins: list[Plugin]
) -> None:
    refuse = threading.Event()
    refuse.set()

    def gate(req: Any) -> None:
        if refuse.is_set():
            raise PluginError(7, "pods of this namespace are not admitted here")

    p = connect(cri_env, plugins, "admit", events=["RUN_POD_SANDBOX"])
    p.handlers["RunPodSandbox"] = gate
    p.start()
    veths = len(cri_env.veths())
    config = kube.pod_config("nri-admit")
    with pytest.raises(grpc.RpcError) as e:
        kube.run_pod(config)
    assert code_of(e.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "not admitted" in e.value.details()
    pods = kube.rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items
    assert config.metadata.uid not in [x.metadata.uid for x in pods]
    assert len(cri_env.veths()) == veths  # CNI DEL ran
    refuse.clear()
    pod_id = kube.run_pod(config)  # the same name again: nothing was left reserved
    assert kube.pod_status(pod_id).state == cri.SANDBOX_READY


def test_hung_plugin_is_cut_off(cri_env: CriEnv, kube: Kubelet, plugins: list[Plugin]) -> None:
    release = threading.Event()

    def hang(req: Any) -> nri.CreateContainerResponse:
        release.wait(30)
        return nri.CreateContainerResponse()

    p = connect(cri_env, plugins, "stuck", events=["CREATE_CONTAINER"])
    p.handlers["CreateContainer"] = hang
    p.start()
    config = kube.pod_config("nri-hang")
    pod_id = kube.run_pod(config)
    kube.pull(cri_env.app_ref)
    t0 = time.monotonic()
    cid = kube.create(pod_id, config, kube.container_config("app"))
    waited = time.monotonic() - t0
    release.set()
    # The request timeout (2 s) ran out, the plugin was dropped, the create went on.
    assert 1.9 <= waited < scaled(15), waited
    assert p.closed.wait(5)
    assert nri_ls(cri_env)["plugins"] == []
    kube.start(cid)
    assert kube.status(cid).state == cri.CONTAINER_RUNNING
    assert "stuck" in cri_env.daemon.log() and "timed out" in cri_env.daemon.log()


def test_bad_plugins_never_hurt_the_daemon(
    cri_env: CriEnv, kube: Kubelet, plugins: list[Plugin]
) -> None:
    bad_name = connect(cri_env, plugins, "../escape")
    with pytest.raises(Exception):  # noqa: B017 (the refusal, then the hang-up)
        bad_name.start(timeout=scaled(10))
    garbage = connect(cri_env, plugins, "noise")
    garbage.start()
    garbage.raw_send(b"\x00\x00\x00\x01\xff\xff\xff\xff" + b"x" * 64)  # a 4 GiB frame
    assert garbage.closed.wait(5)
    tiny = connect(cri_env, plugins, "tiny")
    tiny.start()
    tiny.send_frame(2, b"\x00\x00\x00\x05\x00\x00\x00\x01\x07\x00" + b"junk!")  # type 7
    assert tiny.closed.wait(5)
    version = kube.rt.Version(cri.VersionRequest(), timeout=10)
    assert version.runtime_name == "pyctr"
    good = connect(cri_env, plugins, "after", events=["RUN_POD_SANDBOX"])
    good.start()
    pod_id = kube.run_pod(kube.pod_config("nri-after-noise"))
    good.wait_for(lambda: "RunPodSandbox" in good.events_for(pod_id))
    assert [e["name"] for e in nri_ls(cri_env)["plugins"]] == ["after"]


def test_synchronize_hands_over_what_exists(
    cri_env: CriEnv, kube: Kubelet, plugins: list[Plugin]
) -> None:
    config = kube.pod_config("nri-sync")
    pod_id = kube.run_pod(config)
    running = kube.run(pod_id, config, "up")
    created = kube.create(pod_id, config, kube.container_config("later"))
    p = connect(cri_env, plugins, "late")
    p.start()
    merged = p.synchronize_merged
    assert pod_id in [x.id for x in merged.pods]
    states = {c.id: c.state for c in merged.containers}
    assert states[running] == nri.CONTAINER_RUNNING
    assert states[created] == nri.CONTAINER_CREATED
    pod = next(x for x in merged.pods if x.id == pod_id)
    assert pod.name == config.metadata.name and pod.ips


def test_creates_racing_a_synchronization_are_not_missed(
    cri_env: CriEnv, kube: Kubelet, plugins: list[Plugin]
) -> None:
    config = kube.pod_config("nri-race")
    pod_id = kube.run_pod(config)
    kube.pull(cri_env.app_ref)
    made: list[str] = []

    def create(i: int) -> None:
        made.append(kube.create(pod_id, config, kube.container_config(f"c{i}")))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    late = []
    for i in range(3):
        p = connect(cri_env, plugins, f"joiner{i}", f"3{i}", events=["CREATE_CONTAINER"])
        p.start()
        late.append(p)
    for t in threads:
        t.join(scaled(60))
    assert len(made) == 6
    for p in late:
        synced = {c.id for c in p.synchronize_merged.containers}
        for cid in made:
            seen = cid in synced or "CreateContainer" in p.events_for(cid)
            assert seen, f"{p.events_for(cid)} {cid[:12]} missed by a plugin that joined"


def test_plugin_updates_and_evicts(cri_env: CriEnv, kube: Kubelet, plugins: list[Plugin]) -> None:
    def tweak(req: Any) -> nri.UpdateContainerResponse:
        u = nri.ContainerUpdate(container_id=req.container.id)
        u.linux.resources.cpu.shares.value = 333  # the plugin's policy wins
        return nri.UpdateContainerResponse(update=[u])

    p = connect(cri_env, plugins, "policy", events=["UPDATE_CONTAINER", "STOP_CONTAINER"])
    p.handlers["UpdateContainer"] = tweak
    p.start()
    config = kube.pod_config("nri-update")
    pod_id = kube.run_pod(config)
    cid = kube.run(pod_id, config, "app")
    other = kube.run(pod_id, config, "other")
    kube.rt.UpdateContainerResources(
        cri.UpdateContainerResourcesRequest(
            container_id=cid, linux=cri.LinuxContainerResources(cpu_shares=1024)
        ),
        timeout=30,
    )
    assert kube.status(cid).resources.linux.cpu_shares == 333

    # Unsolicited: a memory limit on one, an unknown ID failing, then an eviction.
    u = nri.ContainerUpdate(container_id=other)
    u.linux.resources.memory.limit.value = 80 * 1024 * 1024
    missing = nri.ContainerUpdate(container_id=uuid.uuid4().hex)
    missing.linux.resources.memory.limit.value = 1 << 30
    reply = p.update_containers([u, missing])
    assert [f.container_id for f in reply.failed] == [missing.container_id]
    assert kube.status(other).resources.linux.memory_limit_in_bytes == 80 * 1024 * 1024
    cpu_shares = kube.status(other).resources.linux.cpu_shares
    assert cpu_shares in (0, 2, 1024)  # untouched by the memory update
    p.update_containers([], [nri.ContainerEviction(container_id=other, reason="rebalancing")])
    st = kube.wait_state(other, cri.CONTAINER_EXITED)
    assert st.state == cri.CONTAINER_EXITED
    p.wait_for(lambda: "StopContainer" in p.events_for(other))


def _reconfigure(env: CriEnv, **nri_keys: Any) -> None:
    config = tomllib.loads(env.daemon.config_path.read_text())
    config["nri"].update(nri_keys)
    env.daemon.config_path.write_text(dump_toml(config))
    env.restart()


@pytest.fixture
def restore_config(cri_env: CriEnv) -> Iterator[None]:
    saved = cri_env.daemon.config_path.read_text()
    yield
    cri_env.daemon.config_path.write_text(saved)
    cri_env.restart()


def test_required_plugin_gates_pods(
    cri_env: CriEnv, kube: Kubelet, plugins: list[Plugin], restore_config: None
) -> None:
    _reconfigure(cri_env, required_plugins=["10-gatekeeper"])
    config = kube.pod_config("nri-required")
    with pytest.raises(grpc.RpcError) as e:
        kube.run_pod(config)
    assert code_of(e.value) == grpc.StatusCode.UNAVAILABLE
    assert "10-gatekeeper" in e.value.details()
    assert nri_ls(cri_env)["missing"] == ["10-gatekeeper"]
    p = connect(cri_env, plugins, "gatekeeper", events=["RUN_POD_SANDBOX"])
    p.start()
    pod_id = kube.run_pod(config)
    assert "RunPodSandbox" in p.events_for(pod_id)


def test_installed_plugins_start_with_the_daemon(
    cri_env: CriEnv, kube: Kubelet, tmp_path: Path, restore_config: None
) -> None:
    import sys

    base = cri_env.daemon.base / "nri"
    plugin_dir, conf_dir = base / "plugins", base / "conf.d"
    plugin_dir.mkdir(parents=True, exist_ok=True)
    conf_dir.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "events.jsonl"
    repo = Path(__file__).resolve().parents[2]
    script = plugin_dir / "05-logger"
    script.write_text(
        f"#!/bin/sh\ncd {repo}\nexport NRI_TEST_LOG={log} NRI_TEST_ANNOTATE=1\n"
        f"exec {sys.executable} -m tests.support.nri_plugin\n"
    )
    script.chmod(0o755)
    (plugin_dir / "not-a-plugin").write_text("ignored: no index\n")
    (conf_dir / "05-logger.conf").write_text("verbosity = 2\n")
    try:
        cri_env.restart()
        (entry,) = nri_ls(cri_env)["plugins"]
        assert (entry["index"], entry["name"], entry["kind"]) == ("05", "logger", "launched")
        assert int(entry["pid"]) > 0 and entry["synchronized"]
        events = [json.loads(line) for line in log.read_text().splitlines()]
        configure = next(e for e in events if e["event"] == "Configure")
        assert configure.get("config") == "verbosity = 2\n"
        config = kube.pod_config("nri-launched")
        pod_id = kube.run_pod(config)
        cid = kube.run(pod_id, config, "app")
        assert spec_of(kube, cid)["annotations"]["nri-test/logger"] == "05"
        pid = int(entry["pid"])
    finally:
        script.unlink()
        (plugin_dir / "not-a-plugin").unlink()
    cri_env.restart()  # the daemon stops the plugin it started
    deadline = time.monotonic() + scaled(10)
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()
    assert nri_ls(cri_env)["plugins"] == []


def test_a_silent_connection_is_dropped_after_the_registration_timeout(cri_env: CriEnv) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(socket_of(cri_env))
        s.settimeout(scaled(20))
        t0 = time.monotonic()
        assert s.recv(1) == b""  # hung up on, nothing sent
        assert time.monotonic() - t0 >= 4.5  # plugin_registration_timeout, 5 s
    finally:
        s.close()
    assert "did not register in time" in cri_env.daemon.log()


def test_nri_off(cri_env: CriEnv, kube: Kubelet, restore_config: None) -> None:
    _reconfigure(cri_env, enable=False)
    assert nri_ls(cri_env) == {
        "enabled": False, "socket": "", "plugins": [], "missing": [], "socket_error": ""
    }  # fmt: skip
    assert not Path(socket_of(cri_env)).exists()
    assert "nri:" in cri_env.daemon.ctl("info").stdout
    config = kube.pod_config("nri-off")
    pod_id = kube.run_pod(config)
    cid = kube.run(pod_id, config, "app")
    assert kube.status(cid).state == cri.CONTAINER_RUNNING


def test_a_plugin_of_the_v1beta1_api(cri_env: CriEnv, kube: Kubelet, plugins: list[Plugin]) -> None:
    def adjust(req: Any) -> nri.CreateContainerResponse:
        a = nri.ContainerAdjustment()
        a.annotations["example.com/api"] = "v1beta1"
        return nri.CreateContainerResponse(adjust=a)

    p = connect(cri_env, plugins, "beta", api="nri.pkg.api.v1beta1",
                events=["CREATE_CONTAINER", "POST_START_CONTAINER"])  # fmt: skip
    p.handlers["CreateContainer"] = adjust
    p.start()
    (entry,) = nri_ls(cri_env)["plugins"]
    assert entry["api"] == "v1beta1"
    config = kube.pod_config("nri-beta")
    pod_id = kube.run_pod(config)
    cid = kube.run(pod_id, config, "app")
    assert spec_of(kube, cid)["annotations"]["example.com/api"] == "v1beta1"
    p.wait_for(lambda: "PostStartContainer" in p.events_for(cid))


def test_pod_resizes_reach_plugins(cri_env: CriEnv, kube: Kubelet, plugins: list[Plugin]) -> None:
    refuse = threading.Event()

    def check(req: Any) -> nri.UpdatePodSandboxResponse:
        if refuse.is_set():
            raise PluginError(8, "no room on this node")
        return nri.UpdatePodSandboxResponse()

    p = connect(cri_env, plugins, "sizer", events=["UPDATE_POD_SANDBOX", "POST_UPDATE_POD_SANDBOX"])
    p.handlers["UpdatePodSandbox"] = check
    p.start()
    pod_id = kube.run_pod(kube.pod_config("nri-resize"))
    req = cri.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id=pod_id, resources=cri.LinuxContainerResources(cpu_shares=300)
    )
    kube.rt.UpdatePodSandboxResources(req, timeout=30)
    p.wait_for(lambda: "PostUpdatePodSandbox" in p.events_for(pod_id))
    assert p.events_for(pod_id) == ["UpdatePodSandbox", "PostUpdatePodSandbox"]
    upd = next(m for n, m in p.received if n == "UpdatePodSandbox")
    assert upd.pod.id == pod_id and upd.linux_resources.cpu.shares.value == 300
    refuse.set()
    with pytest.raises(grpc.RpcError) as e:
        kube.rt.UpdatePodSandboxResources(req, timeout=30)
    assert code_of(e.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "no room" in e.value.details()


def test_validators_see_the_result_and_may_reject_it(
    cri_env: CriEnv, kube: Kubelet, plugins: list[Plugin]
) -> None:
    value = {"v": "forbidden"}

    def adjust(req: Any) -> nri.CreateContainerResponse:
        a = nri.ContainerAdjustment()
        a.env.add(key="MODE", value=value["v"])
        a.linux.resources.memory.limit.value = 64 << 20
        return nri.CreateContainerResponse(adjust=a)

    def validate(req: Any) -> nri.ValidateContainerAdjustmentResponse:
        if any(kv.value == "forbidden" for kv in req.adjust.env):
            return nri.ValidateContainerAdjustmentResponse(reject=True, reason="MODE=forbidden")
        return nri.ValidateContainerAdjustmentResponse()

    adjuster = connect(cri_env, plugins, "adjuster", "10", events=["CREATE_CONTAINER"])
    adjuster.handlers["CreateContainer"] = adjust
    validator = connect(cri_env, plugins, "policy", "90", events=["VALIDATE_CONTAINER_ADJUSTMENT"])
    validator.handlers["ValidateContainerAdjustment"] = validate
    adjuster.start()
    validator.start()
    config = kube.pod_config("nri-validate")
    pod_id = kube.run_pod(config)
    kube.pull(cri_env.app_ref)
    with pytest.raises(grpc.RpcError) as e:
        kube.create(pod_id, config, kube.container_config("app"))
    assert code_of(e.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "90-policy" in e.value.details() and "MODE=forbidden" in e.value.details()
    assert names_in_pod(kube, pod_id) == []
    req = next(m for n, m in validator.received if n == "ValidateContainerAdjustment")
    assert not any(e.startswith("MODE=") for e in req.container.env)  # pristine
    (owned,) = req.owners.owners.values()
    assert owned.compound[6].owners["MODE"] == "10-adjuster"  # Field Env
    assert owned.simple[8] == "10-adjuster"  # Field MemLimit
    assert [(p.index, p.name) for p in req.plugins] == [("10", "adjuster")]

    value["v"] = "fine"
    cid = kube.create(pod_id, config, kube.container_config("app"))
    kube.start(cid)
    assert "MODE=fine" in kube.sh(cid, f"{BB} env")


def test_a_socket_another_runtime_serves_is_left_alone(
    cri_env: CriEnv, kube: Kubelet, restore_config: None
) -> None:
    cri_env.daemon.stop()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        other.bind(socket_of(cri_env))  # as containerd's NRI would hold it
        other.listen()
        cri_env.restart()
        listed = nri_ls(cri_env)
        assert listed["enabled"] and listed["socket"] == ""
        assert "served by another process" in listed["socket_error"]
        assert "no socket" in cri_env.daemon.ctl("info").stdout
        pod_id = kube.run_pod(kube.pod_config("nri-other-runtime"))
        assert kube.pod_status(pod_id).state == cri.SANDBOX_READY
        # Plugins required: the daemon must not run pods without them.
        config = tomllib.loads(cri_env.daemon.config_path.read_text())
        config["nri"]["required_plugins"] = ["10-needed"]
        cri_env.daemon.config_path.write_text(dump_toml(config))
        with pytest.raises(DaemonError) as e:
            cri_env.restart()
        assert "served by another process" in str(e.value)
    finally:
        other.close()
        Path(socket_of(cri_env)).unlink(missing_ok=True)
