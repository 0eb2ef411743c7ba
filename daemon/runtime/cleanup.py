"""Removing task dirs safely, and sweeping what no container record owns.

A crash can interrupt a create (snapshot prepared and mounted, no record
yet) or lose a record (its transaction never committed). At daemon start,
`remove_orphans` stops shims serving in task dirs nobody owns, unmounts and
removes those dirs, deletes runc state, active container snapshots and log
files of unknown containers. Only names shaped like what the runtime
manager creates are touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pyctr.daemon.runtime import idmap
from pyctr.daemon.runtime.handlers import Handler
from pyctr.daemon.runtime.port import ShimPort
from pyctr.daemon.runtime.records import Container
from pyctr.snapshotter.mount import unmount_all

log = logging.getLogger("pyctr.runtime")

FULL_ID = re.compile(r"^[0-9a-f]{64}$")
TASK_DIR = re.compile(r"^[0-9a-f]{16}$")


def unmount(target: Path) -> None:
    if os.path.ismount(target):
        unmount_all(target)


def remove_task_dir(path: Path) -> None:
    """rmtree, but never through a mount still in place."""
    if not path.exists():
        return
    with open("/proc/self/mountinfo") as f:
        prefix = str(path) + "/"
        if any(line.split()[4].startswith(prefix) for line in f):
            log.error("not removing %s: something is still mounted below it", path)
            return
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(path)


async def remove_orphans(
    records: list[Container],
    tasks_dir: Path,
    handlers: Iterable[Handler],
    logs_dir: Path,
    snapshotter: Any,
    shims: ShimPort,
    systemd_cgroup: bool = False,
) -> None:
    ids = {c.id for c in records}
    prefixes = {cid[:16] for cid in ids}
    for entry in tasks_dir.iterdir():
        if entry.name not in prefixes and TASK_DIR.match(entry.name):
            log.warning("removing orphaned task dir %s", entry)
            await _stop_orphan_shim(entry, shims)
            rootfs = entry / "rootfs"
            if rootfs.exists():
                await asyncio.to_thread(unmount, rootfs)
            await asyncio.to_thread(idmap.release, entry / idmap.TASK_SUBDIR)
            remove_task_dir(entry)
    for h in handlers:
        if h.path is None or not Path(h.root).is_dir():
            continue
        for entry in Path(h.root).iterdir():
            if entry.name not in ids and FULL_ID.match(entry.name):
                log.warning("removing %s state of unknown container %s", h.name, entry.name[:12])
                with contextlib.suppress(Exception):
                    await shims.cleanup_dead(
                        tasks_dir / ".none",
                        entry.name,
                        runc=h.path,
                        runc_root=h.root,
                        systemd_cgroup=systemd_cgroup,
                    )
    if snapshotter is not None:
        owned = {c.snapshot for c in records}
        await asyncio.to_thread(_remove_orphan_snapshots, snapshotter, owned)
    if logs_dir.is_dir():
        for entry in logs_dir.iterdir():
            if entry.suffix == ".log" and FULL_ID.match(entry.stem) and entry.stem not in ids:
                entry.unlink(missing_ok=True)


async def _stop_orphan_shim(task_dir: Path, shims: ShimPort) -> None:
    """Make a shim nobody owns delete its container and exit (or kill it)."""
    try:
        shim = await shims.connect(task_dir, timeout=2.0)
    except Exception:
        shim = None
    if shim is not None:
        try:
            with contextlib.suppress(Exception):
                await shim.shutdown(force=True)
        finally:
            await shim.close()
        return
    pid = shims.shim_pid(task_dir)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _remove_orphan_snapshots(snapshotter: Any, owned: set[str]) -> None:
    """Active snapshots keyed like a container ID that no record owns."""
    for info in list(snapshotter.walk()):
        if str(info.kind) == "active" and FULL_ID.match(info.key) and info.key not in owned:
            log.warning("removing orphaned container snapshot %s", info.key[:12])
            with contextlib.suppress(Exception):
                snapshotter.remove(info.key)
