"""The leak check: what a test leaves behind fails it.

pytest makes itself a child subreaper at start, so every process a test
starts, even a shim that double-forks and leaves its session, stays its
descendant. Before each test we record this session's descendants, mounts,
network namespaces and cgroups; afterwards anything new that is still there
(after a short grace for asynchronous teardown) fails the test, and is then
cleaned up so one failure does not cascade.

Mounts, netns and cgroups are scoped by the session's token (the base temp
dir name, which the daemon fixture also uses as cgroup parent), so other
work on a shared machine does not trip the check. Where systemd is PID 1,
systemd units named pyctr-* (scopes, slices, failed ones too) count as well.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import cgroups as test_cgroups

PR_SET_CHILD_SUBREAPER = 36
CGROUP_ROOT = Path("/sys/fs/cgroup")


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The comm field may contain spaces and parens: split after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat[stat.rindex(")") + 2]


def descendants(root: int | None = None) -> set[int]:
    root = root or os.getpid()
    tree = _children_map()
    out: set[int] = set()
    todo = [root]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or f"[{_state(pid)}]"


def mounts(scope: tuple[str, ...]) -> set[str]:
    out = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(scope):
            out.add(point)
    return out


def netns(token: str) -> set[str]:
    try:
        return {n for n in os.listdir("/run/netns") if token in n}
    except FileNotFoundError:
        return set()


def cgroups(token: str) -> set[str]:
    out: set[str] = set()
    if not CGROUP_ROOT.is_dir():
        return out
    for base in test_cgroups.hierarchies():
        for dirpath, dirnames, _ in os.walk(base):
            depth = dirpath[len(str(base)) :].count("/")
            if token in dirpath[len(str(base)) :]:
                out.add(dirpath)  # the token's dir and everything below it
            elif depth >= 4:  # a systemd session slice is /pyctr.slice/<token>.slice
                dirnames[:] = []
    return out


@dataclass
class Snapshot:
    pids: set[int] = field(default_factory=set)
    mounts: set[str] = field(default_factory=set)
    netns: set[str] = field(default_factory=set)
    cgroups: set[str] = field(default_factory=set)
    units: set[str] = field(default_factory=set)


class LeakCheck:
    def __init__(self, token: str, scopes: tuple[str, ...]) -> None:
        self.token = token
        self.scopes = scopes
        # Processes the fixtures own for longer than one test (a shared
        # registry, say) are allowed to outlive it.
        self.allowed_pids: set[int] = set()

    def take(self) -> Snapshot:
        self.reap_zombies()
        return Snapshot(
            pids={p for p in descendants() if _state(p) not in ("Z", "gone")},
            mounts=mounts(self.scopes),
            netns=netns(self.token),
            cgroups=cgroups(self.token),
            units=test_cgroups.units(),
        )

    def allowed(self) -> set[int]:
        """allowed_pids and their children (a fixture daemon's shim zygote)."""
        tree = _children_map()
        return self.allowed_pids.union(*(tree.get(p, []) for p in self.allowed_pids))

    def reap_zombies(self) -> None:
        """Reap orphans that were re-parented to us and have exited."""
        for pid in _children_map().get(os.getpid(), []):
            if _state(pid) == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    def diff(self, before: Snapshot, grace: float = 3.0) -> list[str]:
        deadline = time.monotonic() + grace
        while True:
            after = self.take()
            pids = after.pids - before.pids - self.allowed()
            leaks = [f"process {p}: {_cmdline(p)}" for p in sorted(pids)]
            leaks += [f"mount {m}" for m in sorted(after.mounts - before.mounts)]
            leaks += [f"netns {n}" for n in sorted(after.netns - before.netns)]
            leaks += [f"cgroup {c}" for c in sorted(after.cgroups - before.cgroups)]
            leaks += [f"systemd unit {u}" for u in sorted(after.units - before.units)]
            if not leaks or time.monotonic() > deadline:
                return leaks
            time.sleep(0.1)

    def clean(self, before: Snapshot) -> None:
        """Best-effort removal of what a failed test left, so others still run."""
        after = self.take()
        for pid in after.pids - before.pids - self.allowed():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for point in sorted(after.mounts - before.mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        for name in after.netns - before.netns:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        time.sleep(0.2)
        self.reap_zombies()
        test_cgroups.stop_units(sorted(after.units - before.units))
        for path in sorted(after.cgroups - before.cgroups, key=len, reverse=True):
            for dirpath, _, _ in sorted(os.walk(path), key=lambda w: len(w[0]), reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
