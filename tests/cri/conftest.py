"""Fixtures for the CRI runtime tests: one pyctrd, registry and pod network per module.

The daemon and the registry run inside a private "host" network namespace
(made here, entered only while they start), so the CNI bridge, the
ip_forward sysctl and portmap's iptables rules live and die there, never on
the machine's own network. The test process talks to the daemon over its
unix socket, which works across network namespaces, and looks into the host
namespace with nsenter.

`Kubelet` is the test's CRI client: it makes pod and container configs the
way the kubelet does, drives the calls, and at the end of each test stops and
removes every pod it made and the pod cgroups (as the kubelet owns those).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from pyctr.daemon.pods import netns
from pyctr.proto import cri_pb2 as cri
from pyctr.proto import cri_pb2_grpc
from tests.conftest import TOKEN, new_base, safe_rmtree
from tests.support import cgroups
from tests.support.daemon import PyctrDaemon, dump_toml
from tests.support.images import build_image, busybox_layer, files_layer, push
from tests.support.leaks import LeakCheck
from tests.support.registry import Registry
from tests.support.timing import scaled

BB = "/bin/busybox"
PAUSE_SCRIPT = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"
SLEEPER = [BB, "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
CNI_BIN = "/usr/lib/cni"

APP_PASSWD = b"""root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/:/bin/false
"""
APP_GROUP = b"""root:x:0:
app:x:1000:
extra:x:2000:app
more:x:2001:other,app
other:x:2002:
"""
INDEX_HTML = b"hello from the pod\n"


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not os.path.isfile(f"{CNI_BIN}/bridge"):
        pytest.skip("containernetworking-plugins not installed")


@dataclass
class CriEnv:
    base: Path
    daemon: PyctrDaemon
    registry: Registry
    host_ns: Path
    bridge: str
    subnet: ipaddress.IPv4Network
    network: str
    pause_ref: str
    app_ref: str
    stopsig_ref: str
    channel: grpc.Channel = field(repr=False)
    leak_check: LeakCheck = field(repr=False)

    @property
    def rt(self) -> cri_pb2_grpc.RuntimeServiceStub:
        return cri_pb2_grpc.RuntimeServiceStub(self.channel)

    @property
    def images(self) -> cri_pb2_grpc.ImageServiceStub:
        return cri_pb2_grpc.ImageServiceStub(self.channel)

    @property
    def conf_dir(self) -> Path:
        return self.base / "net.d"

    @property
    def data_dir(self) -> Path:
        return self.base / "ipam"

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def write_conflist(self) -> None:
        conf = {
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(self.subnet)}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.data_dir),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.conf_dir / "10-test.conflist").write_text(json.dumps(conf))

    def reservations(self) -> list[str]:
        d = self.data_dir / self.network
        if not d.is_dir():
            return []
        return sorted(n for n in os.listdir(d) if not n.startswith(("last_reserved", "lock")))

    def host(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """Run a command in the test's host network namespace."""
        return subprocess.run(
            netns.nsenter(self.host_ns, argv), capture_output=True, text=True, timeout=30
        )

    def veths(self) -> list[str]:
        out = self.host(["ip", "-j", "link", "show", "type", "veth"]).stdout
        return [link["ifname"] for link in json.loads(out or "[]")]

    def restart(self, crash: bool = False) -> None:
        """Restart pyctrd (in the host namespace, where it must live); with
        crash, kill it with SIGKILL first."""
        if crash:
            self.daemon.kill()
        else:
            self.daemon.stop()
        with netns.entered(self.host_ns):
            self.daemon.start()
        # The module's daemon, not the test's: the leak check must let it be.
        self.leak_check.allowed_pids.add(self.daemon.pid)
        self.channel.close()
        self.channel = self.daemon.channel()


def _build_images(layout: Path, reg: Registry) -> tuple[str, str, str]:
    bb = busybox_layer()
    build_image(layout, "pause", [bb], entrypoint=[BB, "sh", "-c", PAUSE_SCRIPT], cmd=[])
    app_files = files_layer(
        {"etc/passwd": APP_PASSWD, "etc/group": APP_GROUP, "www/index.html": INDEX_HTML},
        dirs=("home/app",),
    )
    build_image(layout, "app", [bb, app_files], cmd=[BB, "sh"])
    inner = {"Env": ["PATH=/bin"], "Cmd": [BB, "sh"], "StopSignal": "SIGUSR1"}
    build_image(layout, "stopsig", [bb], extra_config={"config": inner})
    refs = (f"{reg.host}/test/pause:1", f"{reg.host}/test/app:1", f"{reg.host}/test/stopsig:1")
    for tag, ref in zip(("pause", "app", "stopsig"), refs, strict=True):
        push(layout, tag, ref)
    return refs


@pytest.fixture(scope="module")
def cri_env(tmp_path_factory: pytest.TempPathFactory, leak_check: LeakCheck) -> Iterator[CriEnv]:
    need_root()
    base = new_base("cri")
    for d in ("net.d", "ipam", "logs"):
        (base / d).mkdir()
    host_ns = netns.create(base / "host.netns")
    registry: Registry | None = None
    daemon: PyctrDaemon | None = None
    tag = f"{os.getpid() % 10000}{random.randrange(1000):03d}"
    try:
        with netns.entered(host_ns):
            registry = Registry(tmp_path_factory.mktemp("cri-registry"))
            pause, app, stopsig = _build_images(tmp_path_factory.mktemp("cri-oci"), registry)
            config = {
                "cri": {
                    "sandbox_image": pause,
                    "cni": {"conf_dir": str(base / "net.d"), "bin_dir": CNI_BIN},
                    # A second handler on runc, with its own root (test_handlers.py).
                    "runtimes": {"alt": {"binary": "runc"}},
                }
            }
            daemon = PyctrDaemon(base, dump_toml(config)).start()
        env = CriEnv(
            base=base,
            daemon=daemon,
            registry=registry,
            host_ns=host_ns,
            bridge=f"pyc{tag}"[:15],
            subnet=ipaddress.IPv4Network(
                f"10.{random.randrange(100, 250)}.{random.randrange(256)}.0/24"
            ),
            network=f"pyctr-cri-{tag}",
            pause_ref=pause,
            app_ref=app,
            stopsig_ref=stopsig,
            channel=daemon.channel(),
            leak_check=leak_check,
        )
        env.write_conflist()
        yield env
        env.channel.close()
        daemon.stop()
        # Every error a test provokes must be an answer, never a crash.
        unexpected = [line for line in daemon.log().splitlines() if "unexpected error" in line] + (
            ["Traceback in the daemon log"] if "Traceback" in daemon.log() else []
        )
        if unexpected:
            (tmp_path_factory.getbasetemp() / "cri-pyctrd.log").write_text(daemon.log())
            pytest.fail("pyctrd logged unexpected errors:\n  " + "\n  ".join(unexpected))
    finally:
        if daemon is not None:
            daemon.stop()
        if registry is not None:
            registry.stop()
        netns.remove(host_ns)
        safe_rmtree(base)


# -- the test's kubelet --------------------------------------------------------


def code_of(call: Any) -> grpc.StatusCode:
    assert isinstance(call, grpc.RpcError), call
    return call.code()  # type: ignore[attr-defined, no-any-return]


class Kubelet:
    def __init__(self, env: CriEnv) -> None:
        self.env = env
        self.pods: list[str] = []
        self.cgroups: list[str] = []

    @property
    def rt(self) -> cri_pb2_grpc.RuntimeServiceStub:
        return self.env.rt

    # -- configs -----------------------------------------------------------

    def pod_config(
        self,
        name: str,
        *,
        network: int = cri.POD,
        pid: int = cri.POD,
        ipc: int = cri.POD,
        hostname: str = "",
        dns: cri.DNSConfig | None = None,
        ports: list[cri.PortMapping] | None = None,
        sysctls: dict[str, str] | None = None,
        privileged: bool = False,
        labels: dict[str, str] | None = None,
        attempt: int = 0,
        uid: str = "",
    ) -> cri.PodSandboxConfig:
        uid = uid or uuid.uuid4().hex
        log_dir = self.env.base / "logs" / f"default_{name}_{uid}"
        cgroup = cgroups.pod_parent(TOKEN, uid[:12])
        if cgroup not in self.cgroups:
            self.cgroups.append(cgroup)
        return cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(
                name=name, uid=uid, namespace="default", attempt=attempt
            ),
            hostname=hostname or name,
            log_directory=str(log_dir),
            dns_config=dns,
            port_mappings=ports or [],
            labels=labels or {"app": name},
            annotations={"test": "yes"},
            linux=cri.LinuxPodSandboxConfig(
                cgroup_parent=cgroup,
                sysctls=sysctls or {},
                security_context=cri.LinuxSandboxSecurityContext(
                    namespace_options=cri.NamespaceOption(network=network, pid=pid, ipc=ipc),
                    privileged=privileged,
                ),
            ),
        )

    def container_config(
        self,
        name: str,
        command: list[str] | None = None,
        *,
        image: str = "",
        attempt: int = 0,
        security: cri.LinuxContainerSecurityContext | None = None,
        resources: cri.LinuxContainerResources | None = None,
        **kw: Any,
    ) -> cri.ContainerConfig:
        return cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=name, attempt=attempt),
            image=cri.ImageSpec(image=image or self.env.app_ref),
            command=command if command is not None else SLEEPER,
            log_path=f"{name}/{attempt}.log",
            linux=cri.LinuxContainerConfig(security_context=security, resources=resources),
            labels=kw.pop("labels", {"container": name}),
            **kw,
        )

    # -- calls -------------------------------------------------------------

    def run_pod(self, config: cri.PodSandboxConfig, timeout: float = 60, handler: str = "") -> str:
        pod_id = self.rt.RunPodSandbox(
            cri.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=timeout
        ).pod_sandbox_id
        self.pods.append(pod_id)
        return pod_id

    def pull(self, ref: str) -> str:
        req = cri.PullImageRequest(image=cri.ImageSpec(image=ref))
        return self.env.images.PullImage(req, timeout=60).image_ref

    def create(self, pod_id: str, pod: cri.PodSandboxConfig, config: cri.ContainerConfig) -> str:
        req = cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
        return self.rt.CreateContainer(req, timeout=60).container_id

    def start(self, cid: str) -> None:
        self.rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=60)

    def run(
        self, pod_id: str, pod: cri.PodSandboxConfig, name: str, command: list[str] | None = None,
        **kw: Any,
    ) -> str:  # fmt: skip
        self.pull(kw.get("image") or self.env.app_ref)
        cid = self.create(pod_id, pod, self.container_config(name, command, **kw))
        self.start(cid)
        return cid

    def status(self, cid: str, verbose: bool = False) -> cri.ContainerStatus:
        req = cri.ContainerStatusRequest(container_id=cid, verbose=verbose)
        return self.rt.ContainerStatus(req, timeout=10).status

    def pod_status(self, pod_id: str) -> cri.PodSandboxStatus:
        req = cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
        return self.rt.PodSandboxStatus(req, timeout=10).status

    def exec(self, cid: str, cmd: list[str], timeout: int = 20) -> cri.ExecSyncResponse:
        req = cri.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout)
        return self.rt.ExecSync(req, timeout=timeout + 10)

    def sh(self, cid: str, script: str, timeout: int = 20) -> str:
        r = self.exec(cid, [BB, "sh", "-c", script], timeout)
        assert r.exit_code == 0, (script, r.exit_code, r.stdout, r.stderr)
        return r.stdout.decode()

    def wait_state(self, cid: str, state: int, timeout: float = 20) -> cri.ContainerStatus:
        deadline = time.monotonic() + scaled(timeout)
        while True:
            st = self.status(cid)
            if st.state == state or time.monotonic() > deadline:
                return st
            time.sleep(0.05)

    def stop_pod(self, pod_id: str) -> None:
        self.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)

    def remove_pod(self, pod_id: str) -> None:
        self.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)

    def cleanup(self) -> None:
        for pod_id in self.pods:
            with contextlib.suppress(grpc.RpcError):
                self.stop_pod(pod_id)
            with contextlib.suppress(grpc.RpcError):
                self.remove_pod(pod_id)
        self.pods.clear()
        cgroups.remove_pod_cgroups(self.cgroups)
        self.cgroups.clear()


@pytest.fixture
def kube(cri_env: CriEnv) -> Iterator[Kubelet]:
    k = Kubelet(cri_env)
    try:
        yield k
    finally:
        k.cleanup()
