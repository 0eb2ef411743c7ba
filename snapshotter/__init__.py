"""pyctr snapshotter: snapshots (overlayfs or native copies) and the layer applier.

sn = open_snapshotter(config, db, config.root_dir)
sn.reconcile()                                  # at daemon start
top = Unpacker(sn).unpack(layers)               # image layers -> chain ID
mounts = sn.prepare("ctr-1", parent=top)        # a container's rootfs
"""

from __future__ import annotations

from pathlib import Path

from pyctr.daemon.config import Config
from pyctr.daemon.errors import InvalidArgument
from pyctr.daemon.metadata import Metadata
from pyctr.snapshotter.base import Info, Kind, LayerTarget, Snapshotter, Usage
from pyctr.snapshotter.mount import Mount, mount_all, mounted, unmount, unmount_all

__all__ = [
    "Info",
    "Kind",
    "LayerTarget",
    "Mount",
    "Snapshotter",
    "Usage",
    "mount_all",
    "mounted",
    "open_snapshotter",
    "unmount",
    "unmount_all",
]


def open_snapshotter(config: Config, db: Metadata, root: Path) -> Snapshotter:
    """The backend named by `config.snapshotter.backend`, keeping its dirs under `root`."""
    backend = config.snapshotter.backend
    if backend == "overlayfs":
        from pyctr.snapshotter.overlay import OverlaySnapshotter

        return OverlaySnapshotter(db, root)
    if backend == "native":
        from pyctr.snapshotter.native import NativeSnapshotter

        return NativeSnapshotter(db, root)
    raise InvalidArgument(
        f'config: snapshotter.backend must be "overlayfs" or "native", not {backend!r}'
    )
