"""The image side of the daemon in one object: stores, puller, GC, registry.

    manager = await open_images(ctx, stack)     # daemon/daemon.py, at start (runs a GC)
    image = await manager.pull("busybox", creds, platform="", progress=None)
    image = manager.store.get("busybox")        # ID, name, digest or repo digest
    config = manager.store.config(image)        # OCI image config (dict)
    await manager.remove("busybox")             # then GC
    await manager.close()

CRI's ImageService and the native Images/Content/GC services are thin layers
over this; the container side uses `store.get` / `store.config` and
`image.chain_id`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyctr.daemon.errors import FailedPrecondition
from pyctr.daemon.images.auth import Credentials
from pyctr.daemon.images.content import ContentStore
from pyctr.daemon.images.gc import GarbageCollector, GCResult
from pyctr.daemon.images.leases import Leases
from pyctr.daemon.images.pull import LayerProgress, Puller, PullProgress
from pyctr.daemon.images.reference import is_digest, is_image_id
from pyctr.daemon.images.registry import RegistryClient
from pyctr.daemon.images.store import Image, ImageStore

if TYPE_CHECKING:
    from pyctr.daemon.context import Context
    from pyctr.daemon.snapshots import Snapshots

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FsUsage:
    timestamp_ns: int
    mountpoint: str
    used_bytes: int
    inodes_used: int


class ImageManager:
    def __init__(self, ctx: Context) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self.config = cfg
        self.content: ContentStore = ctx.content
        self.leases = Leases(ctx.db)
        self.store = ImageStore(ctx.db, self.content, on_event=self._event)
        self.snapshotter: Snapshots = ctx.snapshotter
        self._dropped = False
        self.gc = GarbageCollector(self.content, self.store, self.leases, self.snapshotter)
        self.registry = RegistryClient(cfg.registry)
        self.puller = Puller(
            cfg, self.content, self.store, self.leases, self.gc, self.snapshotter, self.registry
        )

    async def start(self) -> None:
        # Drop expired leases and whatever only they kept (an interrupted
        # pull's partial downloads outlive a restart while its lease lives).
        await self.gc.collect()

    async def close(self) -> None:
        await self.gc.wait_idle()
        await self.registry.close()
        self.puller.close()

    def _event(self, action: str, image_id: str, name: str) -> None:
        if action == "delete":
            self._dropped = True
        self.ctx.events.publish(f"/images/{action}", image_id, name=name)

    async def pull(
        self,
        ref: str,
        creds: Credentials | None = None,
        platform: str = "",
        progress: PullProgress | None = None,
    ) -> Image:
        image = await self.puller.pull(ref, creds, platform, progress)
        if self._dropped:
            # The pull moved a name off an image that then had none left.
            self._dropped = False
            self.gc.schedule()
        return image

    async def remove(self, ref: str, collect: bool = True) -> list[str]:
        image = self.store.find(ref)
        # Untagging one of several names leaves the image, so that is fine.
        untag = (
            not (is_digest(ref) or is_image_id(ref)) and image is not None and len(image.names) > 1
        )
        if image is not None and not untag and image.id in self.ctx.image_volumes.mounted():
            raise FailedPrecondition(
                f"image {image.id[:19]} is mounted as an image volume by a container"
            )
        deleted = self.store.remove(ref)
        if deleted and collect:
            await self.gc.collect()
        return deleted

    async def collect(self) -> GCResult:
        return await self.gc.collect()

    def layer_done(self, lp: LayerProgress) -> int:
        """Bytes of a layer downloaded so far (live, for progress displays)."""
        if lp.state in ("waiting", "downloading"):
            offset = self.content.inflight_offset(lp.digest)
            if offset is not None:
                return offset
        return lp.done

    async def fs_usage(self) -> FsUsage:
        def measure() -> FsUsage:
            used, inodes = self.content.usage()
            u = self.snapshotter.fs_usage()
            used, inodes = used + u.size_bytes, inodes + u.inodes
            return FsUsage(time.time_ns(), str(self.config.root_dir), used, inodes)

        return await asyncio.to_thread(measure)
