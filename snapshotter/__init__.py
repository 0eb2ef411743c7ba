"""pyctr snapshotter: snapshots (overlayfs or native copies) and the layer applier.

sn = open_snapshotter("overlayfs", db, root)     # db: a MetadataStore (SQLite)
sn.reconcile()                                  # at daemon start
top = Unpacker(sn).unpack(layers)               # image layers -> chain ID
mounts = sn.prepare("ctr-1", parent=top)        # a container's rootfs
"""

from __future__ import annotations

from pathlib import Path

from pyctr.snapshotter.base import Info, Kind, LayerTarget, MetadataStore, Snapshotter, Usage
from pyctr.snapshotter.errors import InvalidArgument
from pyctr.snapshotter.mount import Mount, mount_all, mounted, unmount, unmount_all

__all__ = [
    "Info",
    "Kind",
    "LayerTarget",
    "MetadataStore",
    "Mount",
    "Snapshotter",
    "Usage",
    "mount_all",
    "mounted",
    "open_snapshotter",
    "unmount",
    "unmount_all",
]


BACKENDS = ("overlayfs", "native")


def open_snapshotter(backend: str, db: MetadataStore, root: Path) -> Snapshotter:
    """The backend by that name, its rows in `db` and its dirs under `root`."""
    if backend == "overlayfs":
        from pyctr.snapshotter.overlay import OverlaySnapshotter

        return OverlaySnapshotter(db, root)
    if backend == "native":
        from pyctr.snapshotter.native import NativeSnapshotter

        return NativeSnapshotter(db, root)
    raise InvalidArgument(
        f'config: snapshotter.backend must be "overlayfs" or "native", not {backend!r}'
    )
