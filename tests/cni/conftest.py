"""Fixtures for the CNI tests: a private "host" network namespace per test.

The bridge plugin with isGateway turns on IP forwarding in the host
namespace, and portmap adds iptables chains it never removes. So that no test
changes the machine's own network, each test that runs plugins enters a fresh
network namespace on pytest's main thread (`host_ns`) first: the plugins,
which inherit the calling thread's namespace, then make their bridge, veths,
sysctls and iptables rules in there, and all of it vanishes with it. The pod
namespaces are made by the code under test. Everything lives under the test's
tmp dir, and the bridge name and subnet carry a random part regardless.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pyctr.daemon.pods import netns
from pyctr.daemon.pods.cni import CniManager

SYSTEM_CNI_BIN = "/usr/lib/cni"


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not os.path.isfile(f"{SYSTEM_CNI_BIN}/bridge"):
        pytest.skip("containernetworking-plugins not installed")


@pytest.fixture
def host_ns(tmp_path: Path) -> Iterator[Path]:
    need_root()
    path = netns.create(tmp_path / "host.netns")
    try:
        with netns.entered(path):
            yield path
    finally:
        netns.remove(path)


@dataclass
class CniEnv:
    root: Path
    bridge: str
    subnet: ipaddress.IPv4Network
    network: str
    pods: list[Path] = field(default_factory=list)

    @property
    def conf_dir(self) -> Path:
        return self.root / "net.d"

    @property
    def fake_bin(self) -> Path:
        return self.root / "bin"

    @property
    def bin_path(self) -> str:
        # Fakes first, then the real plugins: exercises the CNI_PATH list too.
        return f"{self.fake_bin}:{SYSTEM_CNI_BIN}"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def data_dir(self) -> Path:
        return self.root / "ipam"

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def manager(self, **kw: Any) -> CniManager:
        return CniManager(str(self.conf_dir), self.bin_path, self.cache_dir, **kw)

    def bridge_plugin(self) -> dict[str, Any]:
        return {
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            "ipMasq": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(self.subnet)}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(self.data_dir),
            },
        }

    def write_conflist(
        self,
        extra: list[dict[str, Any]] | None = None,
        *,
        version: str = "1.0.0",
        name: str = "10-test.conflist",
        portmap: bool = True,
    ) -> Path:
        plugins = [self.bridge_plugin()]
        if portmap:
            plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
        plugins += extra or []
        conf = {"cniVersion": version, "name": self.network, "plugins": plugins}
        path = self.conf_dir / name
        path.write_text(json.dumps(conf, indent=2))
        return path

    def fake_plugin(self, name: str, script: str) -> Path:
        path = self.fake_bin / name
        path.write_text(script)
        path.chmod(0o755)
        return path

    def new_pod_ns(self, name: str) -> Path:
        path = netns.create(self.root / "netns" / name)
        self.pods.append(path)
        return path

    def reservations(self) -> list[str]:
        """host-local's reserved IPs (one file per IP) for this network."""
        d = self.data_dir / self.network
        if not d.is_dir():
            return []
        return sorted(n for n in os.listdir(d) if not n.startswith(("last_reserved", "lock")))


@pytest.fixture
def cni_env(tmp_path: Path, host_ns: Path) -> Iterator[CniEnv]:
    tag = f"{os.getpid() % 10000}{random.randrange(1000):03d}"
    env = CniEnv(
        root=tmp_path,
        bridge=f"pyt{tag}"[:15],
        subnet=ipaddress.IPv4Network(
            f"10.{random.randrange(100, 250)}.{random.randrange(256)}.0/24"
        ),
        network=f"pyctr-test-{tag}",
    )
    for d in (env.conf_dir, env.fake_bin, env.cache_dir, env.data_dir):
        d.mkdir()
    try:
        yield env
    finally:
        for path in env.pods:
            netns.remove(path)


def veths() -> list[str]:
    """veth interfaces of the current (test host) namespace."""
    out = subprocess.run(
        ["ip", "-j", "link", "show", "type", "veth"], capture_output=True, text=True, check=True
    ).stdout
    return [link["ifname"] for link in json.loads(out or "[]")]


def addresses(ns: Path, ifname: str = "eth0") -> list[str]:
    out = subprocess.run(
        netns.nsenter(ns, ["ip", "-j", "addr", "show", "dev", ifname]),
        capture_output=True,
        text=True,
    ).stdout
    with contextlib.suppress(ValueError):
        return [
            a["local"]
            for link in json.loads(out)
            for a in link.get("addr_info", [])
            if a.get("scope") == "global"
        ]
    return []


def ping(ns: Path, ip: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        netns.nsenter(ns, ["/bin/busybox", "ping", "-c", "1", "-W", "2", ip]),
        capture_output=True,
        text=True,
        timeout=20,
    )
