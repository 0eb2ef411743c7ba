"""The container's cgroup: resource usage and OOM kills, for cgroup v1 and v2.

Paths come from /proc/<init pid>/cgroup, read once when the container is
created, so they are right whatever cgroup driver or parent the daemon chose,
and still usable after the init process is gone (until `runc delete`).
"""

# ruff: noqa: SIM105  (contextlib.suppress would import contextlib: memory per shim)

from __future__ import annotations

import _signal  # `signal` wraps this in enums, which costs ~0.9 MB
import os
import time

CGROUP_ROOT = "/sys/fs/cgroup"


def read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("ascii", "replace")
    except OSError:
        return None


def read_int(path: str, unlimited: int | None = None) -> int | None:
    """An integer cgroup file; "max" reads as `unlimited`, a missing file as None."""
    text = read_text(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return unlimited
    try:
        return int(text)
    except ValueError:
        return None


def _write(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.write(fd, data)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def read_keyed(path: str) -> dict[str, int]:
    """Parse `key value` lines (memory.stat, memory.events, cpu.stat, oom_control)."""
    return parse_keyed(read_text(path) or "")


def parse_keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            pass
    return out


def slice_dir(name: str) -> str | None:
    """Where systemd puts a slice: "a-b.slice" is /a.slice/a-b.slice (each
    dash a level), "-.slice" the root. None if not a valid slice name."""
    if name == "-.slice":
        return ""
    stem = name.removesuffix(".slice")
    if stem == name or not stem or stem.startswith("-") or stem.endswith("-") or "--" in stem:
        return None
    if "/" in stem or "\\" in stem:
        return None
    parts = stem.split("-")
    return "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def systemd_dir(cgroups_path: str) -> str | None:
    """The cgroup runc's systemd driver makes for "slice:prefix:name": the
    scope prefix-name.scope in that slice (or the slice itself when name is
    one). None if cgroups_path is not in that form."""
    parts = cgroups_path.split(":")
    if len(parts) != 3:
        return None
    slice_name, prefix, name = parts
    parent = slice_dir(slice_name or "system.slice")
    if parent is None or not name or "/" in name or "/" in prefix:
        return None
    if name.endswith(".slice"):
        return slice_dir(name)
    return f"{parent}/{prefix}-{name}.scope" if prefix else f"{parent}/{name}.scope"


def cgroup_dir(cgroups_path: str) -> str | None:
    """The cgroup (path below each hierarchy's root) for an OCI cgroupsPath
    of either driver; None when it cannot be known from the path alone."""
    if ":" in cgroups_path:
        return systemd_dir(cgroups_path)
    if not cgroups_path.startswith("/") or "/../" in cgroups_path + "/":
        return None
    return None if "/./" in cgroups_path + "/" else cgroups_path


class Cgroup:
    """Controller name -> directory of the container's cgroup."""

    def __init__(self, dirs: dict[str, str], unified: str | None) -> None:
        self.dirs = dirs  # v1 controllers
        self.unified = unified  # v2 directory when the container lives in cgroup2

    @classmethod
    def of_pid(cls, pid: int) -> Cgroup:
        return cls._parse(read_text(f"/proc/{pid}/cgroup") or "")

    @classmethod
    def of_path(cls, path: str) -> Cgroup:
        """The cgroup runc makes for an absolute `linux.cgroupsPath` (cgroupfs
        driver: the same path under every hierarchy), known before it exists.

        What a started container needs: its init may be a zombie by the time
        we look, and a zombie's /proc/PID/cgroup names the v1 roots.
        """
        return cls._parse(read_text("/proc/self/cgroup") or "", path)

    @classmethod
    def _parse(cls, text: str, fixed_path: str | None = None) -> Cgroup:
        dirs: dict[str, str] = {}
        unified = None
        pure_v2 = os.path.exists(f"{CGROUP_ROOT}/cgroup.controllers")
        for line in text.splitlines():
            _, controllers, path = line.split(":", 2)
            if fixed_path is not None:
                path = fixed_path
            if controllers == "":
                base = CGROUP_ROOT if pure_v2 else f"{CGROUP_ROOT}/unified"
                unified = base + path
                continue
            # Joint mounts such as "cpu,cpuacct" are mounted under that name.
            for name in controllers.split(","):
                name = name.removeprefix("name=")
                mount = f"{CGROUP_ROOT}/{controllers.removeprefix('name=')}"
                if not os.path.isdir(mount):
                    mount = f"{CGROUP_ROOT}/{name}"
                dirs[name] = mount + path
        # In hybrid mode processes sit in the v2 root with controllers in v1:
        # only count v2 when it holds the memory controller.
        if dirs.get("memory") and not pure_v2:
            unified = None
        return cls(dirs, unified)

    def exists(self) -> bool:
        d = self.unified or self.dirs.get("memory")
        return d is not None and os.path.isdir(d)

    # -- OOM ---------------------------------------------------------------

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer took from this cgroup."""
        if self.unified:
            return read_keyed(f"{self.unified}/memory.events").get("oom_kill", 0)
        mem = self.dirs.get("memory")
        if mem:
            return read_keyed(f"{mem}/memory.oom_control").get("oom_kill", 0)
        return 0

    def parent_oom_kills(self) -> int | None:
        """The parent's count (cgroup v2 counts the children's kills in it too)."""
        if not self.unified:
            return None
        text = read_text(f"{os.path.dirname(self.unified)}/memory.events")
        return None if text is None else parse_keyed(text).get("oom_kill", 0)

    def open_memory_events(self) -> int:
        """memory.events opened for the loop's change watch (cgroup v2), or -1."""
        if not self.unified:
            return -1
        try:
            return os.open(f"{self.unified}/memory.events", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1

    def oom_eventfd(self) -> int:
        """An eventfd that becomes readable on OOM (cgroup v1 only), or -1."""
        mem = self.dirs.get("memory")
        if self.unified or not mem:
            return -1
        try:
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except OSError:
            return -1
        try:
            ofd = os.open(f"{mem}/memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            try:
                ctl = os.open(f"{mem}/cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(ctl, b"%d %d" % (efd, ofd))
                finally:
                    os.close(ctl)
            finally:
                # The kernel holds its own reference once registered.
                os.close(ofd)
        except OSError:
            os.close(efd)
            return -1
        return efd

    # -- stats and pids ----------------------------------------------------

    def stats(self) -> dict[str, int | None]:
        now = time.time_ns()
        if self.unified:
            return self._stats_v2(self.unified, now)
        return self._stats_v1(now)

    def _stats_v1(self, now: int) -> dict[str, int | None]:
        cpu = self.dirs.get("cpuacct")
        mem = self.dirs.get("memory")
        pids = self.dirs.get("pids")
        stat = read_keyed(f"{mem}/memory.stat") if mem else {}
        usage = read_int(f"{mem}/memory.usage_in_bytes") if mem else None
        limit = read_int(f"{mem}/memory.limit_in_bytes") if mem else None
        if limit is not None and limit >= 1 << 62:  # v1 spells "no limit" as a huge number
            limit = None
        return {
            "timestamp": now,
            "cpu_usage_ns": read_int(f"{cpu}/cpuacct.usage") if cpu else None,
            "memory_usage": usage,
            "memory_working_set": _working_set(usage, stat.get("total_inactive_file")),
            "memory_rss": stat.get("total_rss"),
            "memory_limit": limit,
            "page_faults": stat.get("total_pgfault"),
            "major_page_faults": stat.get("total_pgmajfault"),
            "pids_current": read_int(f"{pids}/pids.current") if pids else None,
            "pids_limit": read_int(f"{pids}/pids.max") if pids else None,
        }

    @staticmethod
    def _stats_v2(d: str, now: int) -> dict[str, int | None]:
        stat = read_keyed(f"{d}/memory.stat")
        usage = read_int(f"{d}/memory.current")
        cpu = read_keyed(f"{d}/cpu.stat").get("usage_usec")
        return {
            "timestamp": now,
            "cpu_usage_ns": cpu * 1000 if cpu is not None else None,
            "memory_usage": usage,
            "memory_working_set": _working_set(usage, stat.get("inactive_file")),
            "memory_rss": stat.get("anon"),
            "memory_limit": read_int(f"{d}/memory.max"),
            "page_faults": stat.get("pgfault"),
            "major_page_faults": stat.get("pgmajfault"),
            "pids_current": read_int(f"{d}/pids.current"),
            "pids_limit": read_int(f"{d}/pids.max"),
        }

    def procs(self) -> list[int] | None:
        """PIDs in the container's cgroup, or None when it cannot be read."""
        for d in (self.unified, self.dirs.get("pids"), self.dirs.get("memory")):
            if d:
                text = read_text(f"{d}/cgroup.procs")
                if text is not None:
                    return sorted(int(p) for p in text.split())
        return None

    def kill(self) -> int:
        """SIGKILL every process left in the container's cgroup (and its
        sub-cgroups); how many there were.

        cgroup v2's cgroup.kill does it in one write, forks included; else
        each pid of cgroup.procs is pinned with a pidfd and signalled only if
        it is still a member, so a pid reused meanwhile is never hit. Refused
        for a hierarchy's root or a cgroup that holds the shim itself: the
        container must have a cgroup of its own for this to be its processes.
        """
        dirs = (self.unified, self.dirs.get("pids"), self.dirs.get("memory"))
        d = next((d for d in dirs if d and os.path.exists(f"{d}/cgroup.procs")), None)
        if d is None:
            return 0
        pids = _pids(d)
        if not pids or os.getpid() in pids or not os.path.exists(f"{d}/../cgroup.procs"):
            return 0
        if d == self.unified and _write(f"{d}/cgroup.kill", b"1"):
            return len(pids)
        pinned = []
        for pid in pids:
            try:
                pinned.append((pid, os.pidfd_open(pid)))
            except OSError:  # gone already
                pass
        members = set(_pids(d))
        for pid, fd in pinned:
            try:
                if pid in members:
                    _signal.pidfd_send_signal(fd, 9)
            except OSError:
                pass
            finally:
                os.close(fd)
        return len(pids)


def _pids(directory: str) -> list[int]:
    return [int(p) for p in (read_text(f"{directory}/cgroup.procs") or "").split()]


def pressure(directory: str, resource: str) -> dict[str, tuple[float, float, float, int]]:
    """A cgroup v2 <resource>.pressure file (PSI): "some" and "full" lines as
    (avg10, avg60, avg300, total stall in ns); empty where the kernel has none."""
    out: dict[str, tuple[float, float, float, int]] = {}
    for line in (read_text(f"{directory}/{resource}.pressure") or "").splitlines():
        kind, *fields = line.split()
        values = dict(f.partition("=")[::2] for f in fields)
        try:
            out[kind] = (
                float(values["avg10"]),
                float(values["avg60"]),
                float(values["avg300"]),
                int(values["total"]) * 1000,  # the kernel counts microseconds
            )
        except (KeyError, ValueError):
            continue
    return out


def swap(directory: str) -> tuple[int | None, int | None]:
    """cgroup v2 swap: (usage, limit; None for no limit)."""
    return read_int(f"{directory}/memory.swap.current"), read_int(f"{directory}/memory.swap.max")


def _working_set(usage: int | None, inactive_file: int | None) -> int | None:
    # The kubelet's definition: usage minus the page cache it could drop.
    if usage is None:
        return None
    return max(0, usage - (inactive_file or 0))
