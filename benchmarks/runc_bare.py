"""The floor: bare `runc` on a busybox rootfs, no daemon, no shim, no image.

Whatever pyctr or containerd add to a container start is measured against
this, in the same run. The bundle matches what the CRI measurements run:
busybox, the node's network namespace (pods there use NODE networking), no
negative oom_score_adj (root here lacks CAP_SYS_RESOURCE).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from benchmarks.core import Metrics, NotAvailable, measurement, summary_ms, timed
from benchmarks.env import BenchEnv

BUSYBOX = Path("/bin/busybox")
TOOLS = ("sh", "true", "sleep", "ls", "cat", "echo", "wc")
CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
    "CAP_MKNOD",
    "CAP_NET_RAW",
]


def busybox_rootfs(path: Path) -> Path:
    (path / "bin").mkdir(parents=True)
    for d in ("etc", "proc", "sys", "dev", "tmp"):
        (path / d).mkdir()
    shutil.copy2(BUSYBOX, path / "bin" / "busybox")
    for tool in TOOLS:
        os.symlink("busybox", path / "bin" / tool)
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (path / "etc" / "group").write_text("root:x:0:\n")
    return path


def oci_config(rootfs: Path, args: list[str]) -> dict[str, object]:
    def mount(dest: str, kind: str, options: list[str], source: str = "") -> dict[str, object]:
        return {"destination": dest, "type": kind, "source": source or kind, "options": options}

    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {k: CAPS for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "bench",
        "mounts": [
            mount("/proc", "proc", []),
            mount("/dev", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
            mount("/dev/pts", "devpts", ["nosuid", "noexec", "newinstance", "ptmxmode=0666"]),
            mount("/dev/shm", "tmpfs", ["nosuid", "noexec", "nodev", "mode=1777"], "shm"),
            mount("/sys", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"],
        },
    }


class Runc:
    """runc with a private state root, on bundles sharing one read-only rootfs."""

    def __init__(self, env: BenchEnv) -> None:
        if shutil.which("runc") is None:
            raise NotAvailable("runc is not installed")
        self.dir = env.path("runc")
        self.root = self.dir / "state"
        self.rootfs = busybox_rootfs(self.dir / "rootfs")
        self._n = 0

    def bundle(self, args: list[str]) -> Path:
        self._n += 1
        path = self.dir / f"b{self._n}"
        path.mkdir()
        (path / "config.json").write_text(json.dumps(oci_config(self.rootfs, args)))
        return path

    def new_id(self) -> str:
        self._n += 1
        return f"pyctr-bench-{os.getpid()}-{self._n}"

    def __call__(self, *args: str) -> None:
        # stderr to a file, not a pipe: with -d the container inherits runc's
        # stdio, and a pipe it holds open would never reach EOF.
        with tempfile.TemporaryFile() as err:
            res = subprocess.run(
                ["runc", "--root", str(self.root), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=60,
                check=False,
            )
            if res.returncode != 0:
                err.seek(0)
                raise RuntimeError(f"runc {args[0]}: {err.read().decode(errors='replace').strip()}")

    def delete_all(self) -> None:
        if self.root.is_dir():
            for cid in os.listdir(self.root):
                subprocess.run(
                    ["runc", "--root", str(self.root), "delete", "-f", cid],
                    capture_output=True,
                    check=False,
                    timeout=30,
                )


@measurement("runc", "run_true")
def run_true(env: BenchEnv) -> Metrics:
    """`runc run` of /bin/true in the foreground: create, start, wait, delete."""
    runc = Runc(env)
    bundle = runc.bundle(["/bin/true"])
    runc("run", "--bundle", str(bundle), runc.new_id())  # warm the page cache
    times = [
        timed(lambda: runc("run", "--bundle", str(bundle), runc.new_id()))
        for _ in range(env.options.runs)
    ]
    return summary_ms(times, tail=90)


@measurement("runc", "run_detached")
def run_detached(env: BenchEnv) -> Metrics:
    """`runc run -d` of sleep (returns once started), then `runc delete -f`."""
    runc = Runc(env)
    bundle = runc.bundle(["/bin/sleep", "3600"])
    starts: list[float] = []
    deletes: list[float] = []
    try:
        for i in range(env.options.runs + 1):
            cid = runc.new_id()
            start = timed(lambda: runc("run", "-d", "--bundle", str(bundle), cid))  # noqa: B023
            delete = timed(lambda: runc("delete", "-f", cid))  # noqa: B023
            if i:  # the first run warms caches
                starts.append(start)
                deletes.append(delete)
    finally:
        runc.delete_all()
    return {**summary_ms(starts, "start", tail=90), **summary_ms(deletes, "delete", tail=90)}
