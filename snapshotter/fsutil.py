"""Whole-tree helpers shared by the backends: disk usage, removal, copying."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from pyctr.snapshotter.base import Usage


def disk_usage(path: Path) -> Usage:
    """Allocated bytes and inodes under `path` (hardlinks counted once).

    Symlinks are not followed and other filesystems are counted too (a
    snapshot dir holds none).
    """
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return Usage(0, 0)
    seen: set[int] = {top.st_ino}
    size = top.st_blocks * 512
    todo = [os.fsencode(path)] if stat.S_ISDIR(top.st_mode) else []
    while todo:
        current = todo.pop()
        try:
            entries = list(os.scandir(current))
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed under us: usage is a best-effort number
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            size += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                todo.append(entry.path)
    return Usage(size, len(seen))


def remove_tree(path: Path) -> None:
    """Remove a directory tree (fd-based, never following symlinks); missing is fine."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except NotADirectoryError:
        os.unlink(path)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy `src` to the new path `dst` keeping everything.

    Owners, modes (incl. setuid), timestamps, xattrs (incl. security.capability
    and trusted.*), hardlinks, device nodes, fifos and sockets. `cp -a` does all
    of it in C and reflinks where the filesystem can; we only call it on our
    own directories.
    """
    proc = subprocess.run(
        ["cp", "-a", "--reflink=auto", "-T", "--", str(src), str(dst)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        remove_tree(dst)
        raise OSError(f"copying {src} to {dst} failed: {proc.stderr.strip()}")
