"""Garbage collection of content, ingests and snapshots (mark and sweep).

Roots:
- every image record: its names' targets (index or manifest) and what they
  reference that is stored, its manifest, config and layers, and its top
  snapshot chain ID;
- every lease that has not expired: the content, ingests and snapshots it names;
- every active or view snapshot (containers' rootfs, extractions in progress);
- every download in flight in this process.
A snapshot's ancestors are kept with it. Everything else goes: blobs, ingests
and committed snapshots (children before parents).

When: at daemon start (after dropping expired leases: an interrupted pull's
partial downloads survive a restart only while its lease lives), after an image
is removed, and on demand (`pyctr gc`). `lock` is held from mark to the end of
sweep; pulls take it to add to their lease, so nothing a pull has claimed can
be swept under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from pyctr.daemon import metrics
from pyctr.daemon.errors import PyctrError
from pyctr.daemon.images.content import ContentStore
from pyctr.daemon.images.leases import Leases
from pyctr.daemon.images.pull import iter_manifest_refs
from pyctr.daemon.images.store import ImageStore
from pyctr.daemon.snapshots import Snapshots

log = logging.getLogger(__name__)


@dataclass
class GCResult:
    leases_expired: int = 0
    blobs_removed: list[str] = field(default_factory=list)
    ingests_removed: list[str] = field(default_factory=list)
    snapshots_removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    duration: float = 0.0


class GarbageCollector:
    def __init__(
        self,
        content: ContentStore,
        images: ImageStore,
        leases: Leases,
        snapshotter: Snapshots,
    ) -> None:
        self.content = content
        self.images = images
        self.leases = leases
        self.snapshotter = snapshotter
        self.lock = asyncio.Lock()
        self._pending: asyncio.Task[GCResult] | None = None

    async def collect(self) -> GCResult:
        async with self.lock:
            started = time.monotonic()
            result = GCResult(leases_expired=self.leases.expire())
            keep_blobs, keep_ingests, keep_snaps = self._mark()
            await asyncio.to_thread(self._sweep, keep_blobs, keep_ingests, keep_snaps, result)
            result.duration = time.monotonic() - started
        metrics.GC_RUNS.inc()
        metrics.GC_FREED.inc(result.bytes_freed)
        metrics.GC_SECONDS.observe(result.duration)
        if result.blobs_removed or result.snapshots_removed or result.ingests_removed:
            log.info(
                "gc: removed %d blobs, %d ingests, %d snapshots (%d bytes) in %.2fs",
                len(result.blobs_removed),
                len(result.ingests_removed),
                len(result.snapshots_removed),
                result.bytes_freed,
                result.duration,
            )
        return result

    def schedule(self) -> None:
        """Collect soon in the background (coalesced); for after a removal."""
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().create_task(self._background())

    async def _background(self) -> GCResult:
        try:
            return await self.collect()
        except Exception:
            log.exception("gc failed")
            return GCResult()

    async def wait_idle(self) -> None:
        if self._pending is not None:
            with contextlib.suppress(BaseException):
                await self._pending

    def _mark(self) -> tuple[set[str], set[str], set[str]]:
        blobs: set[str] = set()
        snaps: set[str] = set()
        for image in self.images.list():
            blobs |= image.content_digests
            for n in image.names:
                blobs.update(iter_manifest_refs(self.content, n.target_digest, n.target_media_type))
            blobs.update(
                iter_manifest_refs(self.content, image.manifest_digest, image.manifest_media_type)
            )
            if image.chain_id:
                snaps.add(image.chain_id)
        blobs |= self.leases.held("content")
        ingests = self.leases.held("ingest")
        snaps |= self.leases.held("snapshot")
        blobs |= self.content.inflight_digests()
        return blobs, ingests, snaps

    def _sweep(
        self, keep_blobs: set[str], keep_ingests: set[str], keep_snaps: set[str], r: GCResult
    ) -> None:
        for info in self.content.list():
            if (
                info.digest not in keep_blobs
                and not self.content.is_inflight(info.digest)
                and self.content.delete(info.digest)
            ):
                r.blobs_removed.append(info.digest)
                r.bytes_freed += info.size
        for ing in self.content.ingests():
            if ing.ref not in keep_ingests and not (
                ing.digest and self.content.is_inflight(ing.digest)
            ):
                self.content.remove_ingest(ing.ref)
                r.ingests_removed.append(ing.ref)
                r.bytes_freed += ing.offset
        self._sweep_snapshots(keep_snaps, r)

    def _sweep_snapshots(self, keep: set[str], r: GCResult) -> None:
        infos = {i.key: i for i in self.snapshotter.walk()}
        marked: set[str] = set()
        todo = [k for k, i in infos.items() if k in keep or str(i.kind) != "committed"]
        while todo:
            key = todo.pop()
            if key in marked:
                continue
            marked.add(key)
            parent = infos[key].parent if key in infos else None
            if parent:
                todo.append(parent)
        doomed = [i for k, i in infos.items() if k not in marked]
        # Newest first: a child is always newer than its parent.
        doomed.sort(key=lambda i: i.created_ns, reverse=True)
        for info in doomed:
            try:
                self.snapshotter.remove(info.key)
                r.snapshots_removed.append(info.key)
            except PyctrError as e:
                log.info("gc: keeping snapshot %s: %s", info.key, e)
