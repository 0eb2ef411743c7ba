"""The overlayfs backend (the default).

Every snapshot dir holds `fs`: for a committed snapshot that is one layer's
diff, used as an overlay lowerdir; for an active one it is the upperdir
(with `work` beside it). Layers never copy their parents, so a layer dir
depends only on its own tar: the applier extracts layers in parallel, each
into a parentless active snapshot, and links each to its parent at commit.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path

from pyctr.snapshotter.base import Kind, LayerTarget, MetadataStore
from pyctr.snapshotter.errors import FailedPrecondition
from pyctr.snapshotter.fsutil import remove_tree
from pyctr.snapshotter.mount import Mount
from pyctr.snapshotter.store import DirSnapshotter


def overlay_supported(load: bool = False) -> bool:
    """Whether the kernel has overlayfs (also a host probe). With load, the
    module is loaded first if needed: /proc/filesystems lists only loaded
    filesystems, and a freshly booted node may not have needed overlay yet."""
    if _listed():
        return True
    if load and shutil.which("modprobe"):
        subprocess.run(["modprobe", "-q", "overlay"], capture_output=True, check=False)
        return _listed()
    return False


def _listed() -> bool:
    try:
        return any(
            line.split()[-1] == "overlay"
            for line in Path("/proc/filesystems").read_text().splitlines()
        )
    except OSError:
        return False


class OverlaySnapshotter(DirSnapshotter):
    backend = "overlayfs"
    independent_layers = True

    def __init__(self, db: MetadataStore, root: Path) -> None:
        if not overlay_supported(load=True):
            raise FailedPrecondition(
                'the kernel has no overlay filesystem; set [snapshotter] backend = "native"'
            )
        super().__init__(db, root)

    def _populate(self, new: Path, kind: Kind, parent: sqlite3.Row | None) -> None:
        (new / "fs").mkdir()
        os.chmod(new / "fs", 0o755)  # not left to the daemon's umask
        if kind == Kind.ACTIVE:
            (new / "work").mkdir(mode=0o700)
            if parent is not None:
                # The merged root shows the upper's metadata: take the image's.
                st = os.stat(self._fs(parent["id"]))
                os.chown(new / "fs", st.st_uid, st.st_gid)
                os.chmod(new / "fs", stat.S_IMODE(st.st_mode))
                os.utime(new / "fs", ns=(st.st_atime_ns, st.st_mtime_ns))

    def _mounts(self, row: sqlite3.Row) -> list[Mount]:
        sid = row["id"]
        lowers = [str(self._fs(i)) for i in self._chain(row["parent_id"])]
        if row["kind"] == Kind.ACTIVE:
            if not lowers:
                return [Mount("bind", str(self._fs(sid)), ["rbind", "rw"])]
            return [
                Mount(
                    "overlay",
                    "overlay",
                    [
                        f"lowerdir={':'.join(lowers)}",
                        f"upperdir={self._fs(sid)}",
                        f"workdir={self._dir(sid) / 'work'}",
                        "index=off",
                    ],
                )
            ]
        if not lowers:  # an empty view
            return [Mount("bind", str(self._fs(sid)), ["rbind", "ro"])]
        if len(lowers) == 1:  # overlay wants two lowers when it has no upper
            return [Mount("bind", lowers[0], ["rbind", "ro"])]
        return [Mount("overlay", "overlay", ["ro", f"lowerdir={':'.join(lowers)}", "index=off"])]

    def _after_commit(self, sid: int) -> None:
        remove_tree(self._dir(sid) / "work")

    def prepare_layer(self, key: str, parent: str | None) -> LayerTarget:
        # Parentless on purpose: see the module doc. The parent is checked
        # and linked in commit_layer, once it is committed.
        row = self._create(key, None, Kind.ACTIVE)
        return LayerTarget(key, self._fs(row["id"]), "overlay")

    def commit_layer(
        self, name: str, key: str, parent: str | None, labels: Mapping[str, str]
    ) -> None:
        self._commit(name, key, labels, reparent=True, parent=parent)
