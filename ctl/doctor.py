"""`pyctr doctor`: is this node ready for a kubelet? Each check ok / warn / fail.

Run on the node, as root: it reads the kernel's and the daemon's view of the
node (pyctrd's Info and CRI Status when it answers, else the default config)
and says for each line what to do about it. The exit status is 1 when a
check fails, so provisioning scripts can gate on it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import socket
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc

from pyctr.ctl.client import Client, CliError
from pyctr.ctl.output import print_json, print_table
from pyctr.daemon import config as cfg
from pyctr.daemon.cgroups import cgroup_version, systemd_booted
from pyctr.daemon.images.reference import parse
from pyctr.daemon.images.registry import RegistryClient
from pyctr.daemon.spec.apparmor import AppArmor
from pyctr.proto import cri_pb2 as cri
from pyctr.proto import cri_pb2_grpc, system_pb2, system_pb2_grpc

KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"
GiB = 1 << 30


@dataclass
class Check:
    name: str
    status: str  # "ok", "warn" or "fail"
    detail: str
    fix: str = ""


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def bad(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check this node before pointing a kubelet at it")
    p.add_argument(
        "--kubelet-config",
        default=KUBELET_CONFIG,
        help=f"the kubelet's config (default {KUBELET_CONFIG})",
    )
    p.set_defaults(func=doctor)


@dataclass
class Node:
    """What the checks look at: the daemon's answers (None when it is down) and its config."""

    info: system_pb2.InfoResponse | None
    status: cri.StatusResponse | None
    config: cfg.Config
    client: Client
    kubelet_config: Path

    def feature(self, name: str) -> system_pb2.Feature | None:
        found = [f for f in self.info.features if f.name == name] if self.info else []
        return found[0] if found else None


def doctor(client: Client, opts: argparse.Namespace) -> int:
    node, first = _node(client, Path(opts.kubelet_config))
    checks = [first, *(c for check in CHECKS for c in check(node))]
    if opts.output == "json":
        counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail")}
        print_json({"checks": [asdict(c) for c in checks], "summary": counts})
    else:
        print_table(
            ["STATUS", "CHECK", "DETAIL"], [(c.status.upper(), c.name, c.detail) for c in checks]
        )
        fixes = [c for c in checks if c.status != "ok" and c.fix]
        if fixes:
            print("\nTo fix:")
            for c in fixes:
                print(f"  {c.name}: {c.fix}")
    return 1 if any(c.status == "fail" for c in checks) else 0


def _node(client: Client, kubelet_config: Path) -> tuple[Node, Check]:
    try:
        info = system_pb2_grpc.SystemStub(client.channel).Info(
            system_pb2.InfoRequest(), timeout=client.timeout
        )
        status = cri_pb2_grpc.RuntimeServiceStub(client.channel).Status(
            cri.StatusRequest(verbose=True), timeout=client.timeout
        )
    except (CliError, grpc.RpcError) as e:
        detail = str(e) if isinstance(e, CliError) else (e.details() or e.code().name)  # type: ignore[attr-defined]
        down = bad(
            "daemon",
            f"pyctrd at {client.address}: {detail}",
            "start it: systemctl start pyctrd (or ./install.sh); the rest uses the default config",
        )
        return Node(None, None, cfg.load(None), client, kubelet_config), down
    config = cfg.from_toml(info.config_toml)
    return Node(info, status, config, client, kubelet_config), ok(
        "daemon", f"pyctrd answers at {client.address} (pid {info.pid})"
    )


# -- the checks, in the order an operator reads them ----------------------------


def cgroups(node: Node) -> Iterator[Check]:
    version = cgroup_version()
    if version == "v2":
        yield ok("cgroup", "v2 (unified)")
    else:
        yield warn(
            "cgroup",
            f"{version}: kubelet 1.35+ refuses cgroup v1 unless failCgroupV1: false",
            "boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2)",
        )
    driver = node.feature("cgroup-driver")
    if driver is None:
        return
    wanted = _kubelet_setting(node.kubelet_config, "cgroupDriver")
    detail = f"{driver.value} ({driver.detail})"
    if wanted is None:
        yield ok("cgroup-driver", f"{detail}; kubelets 1.34+ take it from RuntimeConfig")
    elif wanted == driver.value:
        yield ok("cgroup-driver", f"{detail}; the kubelet's config agrees")
    else:
        yield warn(
            "cgroup-driver",
            f"{detail}, but {node.kubelet_config} says {wanted}",
            f"cgroupDriver: {driver.value} in the kubelet's config (kubelets < 1.34 use it)",
        )
    booted = systemd_booted()
    yield ok("systemd", "PID 1" if booted else "not PID 1 (cgroupfs driver)")


def runtimes(node: Node) -> Iterator[Check]:
    if node.info is None:
        return
    for f in node.info.features:
        parts = f.name.split()
        if parts[0] != "runtime" or len(parts) != 2:
            continue
        if f.value == "yes":
            yield ok(f"runtime {parts[1]}", f.detail)
        elif "(default)" in f.detail:
            yield bad(
                f"runtime {parts[1]}",
                f"{f.value} ({f.detail})",
                "install the runtime (apt-get install runc) or fix [runtime] runc",
            )
        else:
            yield warn(
                f"runtime {parts[1]}",
                f"{f.value} ({f.detail})",
                "pods of this RuntimeClass fail here; give them another handler or fix the cause",
            )


def kernel(node: Node) -> Iterator[Check]:
    release = platform.release()
    major_minor = tuple(int(x) for x in release.split("-")[0].split(".")[:2])
    if "overlay" in _read("/proc/filesystems"):
        yield ok("overlayfs", "in the kernel")
    else:
        yield bad(
            "overlayfs", "not in /proc/filesystems", "modprobe overlay (and add it to /etc/modules)"
        )
    users = _read("/proc/sys/user/max_user_namespaces").strip()
    if users and users != "0" and major_minor >= (5, 19):
        yield ok("user-namespaces", f"max {users}, kernel {release}")
    else:
        yield warn(
            "user-namespaces",
            f"max {users or '?'}, kernel {release}: hostUsers: false pods fail",
            "a 5.19+ kernel with user.max_user_namespaces > 0",
        )
    if _read("/proc/pressure/cpu"):
        yield ok("psi", "pressure files present")
    else:
        yield warn("psi", "no /proc/pressure: no PSI in stats (KubeletPSI)", "boot with psi=1")
    if major_minor >= (5, 12):
        yield ok("mount_setattr", f"kernel {release}")
    else:
        yield warn(
            "mount_setattr",
            f"kernel {release} < 5.12: no recursive read-only mounts",
            "a 5.12+ kernel",
        )
    aa = AppArmor.detect()
    if aa.enabled:
        yield ok("apparmor", aa.reason)
    elif "apparmor_parser" in aa.reason:
        yield warn("apparmor", aa.reason, "apt-get install apparmor")
    else:
        yield ok("apparmor", f"{aa.reason}: profiles are accepted and not applied")
    swaps = _read("/proc/swaps").splitlines()[1:]
    if swaps:
        yield warn(
            "swap",
            f"{len(swaps)} swap device(s) on",
            "swapoff -a, or failSwapOn: false in the kubelet's config",
        )
    else:
        yield ok("swap", "off")


def network(node: Node) -> Iterator[Check]:
    if _read("/proc/sys/net/ipv4/ip_forward").strip() == "1":
        yield ok("ip-forward", "net.ipv4.ip_forward = 1")
    else:
        yield bad(
            "ip-forward",
            "net.ipv4.ip_forward = 0: pods cannot reach beyond the node",
            "sysctl -w net.ipv4.ip_forward=1 (and in /etc/sysctl.d)",
        )
    if _read("/proc/sys/net/bridge/bridge-nf-call-iptables").strip() == "1":
        yield ok("br_netfilter", "bridged traffic goes through iptables")
    else:
        yield warn(
            "br_netfilter",
            "bridged pod traffic skips iptables: Services may not work",
            "modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1",
        )
    conf_dir, bin_dir = node.config.cri.cni.conf_dir, node.config.cri.cni.bin_dir
    names = sorted(n for n in _listdir(conf_dir) if n.endswith((".conf", ".conflist", ".json")))
    if not names:
        yield bad(
            "cni",
            f"no network config in {conf_dir}: the node stays NotReady",
            f"write a CNI config into {conf_dir} (examples/cni/)",
        )
        return
    try:
        doc = json.loads(Path(conf_dir, names[0]).read_text())
        plugins = [p["type"] for p in doc.get("plugins", [doc])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        yield bad("cni", f"{names[0]}: {e}", f"fix {Path(conf_dir, names[0])}")
        return
    yield ok("cni", f"{names[0]} ({doc.get('name', '?')})")
    missing = [p for p in plugins if not os.access(Path(bin_dir, p), os.X_OK)]
    if missing:
        yield bad(
            "cni-plugins",
            f"{', '.join(missing)} not in {bin_dir}",
            "apt-get install containernetworking-plugins, or set [cri.cni] bin_dir",
        )
    else:
        yield ok("cni-plugins", f"{', '.join(plugins)} in {bin_dir}")


def images(node: Node) -> Iterator[Check]:
    sandbox = node.config.cri.sandbox_image
    # Each configured host with its mirrors, as pulls would try them.
    refs = [f"{host}/probe" for host in node.config.registry.hosts]
    if node.info is not None:
        req = cri.ImageStatusRequest(image=cri.ImageSpec(image=sandbox))
        stub = cri_pb2_grpc.ImageServiceStub(node.client.channel)
        if stub.ImageStatus(req, timeout=node.client.timeout).HasField("image"):
            yield ok("sandbox-image", f"{sandbox} present")
        else:
            yield warn(
                "sandbox-image",
                f"{sandbox} not pulled yet: the first pod pulls it",
                f"pyctr images pull {sandbox} (needs its registry)",
            )
            refs.append(sandbox)
    registry = RegistryClient(node.config.registry)
    seen = set()
    for ref in refs:
        for endpoint in registry.endpoints(parse(ref), None):
            url = urlsplit(endpoint.base)
            port = url.port or (443 if url.scheme == "https" else 80)
            where = f"{url.hostname}:{port}"
            if where in seen:
                continue
            seen.add(where)
            error = _connect(url.hostname or "", port)
            if error is None:
                yield ok(f"registry {where}", f"reachable ({endpoint.base})")
            else:
                yield bad(
                    f"registry {where}",
                    f"cannot connect: {error}",
                    "check the network, proxy and DNS, or the mirrors in [registry.hosts]",
                )


def disks(node: Node) -> Iterator[Check]:
    root, state = node.config.root_dir, node.config.state_dir
    for what, path in (("disk root", root), ("disk state", state)):
        try:
            st = os.statvfs(_existing(path))
        except OSError as e:
            yield bad(what, f"{path}: {e.strerror}", f"create {path} or fix the config")
            continue
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        share = free / total if total else 0.0
        detail = f"{path}: {free / GiB:.1f} GiB free of {total / GiB:.1f} GiB ({share:.0%})"
        if share < 0.05 or free < GiB // 4:
            yield bad(what, detail, "free space: pyctr images prune / gc, or a bigger disk")
        elif share < 0.15:
            yield warn(what, detail, "the kubelet evicts pods below its imagefs/nodefs thresholds")
        else:
            yield ok(what, detail)


def clock(node: Node) -> Iterator[Check]:
    state = _time_state()
    if state is None:
        yield warn("clock", "cannot ask the kernel (adjtimex)", "run the doctor as root")
    elif state == 5:  # TIME_ERROR: the kernel's clock is not synchronized
        yield warn(
            "clock",
            "not synchronized (no NTP): TLS and token checks may fail",
            "enable time sync: systemctl enable --now systemd-timesyncd (or chrony)",
        )
    else:
        yield ok("clock", "synchronized")


CHECKS: list[Callable[[Node], Iterator[Check]]] = [
    cgroups, runtimes, kernel, network, images, disks, clock,
]  # fmt: skip


# -- helpers --------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _existing(path: Path) -> Path:
    """The path, or its nearest existing parent (the daemon makes it at start)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _kubelet_setting(path: Path, key: str) -> str | None:
    """A top-level `key: value` of the kubelet's YAML config (enough for scalars)."""
    for line in _read(str(path)).splitlines():
        name, sep, value = line.partition(":")
        if sep and name == key:
            return value.split("#", 1)[0].strip().strip("'\"") or None
    return None


def _connect(host: str, port: int) -> str | None:
    """None if a TCP connection opens within 3 s, else why not."""
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as e:
        return e.strerror or str(e)


def _time_state() -> int | None:
    """adjtimex(2)'s clock state with no changes asked (5 = TIME_ERROR)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    buf = ctypes.create_string_buffer(512)  # struct timex, zeroed: modes = 0 reads only
    state = int(libc.adjtimex(buf))
    return None if state < 0 else state
