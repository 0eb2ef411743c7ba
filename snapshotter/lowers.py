"""Give an overlay layer's implicit directories the metadata of the layers below.

The overlay backend extracts a layer into an empty upper dir without looking
at its parents (so layers unpack in parallel). A tar that writes `a/b/f`
without headers for `a/` and `a/b/` makes those dirs with default metadata,
and an upper dir's owner and mode win in the merged view: `/tmp` (1777 below)
would turn 0755. Applying the same tar through a mount would have copied the
lower dir up instead. So once the parents are committed, each implicit dir
takes the owner, mode, xattrs and times of the dir that the lower layers
show at that path, found by emulating the overlay's lookup: top layer first,
stopping at whiteouts, non-directories and opaque dirs.

The same lookup keeps the backends consistent on one security rule: a path
whose parent the lower layers show as a symlink is refused, exactly as the
native backend refuses it when its walk meets the copied symlink.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from pyctr.snapshotter.errors import InvalidArgument
from pyctr.snapshotter.unpack import OPAQUE_XATTR, Comps

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return False
        raise


def _lookup(upper_fd: int, lower_fds: list[int], comps: Comps) -> tuple[str, int | None]:
    """What the lower layers show at `comps`, seen through the upper's parents.

    The upper takes part for the parent components (its opaque dirs hide
    the lowers) but not for the last one, which is the implicit dir itself.
    Returns ("missing"|"dir"|"symlink"|"other", fd of the topmost lower dir
    for "dir", which the caller closes).
    """
    layers = [upper_fd, *lower_fds]
    has_upper = True  # layers[0] is the upper's dir at this depth
    owned: list[int] = []
    try:
        for i, name in enumerate(comps):
            last = i == len(comps) - 1
            if last and has_upper:
                layers = layers[1:]
            nxt: list[int] = []
            next_has_upper = False
            for j, fd in enumerate(layers):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if _is_whiteout(st):
                    break
                if not stat.S_ISDIR(st.st_mode):
                    if nxt:
                        break  # a dir above hides it: the merge stops here
                    if not last:
                        return "missing", None
                    return ("symlink" if stat.S_ISLNK(st.st_mode) else "other"), None
                dfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                owned.append(dfd)
                nxt.append(dfd)
                if j == 0 and has_upper and not last:
                    next_has_upper = True
                if _opaque(dfd):
                    break
            if not nxt:
                return "missing", None
            layers, has_upper = nxt, next_has_upper
        top = layers[0]
        owned.remove(top)
        return "dir", top
    finally:
        for fd in owned:
            os.close(fd)


def _copy_dir_meta(src: int, dst: int) -> None:
    st = os.fstat(src)
    os.chown(dst, st.st_uid, st.st_gid)
    for name in os.listxattr(src):
        if name.startswith(("trusted.overlay.", "user.overlay.")):
            continue  # the lower's own overlay state is not ours to copy
        os.setxattr(dst, name, os.getxattr(src, name))
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def settle_implicit_dirs(upper: Path, implicit: list[Comps], lowers: list[Path]) -> None:
    """Copy lower metadata onto `upper`'s implicit dirs (shallowest first).

    Raises InvalidArgument when the lower layers show a symlink or a
    non-directory where this layer needs a directory.
    """
    if not implicit:
        return
    upper_fd = os.open(upper, _DIR_FLAGS)
    lower_fds: list[int] = []
    try:
        for path in lowers:
            lower_fds.append(os.open(path, _DIR_FLAGS))
        for comps in sorted(implicit, key=len):
            lower: int | None
            if not comps:  # the root: the top layer's root is what shows
                if not lower_fds:
                    continue
                kind, lower = "dir", os.dup(lower_fds[0])
            else:
                kind, lower = _lookup(upper_fd, lower_fds, comps)
            shown = os.fsdecode(b"/".join(comps))
            if kind in ("symlink", "other"):
                what = "a symlink" if kind == "symlink" else "not a directory"
                raise InvalidArgument(
                    f"entries under {shown!r}: the parent layers have {what} there"
                )
            if lower is None:
                continue
            try:
                dst = _open_in(upper_fd, comps)
                try:
                    _copy_dir_meta(lower, dst)
                finally:
                    os.close(dst)
            finally:
                os.close(lower)
    finally:
        for fd in [upper_fd, *lower_fds]:
            os.close(fd)


def _open_in(root_fd: int, comps: Comps) -> int:
    cur = os.dup(root_fd)
    for name in comps:
        try:
            nxt = os.open(name, _DIR_FLAGS, dir_fd=cur)
        finally:
            os.close(cur)
        cur = nxt
    return cur
