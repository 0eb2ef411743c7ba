"""A pod's files under `<state>/pods/<id>`: hostname, hosts, resolv.conf and
shm/ (a tmpfs, the pod's /dev/shm), bind-mounted into its containers.

    files = PodFiles(state_dir / "pods")
    path = files.create(sid, hostname, resolv_conf(dns), host_network=False)
    files.mount_shm(sid)                 # unless the pod shares the host's IPC
    files.set_pod_ip(sid, ip, hostname)  # once CNI gave the pod its address
    files.remove(sid)                    # unmounts shm first
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import tempfile
from pathlib import Path

from pyctr.daemon import host
from pyctr.daemon.errors import InvalidArgument
from pyctr.daemon.spec.cri import SHM_SIZE
from pyctr.proto import cri_pb2 as cri
from pyctr.snapshotter.mount import Mount, unmount_all

HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-_]{0,62})$")
_DNS_TOKEN = re.compile(r"^[^\s#;]{1,253}$")
HOSTS_BASE = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
ff00::0\tip6-mcastprefix
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""


def write_file(path: Path, text: str) -> None:
    """Atomically, world-readable (containers run as any user)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def resolv_conf(dns: cri.DNSConfig) -> str | None:
    """resolv.conf text for DNSConfig, or None to copy the host's."""
    if not (dns.servers or dns.searches or dns.options):
        return None
    for value in [*dns.servers, *dns.searches, *dns.options]:
        if not _DNS_TOKEN.match(value):
            raise InvalidArgument(f"DNS config value {value[:80]!r} is not a single word")
    for server in dns.servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidArgument(f"DNS server {server!r} is not an IP address") from None
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines += [f"nameserver {s}" for s in dns.servers]
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def _host_file(path: str) -> str:
    try:
        with open(path) as f:
            return f.read(1 << 20)
    except OSError:
        return ""


class PodFiles:
    def __init__(self, pods_dir: Path) -> None:
        self.pods_dir = pods_dir

    def path(self, sid: str) -> Path:
        return self.pods_dir / sid

    def create(self, sid: str, hostname: str, resolv: str | None, *, host_network: bool) -> Path:
        """The pod's dir with its hostname, resolv.conf (the host's unless
        given) and hosts (the host's for a host-network pod)."""
        files = self.path(sid)
        host.searchable_dir(self.pods_dir)
        files.mkdir()
        host.searchable_dir(files)
        write_file(files / "hostname", hostname + "\n")
        write_file(files / "resolv.conf", resolv or _host_file("/etc/resolv.conf"))
        write_file(files / "hosts", _host_file("/etc/hosts") if host_network else HOSTS_BASE)
        return files

    def set_pod_ip(self, sid: str, ip: str, hostname: str) -> None:
        write_file(self.path(sid) / "hosts", HOSTS_BASE + f"{ip}\t{hostname}\n")

    def mount_shm(self, sid: str) -> None:
        path = self.path(sid) / "shm"
        path.mkdir(mode=0o755)
        options = ["nosuid", "nodev", "noexec", "mode=1777", f"size={SHM_SIZE // 1024}k"]
        Mount("tmpfs", "shm", options).mount(path)

    def unmount_shm(self, sid: str) -> None:
        shm = self.path(sid) / "shm"
        if os.path.ismount(shm):
            unmount_all(shm)

    def remove(self, sid: str) -> None:
        self.unmount_shm(sid)
        path = self.path(sid)
        if path.exists() and not os.path.ismount(path / "shm"):
            shutil.rmtree(path, ignore_errors=True)
