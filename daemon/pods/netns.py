"""Persistent network namespaces for pods, bind-mounted on files pyctr owns.

A pod's network namespace must outlive any process in it (the CNI plugins
configure it before the pause container starts, and DEL runs after it exits),
so it is pinned by a bind mount of the namespace onto a file under the
daemon's state dir, `<state>/netns/<pod-id>`, the way `ip netns` pins its
namespaces under /run/netns. That path is what CNI_NETNS and the OCI spec's
network namespace path name.

How a namespace is made: a short-lived *thread* calls unshare(CLONE_NEWNET),
which moves only that thread into a fresh namespace, brings `lo` up there
with one ioctl, and bind-mounts its own /proc/self/task/<tid>/ns/net onto the
file. The thread then exits, so no thread of the daemon is ever left in a pod
namespace. This was chosen over the alternatives because:

- fork() + unshare in the child is unsafe in a multi-threaded process (grpc's
  threads, the executor) and Python 3.11 has no os.unshare anyway;
- `unshare --net=PATH true` (util-linux) works but costs two execs per pod
  (plus one more for `ip link set lo up`), and pod start latency matters;
- unshare(CLONE_NEWNET) and setns(CLONE_NEWNET) are allowed per thread in a
  threaded process (unlike CLONE_NEWNS or CLONE_NEWUSER), which is exactly the
  property this needs. The calls go through ctypes.

Mount propagation: the file is an ordinary file in an ordinary directory; no
mount of the directory is required. If the directory sits on a shared mount
the bind propagates to the peer mounts and its unmount does too; on a private
or slave mount it stays local. All three are tested. A mount namespace copied
*privately* from ours after a netns was made (e.g. a tool doing `unshare -m`)
keeps its own copy of the bind, which pins the namespace until that mount
namespace goes away; runc's containers do not, as runc detaches the old root
after pivot_root.

Every function here is synchronous and quick (microseconds to a millisecond);
async callers wrap them in `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from pyctr.daemon import host
from pyctr.daemon.errors import AlreadyExists, Internal
from pyctr.daemon.runtime.idmap import holder
from pyctr.daemon.runtime.records import UserNamespace

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(Internal):
    """A network namespace could not be made, entered or removed."""


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _nsfs_dev() -> int:
    return os.stat("/proc/self/ns/net").st_dev


def is_netns(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is (a bind mount of) a live network namespace."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    # Every namespace file lives on the one nsfs; a plain file left behind by
    # an interrupted create or a finished remove does not.
    return st.st_dev == _nsfs_dev()


def _run_in_thread(fn: Callable[[], T]) -> T:
    """Run `fn` on a fresh thread that exits afterwards, so whatever namespace
    it moved into dies with it and never leaks into a pooled thread."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed back to the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name="pyctr-netns", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def set_link_up(name: str = "lo") -> None:
    """Bring an interface of the calling thread's netns up (SIOCSIFFLAGS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh22x", name.encode(), 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh22x", name.encode(), flags | IFF_UP))


def create(path: str | os.PathLike[str]) -> Path:
    """Make a new network namespace pinned at `path`, with `lo` up.

    The parent directory is created (mode 0711). An existing live namespace
    at `path` is refused (AlreadyExists); a stale plain file is reused. On any
    failure nothing is left behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    if is_netns(target):
        raise AlreadyExists(f"network namespace {target} already exists")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o444)
    os.close(fd)

    def make() -> None:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        set_link_up("lo")
        source = f"/proc/self/task/{threading.get_native_id()}/ns/net"
        _check(
            _libc.mount(source.encode(), bytes(target), b"none", MS_BIND, None),
            f"bind mount of the new netns on {target}",
        )

    try:
        _run_in_thread(make)
    except BaseException as e:
        remove(target)
        raise NetnsError(f"cannot create network namespace {target}: {e}") from e
    return target


def pin(source: str, path: str | os.PathLike[str]) -> Path:
    """Pin the namespace `source` names (a /proc/<pid>/ns/<kind> link) at
    `path`, as `create` pins a new one; refused if `path` holds a live one."""
    target = Path(path)
    host.searchable_dir(target.parent)
    if is_netns(target):
        raise AlreadyExists(f"namespace {target} already exists")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o444)
    os.close(fd)
    if _libc.mount(source.encode(), bytes(target), b"none", MS_BIND, None) != 0:
        err = ctypes.get_errno()
        remove(target)
        raise NetnsError(f"cannot pin {source} at {target}: {os.strerror(err)}")
    return target


def remove(path: str | os.PathLike[str]) -> None:
    """Unpin and delete the namespace file at `path`; a no-op if it is gone.

    The namespace itself is freed by the kernel once nothing else (a process,
    an open fd, another bind) holds it; its interfaces go with it.
    """
    raw = os.fsencode(path)
    # A file may carry more than one bind if create() raced a crash; peel all.
    for _ in range(8):
        if _libc.umount2(raw, MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):  # not a mount point / no file
                break
            raise NetnsError(f"cannot unmount network namespace {os.fsdecode(raw)}: "
                             f"{os.strerror(err)}")  # fmt: skip
    with contextlib.suppress(FileNotFoundError):
        os.unlink(raw)


def _setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns(CLONE_NEWNET)")


def run_in(path: str | os.PathLike[str], fn: Callable[[], T]) -> T:
    """Call `fn` inside the namespace at `path`, on a throwaway thread.

    Sockets made inside `fn` stay in that namespace after it returns, so a
    listening socket for a test server can be made here and used anywhere.
    """

    def enter_and_call() -> T:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(fd)
        finally:
            os.close(fd)
        return fn()

    if not is_netns(path):
        raise NetnsError(f"{os.fspath(path)} is not a network namespace")
    return _run_in_thread(enter_and_call)


@contextlib.contextmanager
def entered(path: str | os.PathLike[str]) -> Iterator[None]:
    """Move the *calling* thread into the namespace at `path` until exit.

    For tools and tests that want subprocesses (which inherit the calling
    thread's namespaces) to run there. Never use it on the daemon's event loop
    thread; use `run_in` instead.
    """
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(fd)
        finally:
            os.close(fd)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def nsenter(path: str | os.PathLike[str], argv: list[str]) -> list[str]:
    """The command line that runs `argv` inside the namespace at `path`."""
    return ["nsenter", f"--net={os.fspath(path)}", "--", *argv]


def pin_pod_namespaces(mapping: UserNamespace, userns_path: Path, netns_path: Path) -> None:
    """A pod's user namespace and a network namespace it owns, pinned at the
    two paths (the pause container joins both: sysfs can only be mounted by
    the user namespace that owns the network namespace)."""
    with holder(mapping, "--net") as pid:
        pin(f"/proc/{pid}/ns/user", userns_path)
        try:
            pin(f"/proc/{pid}/ns/net", netns_path)
            run_in(netns_path, set_link_up)
        except BaseException:
            remove(netns_path)
            remove(userns_path)
            raise
