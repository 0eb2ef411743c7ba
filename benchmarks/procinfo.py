"""Process facts from /proc: memory (RSS, PSS), finding processes, mounts.

PSS (proportional set size) is the number that adds up: a page shared by k
processes counts 1/k in each, so the PSS of N shims divided by N is what one
more container really costs, shared interpreter pages included.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

MIB = 1024 * 1024


def memory_kib(pid: int) -> dict[str, int]:
    """Rss and Pss (KiB) of one process, from smaps_rollup."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            out[key.lower()] = int(rest.split()[0])
    return out


def memory_mib(pids: list[int]) -> tuple[float, float]:
    """Total (RSS, PSS) in MiB of the processes that still exist."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            m = memory_kib(pid)
            rss += m["rss"]
            pss += m["pss"]
    return rss / 1024, pss / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time one process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def find_processes(*needles: str) -> list[int]:
    """PIDs whose command line contains every needle (this process excluded)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        line = " ".join(cmdline(int(entry)))
        if line and all(n in line for n in needles):
            found.append(int(entry))
    return sorted(found)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first (the order to unmount)."""
    prefix = str(path)
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_all(path: Path) -> None:
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def remove_cgroups(name: str) -> None:
    """rmdir the bench's cgroup parent (and empty children) in every hierarchy."""
    root = Path("/sys/fs/cgroup")
    for top in root.glob(f"*/{name}"):
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
