"""ID-mapped mounts for pods with their own user namespace (hostUsers: false).

    with user_namespace(record.userns) as fd:    # a user namespace with the pod's ranges
        idmapped_clone("/layer", "/task/l0", fd)  # /layer as the pod's root sees it

A file owned by 0 on disk shows as the pod's host ID through such a mount,
so the pod's root (that host ID) owns it inside the container. pyctr makes
these mounts itself (open_tree, mount_setattr, move_mount; Linux 5.12+,
overlayfs over them 5.19+), so the OCI runtime only sees plain binds and an
overlay: any runtime that can join a user namespace runs such pods.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from pyctr.daemon.errors import FailedPrecondition
from pyctr.daemon.runtime.records import IdMap, UserNamespace
from pyctr.daemon.spec.oci import Mount
from pyctr.snapshotter.mount import Mount as SnapMount
from pyctr.snapshotter.mount import unmount, unmount_all

# x86_64 and aarch64 share these (the unified syscall table).
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 1, os.O_CLOEXEC
_AT_EMPTY_PATH, _AT_RECURSIVE = 0x1000, 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x00100000

TASK_SUBDIR = "idmap"  # in a container's task dir: the clones below
_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _map_lines(maps: list[IdMap]) -> str:
    return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in maps)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise FailedPrecondition(f"{what}: {os.strerror(err)}")
    return ret


@contextlib.contextmanager
def holder(mapping: UserNamespace, *more: str) -> Iterator[int]:
    """The PID of a short-lived `unshare --user [more]` child whose new user
    namespace has `mapping` (forking this threaded daemon to unshare is not
    safe); killed, by that PID, on the way out."""
    own = os.stat("/proc/self/ns/user").st_ino
    child = subprocess.Popen(
        ["unshare", "--user", *more, "sleep", "60"], stdin=subprocess.DEVNULL, close_fds=True
    )
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                if os.stat(f"/proc/{child.pid}/ns/user").st_ino != own:
                    break
            except FileNotFoundError:
                pass
            if child.poll() is not None or time.monotonic() > deadline:
                raise FailedPrecondition("cannot make a user namespace (unshare --user)")
            time.sleep(0.001)
        with open(f"/proc/{child.pid}/uid_map", "w") as f:
            f.write(_map_lines(mapping.uids))
        with open(f"/proc/{child.pid}/gid_map", "w") as f:
            f.write(_map_lines(mapping.gids))
        yield child.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        child.wait()


@contextlib.contextmanager
def user_namespace(mapping: UserNamespace) -> Iterator[int]:
    """An fd of a new user namespace with `mapping`."""
    with holder(mapping) as pid:
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def idmapped_clone(
    source: Path | str, target: Path | str, userns_fd: int, *, recursive: bool = False
) -> None:
    """Mount a copy of `source`'s mount tree at `target`, ID-mapped through
    the user namespace `userns_fd` (`recursive`: its submounts too)."""
    flags = _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | (_AT_RECURSIVE if recursive else 0)
    fd = _check(
        _libc.syscall(_SYS_OPEN_TREE, -100, os.fsencode(str(source)), flags),
        f"open_tree {source}",
    )
    try:
        attr = _MountAttr(attr_set=_MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
        at = _AT_EMPTY_PATH | (_AT_RECURSIVE if recursive else 0)
        _check(
            _libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", at, ctypes.byref(attr), ctypes.sizeof(attr)),
            f"ID-mapping {source} (does its filesystem support idmapped mounts?)",
        )
        _check(
            _libc.syscall(
                _SYS_MOVE_MOUNT, fd, b"", -100, os.fsencode(str(target)), _MOVE_MOUNT_F_EMPTY_PATH
            ),
            f"move_mount to {target}",
        )
    finally:
        os.close(fd)


def mount_rootfs(mounts: list[SnapMount], rootfs: Path, work: Path, userns: UserNamespace) -> None:
    """Mount a container's snapshot at `rootfs` as its pod's root sees it:
    each lower layer through an ID-mapped clone (dropped once the overlay
    holds it), the upper layer's root owned by the pod's root."""
    uid, gid = userns.root
    work.mkdir(mode=0o700, exist_ok=True)
    with user_namespace(userns) as fd:
        for m in mounts:
            if m.type != "overlay":  # a whole tree (native snapshotter): map it all
                idmapped_clone(m.source, rootfs, fd, recursive=True)
                continue
            options, clones = [], []
            try:
                for opt in m.options:
                    key, _, value = opt.partition("=")
                    if key == "lowerdir":
                        for i, lower in enumerate(value.split(":")):
                            clone = work / f"lower{i}"
                            clone.mkdir()
                            clones.append(clone)
                            idmapped_clone(lower, clone, fd)
                        opt = "lowerdir=" + ":".join(map(str, clones))
                    elif key == "upperdir":
                        os.chown(value, uid, gid)
                    options.append(opt)
                SnapMount(m.type, m.source, options).mount(rootfs)
            finally:
                for clone in clones:  # the overlay keeps its own references
                    with contextlib.suppress(OSError):
                        unmount(clone, detach=True)
                    with contextlib.suppress(OSError):
                        clone.rmdir()


def map_volumes(mounts: list[Mount], work: Path, userns: UserNamespace) -> None:
    """Point every mount marked `idmap` at an ID-mapped clone of its source."""
    wanted = [m for m in mounts if m.idmap]
    if not wanted:
        return
    work.mkdir(mode=0o700, exist_ok=True)
    with user_namespace(userns) as fd:
        for i, m in enumerate(wanted):
            clone = work / f"volume{i}"
            if os.path.isdir(m.source):
                clone.mkdir()
            else:
                clone.touch(mode=0o600)
            idmapped_clone(m.source, clone, fd, recursive=True)
            m.source = str(clone)


def release(work: Path) -> None:
    """Unmount and remove what `mount_rootfs` and `map_volumes` left in `work`."""
    if not work.is_dir():
        return
    for entry in work.iterdir():
        unmount_all(entry)
        with contextlib.suppress(OSError):
            entry.rmdir() if entry.is_dir() else entry.unlink()
    with contextlib.suppress(OSError):
        work.rmdir()
