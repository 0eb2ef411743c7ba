"""The tests' cgroups, for either driver and either hierarchy.

The test daemons use the driver PYCTR_TEST_CGROUP_DRIVER names (tests/vm/run
sets it in the guest), else what the daemon's "auto" picks here. Everything
a session makes sits under one parent named after the session's token:
"/<token>" with cgroupfs, the slice "<token>.slice" with systemd (the token
is "pyctr-t<pid>", so the slice nests in pyctr.slice). Pods get a parent below
it, as the kubelet gives one: "/<token>/pod<uid>" or "<token>-pod<uid>.slice".
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

from pyctr.daemon.cgroups import Cgroups, cgroup_version, systemd_booted
from pyctr.shim.cgroups import cgroup_dir, slice_dir

ROOT = Path("/sys/fs/cgroup")
DRIVER = os.environ.get("PYCTR_TEST_CGROUP_DRIVER") or Cgroups.resolve("auto").driver
SYSTEMD = DRIVER == "systemd"
V2 = cgroup_version() == "v2"
SYSTEMD_BOOTED = systemd_booted()


def session_parent(token: str) -> str:
    return f"{token}.slice" if SYSTEMD else f"/{token}"


def pod_parent(token: str, uid: str) -> str:
    """A pod cgroup parent in the driver's spelling (uid: letters and digits)."""
    return f"{token}-pod{uid}.slice" if SYSTEMD else f"/{token}/pod{uid}"


def container_path(parent: str, container_id: str) -> str:
    """The cgroupsPath the daemon gives a container under parent."""
    return f"{parent}:pyctr:{container_id}" if SYSTEMD else f"{parent}/{container_id}"


def directory(cgroups_path: str) -> str:
    """The cgroup below each hierarchy's root of a cgroupsPath or a parent."""
    found = slice_dir(cgroups_path) if cgroups_path.endswith(".slice") else None
    found = found or cgroup_dir(cgroups_path)
    assert found is not None, f"not a cgroup path: {cgroups_path!r}"
    return found


def hierarchies() -> list[Path]:
    """The mounted hierarchies: the root on pure v2, each controller on v1."""
    if V2:
        return [ROOT]
    return [
        ROOT / c
        for c in sorted(os.listdir(ROOT))
        if (ROOT / c).is_dir() and not (ROOT / c).is_symlink()
    ]


def dirs(cgroups_path: str) -> list[Path]:
    """Where the cgroup is (or would be) in every hierarchy."""
    rel = directory(cgroups_path).strip("/")
    return [h / rel for h in hierarchies()]


def controller_file(cgroups_path: str, controller: str, name: str) -> Path:
    """A controller's file of a cgroup: <root>/<dir>/name on v2,
    <root>/<controller>/<dir>/name on v1."""
    rel = directory(cgroups_path).strip("/")
    return (ROOT / rel / name) if V2 else (ROOT / controller / rel / name)


def read(cgroups_path: str, controller: str, name: str) -> str:
    return controller_file(cgroups_path, controller, name).read_text().strip()


# -- limits as the kernel shows them, in the v1 units the CRI speaks ---------


def memory_limit(cgroups_path: str) -> int | None:
    name = "memory.max" if V2 else "memory.limit_in_bytes"
    text = read(cgroups_path, "memory", name)
    if text == "max" or int(text) >= 1 << 62:
        return None
    return int(text)


def cpu_quota(cgroups_path: str) -> tuple[int, int] | None:
    """(quota, period) in microseconds, or None without a quota."""
    if V2:
        quota, period = read(cgroups_path, "cpu", "cpu.max").split()
        return None if quota == "max" else (int(quota), int(period))
    quota = int(read(cgroups_path, "cpu", "cpu.cfs_quota_us"))
    period = int(read(cgroups_path, "cpu", "cpu.cfs_period_us"))
    return None if quota < 0 else (quota, period)


def shares_to_weight(shares: int) -> int:
    """cpu.shares [2, 262144] to cpu.weight [1, 10000]: the linear mapping of
    the OCI runtimes (runc 1.1, crun 1.8) that this guest's packages ship."""
    return 1 + ((shares - 2) * 9999) // 262142


def cpu_weight(cgroups_path: str) -> int:
    """cpu.weight on v2; on v1, cpu.shares mapped the same way runc maps it."""
    if V2:
        return int(read(cgroups_path, "cpu", "cpu.weight"))
    return shares_to_weight(int(read(cgroups_path, "cpu", "cpu.shares")))


def pids_limit(cgroups_path: str) -> int | None:
    text = read(cgroups_path, "pids", "pids.max")
    return None if text == "max" else int(text)


def frozen(cgroups_path: str) -> bool:
    """Whether the freezer holds the cgroup: cgroup.events on v2, freezer.state on v1."""
    if V2:
        events = dict(line.split() for line in read(cgroups_path, "", "cgroup.events").splitlines())
        return events.get("frozen") == "1"
    return read(cgroups_path, "freezer", "freezer.state") == "FROZEN"


# -- systemd units -----------------------------------------------------------


def units(pattern: str = "pyctr-*") -> set[str]:
    """Loaded systemd units (active, failed or on their way) matching pattern."""
    if not SYSTEMD_BOOTED:
        return set()
    out = subprocess.run(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", "--full", pattern],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def stop_units(names: list[str]) -> None:
    """Stop units and forget their failure (what removing a pod leaves to the kubelet)."""
    if names and SYSTEMD_BOOTED:
        subprocess.run(["systemctl", "stop", *names], capture_output=True, check=False)
        subprocess.run(["systemctl", "reset-failed", *names], capture_output=True, check=False)


# -- the session's parent and the pods' ---------------------------------------


def setup_session(token: str) -> None:
    """Make the session's parent, so the leak check sees only what is below it."""
    if SYSTEMD:
        # Started now, not implicitly with the first scope in it, so that it
        # is there before the first test as well as after.
        subprocess.run(["systemctl", "start", session_parent(token)], check=True)
        return
    for d in dirs(session_parent(token)):
        d.mkdir(exist_ok=True)


def teardown_session(token: str) -> None:
    if SYSTEMD:
        stop_units([session_parent(token)])
        return
    for d in dirs(session_parent(token)):
        with contextlib.suppress(OSError):
            d.rmdir()


def remove_pod_cgroups(parents: list[str]) -> None:
    """What the kubelet does once a pod is gone: remove its pod cgroup."""
    if SYSTEMD:
        stop_units([p for p in parents if p.endswith(".slice")])
        return
    for parent in parents:
        for d in dirs(parent):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # busy until the last task has gone
                    time.sleep(0.1)
