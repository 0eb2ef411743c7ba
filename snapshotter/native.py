"""The native backend: every snapshot is a full copy of its parent's tree.

For filesystems overlayfs cannot use as upper/lower (or kernels without it).
Costs disk and time per container, but needs nothing from the kernel beyond
bind mounts. Layers build on a copy of their parent, so they are applied one
after another.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from pyctr.snapshotter.base import Kind
from pyctr.snapshotter.fsutil import copy_tree
from pyctr.snapshotter.mount import Mount
from pyctr.snapshotter.store import DirSnapshotter


class NativeSnapshotter(DirSnapshotter):
    backend = "native"
    independent_layers = False

    def _populate(self, new: Path, kind: Kind, parent: sqlite3.Row | None) -> None:
        if parent is None:
            (new / "fs").mkdir()
            os.chmod(new / "fs", 0o755)  # not left to the daemon's umask
        else:
            copy_tree(self._fs(parent["id"]), new / "fs")

    def _mounts(self, row: sqlite3.Row) -> list[Mount]:
        mode = "rw" if row["kind"] == Kind.ACTIVE else "ro"
        return [Mount("bind", str(self._fs(row["id"])), ["rbind", mode])]

    def lower_dirs(self, name: str | None) -> list[Path]:
        return [] if name is None else [self._fs(self._committed(name)["id"])]
