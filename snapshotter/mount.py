"""Mounts as data, and the one place that turns them into mount(2) calls.

A snapshot's mounts are a list of `Mount(type, source, options)`, the same
shape as an OCI runtime-spec mount. `Mount.mount(target)` applies one; it
knows two things a plain `mount -o` does not:

- bind mounts take their read-only flag only on a remount, so "ro" binds are
  done in two steps;
- mount(2) copies at most one page of option data, which a deep overlay
  (100+ lowerdirs with absolute paths) overflows. Then the lowerdirs are
  rewritten relative to their common parent and the mount is made from a
  short-lived thread that has its own working directory (unshare(CLONE_FS)),
  so the daemon's other threads never see a chdir.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_BIND = 0x1000
MS_REC = 0x4000
MS_RELATIME = 0x200000
MNT_DETACH = 0x2
CLONE_FS = 0x200

# option -> (flag, set?) ; "rw" clears what "ro" sets
_FLAG_OPTIONS: dict[str, tuple[int, bool]] = {
    "ro": (MS_RDONLY, True),
    "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True),
    "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True),
    "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True),
    "exec": (MS_NOEXEC, False),
    "noatime": (MS_NOATIME, True),
    "relatime": (MS_RELATIME, True),
    "bind": (MS_BIND, True),
    "rbind": (MS_BIND | MS_REC, True),
}

# The kernel copies one page of option data, including the trailing NUL.
MAX_OPTION_DATA = os.sysconf("SC_PAGE_SIZE") - 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


def _sys_mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    rc = _libc.mount(
        os.fsencode(source),
        os.fsencode(target),
        fstype.encode() if fstype else None,
        flags,
        os.fsencode(data) if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or 'bind'} {source} on {target}: {os.strerror(err)}")


@dataclass
class Mount:
    type: str  # "overlay" or "bind"
    source: str
    options: list[str] = field(default_factory=list)

    def _split(self) -> tuple[int, list[str]]:
        flags = 0
        data: list[str] = []
        for opt in self.options:
            if opt in _FLAG_OPTIONS:
                bit, on = _FLAG_OPTIONS[opt]
                flags = flags | bit if on else flags & ~bit
            else:
                data.append(opt)
        return flags, data

    def mount(self, target: Path | str) -> None:
        """Mount on `target` (an existing directory)."""
        target = os.path.abspath(target)
        flags, data = self._split()
        if self.type == "bind" or flags & MS_BIND:
            _sys_mount(self.source, target, None, MS_BIND | (flags & MS_REC), None)
            extra = flags & ~(MS_BIND | MS_REC)
            if extra:
                try:
                    _sys_mount("", target, None, MS_REMOUNT | MS_BIND | extra, None)
                except BaseException:
                    unmount(target, detach=True)
                    raise
            return
        text = ",".join(data)
        if len(text.encode()) <= MAX_OPTION_DATA:
            _sys_mount(self.source, target, self.type, flags, text)
            return
        cwd, short = compact_lowerdirs(data)
        _mount_in(cwd, self.source, target, self.type, flags, short)


def compact_lowerdirs(data: list[str]) -> tuple[str, str]:
    """Rewrite lowerdir= relative to the lowerdirs' common parent.

    Returns (directory to mount from, option string). Raises InvalidArgument
    when even that does not fit in a page.
    """
    from pyctr.snapshotter.errors import InvalidArgument

    lowers: list[str] = []
    rest: list[str] = []
    for opt in data:
        if opt.startswith("lowerdir="):
            lowers = opt[len("lowerdir=") :].split(":")
        else:
            rest.append(opt)
    if len(lowers) < 2:
        raise InvalidArgument(f"mount options are longer than {MAX_OPTION_DATA} bytes")
    common = os.path.commonpath(lowers)
    relative = ":".join(os.path.relpath(p, common) for p in lowers)
    text = ",".join([f"lowerdir={relative}", *rest])
    if len(text.encode()) > MAX_OPTION_DATA:
        raise InvalidArgument(
            f"{len(lowers)} layers need {len(text)} bytes of overlay options even with "
            f"relative paths; the kernel takes at most {MAX_OPTION_DATA}"
        )
    return common, text


def _mount_in(cwd: str, source: str, target: str, fstype: str, flags: int, data: str) -> None:
    """mount(2) from a thread whose working directory is `cwd` (and only its)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            if _libc.unshare(CLONE_FS) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_FS): {os.strerror(err)}")
            os.chdir(cwd)
            _sys_mount(source, target, fstype, flags, data)
        except BaseException as e:  # handed to the calling thread
            failure.append(e)

    thread = threading.Thread(target=run, name="pyctr-mount")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def unmount(target: Path | str, *, detach: bool = False) -> None:
    rc = _libc.umount2(os.fsencode(os.path.abspath(target)), MNT_DETACH if detach else 0)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def mount_all(mounts: Sequence[Mount], target: Path | str) -> None:
    """Apply a snapshot's mounts on `target`, in order; all or nothing."""
    done = 0
    try:
        for m in mounts:
            m.mount(target)
            done += 1
    except BaseException:
        for _ in range(done):
            with contextlib.suppress(OSError):
                unmount(target, detach=True)
        raise


def unmount_all(target: Path | str) -> None:
    """Unmount everything stacked on `target` (no error if nothing is)."""
    while True:
        try:
            unmount(target)
        except OSError as e:
            if e.errno == errno.EINVAL:  # not a mount point (any more)
                return
            if e.errno == errno.EBUSY:
                unmount(target, detach=True)
                continue
            raise


@contextlib.contextmanager
def mounted(mounts: Sequence[Mount], target: Path | str) -> Iterator[Path]:
    mount_all(mounts, target)
    try:
        yield Path(target)
    finally:
        unmount_all(target)
