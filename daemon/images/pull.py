"""The pull pipeline: reference → manifest → config → layers → snapshots → record.

    puller = Puller(config, content, images, leases, gc, snapshotter, registry)
    image = await puller.pull("busybox", creds, platform="", progress=PullProgress())

1. resolve the reference (tag or digest) to a manifest or index; for an index,
   choose the platform (the host's unless `platform` says otherwise);
2. fetch the config; check its diff IDs against the layers;
3. download the layers in parallel (at most `registry.max_concurrent_downloads`)
   into the content store while the unpacker applies them in threads, each
   layer as its bytes arrive (following the ingest file); a layer's snapshot
   is committed only after its blob's digest was verified (the follower's end
   of stream waits for that) and its diff ID matched;
4. commit the image record (names, pinned content, top chain ID) in one
   transaction.

Everything the pull stores is named in a lease before it is stored, so a GC
running concurrently keeps it. On success the lease goes (the image record is
the root from then on); on failure it is kept for `FAILED_PULL_RETENTION` so a
retry resumes the partial downloads and reuses the unpacked layers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyctr.daemon import config as cfg
from pyctr.daemon import metrics
from pyctr.daemon.errors import FailedPrecondition, Internal, InvalidArgument, disk_full
from pyctr.daemon.images.auth import Credentials
from pyctr.daemon.images.content import (
    ContentStore,
    DownloadStopped,
    IngestFollower,
    IngestWriter,
    ingest_ref,
)
from pyctr.daemon.images.leases import PULL_LEASE_TTL, Leases
from pyctr.daemon.images.reference import parse, validate_digest
from pyctr.daemon.images.registry import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST,
    Descriptor,
    Platform,
    RegistryClient,
    Repository,
    choose_platform,
    manifest_media_type,
    parse_json,
)
from pyctr.daemon.images.reserve import DiskReserve
from pyctr.daemon.images.store import MAX_CONFIG, Image, ImageName, ImageStore, LayerRecord
from pyctr.daemon.snapshots import Snapshots, snapshotter_errors
from pyctr.snapshotter.base import chain_ids

if TYPE_CHECKING:
    from pyctr.daemon.images.gc import GarbageCollector
    from pyctr.snapshotter.applier import Unpacker
    from pyctr.snapshotter.decode import Blob

log = logging.getLogger(__name__)

FAILED_PULL_RETENTION = 3600.0
MAX_INDEX_DEPTH = 3
MAX_LAYERS = 512

LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}
CONFIG_TYPES = {
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
}


@dataclass
class LayerProgress:
    digest: str
    size: int
    media_type: str
    # waiting → downloading → downloaded | exists → unpacking → unpacked; or failed
    state: str = "waiting"
    done: int = 0


@dataclass
class PullProgress:
    """What a pull is doing, for progress displays; read it at any time."""

    reference: str = ""
    phase: str = "resolving"  # resolving, fetching, unpacking, done, failed
    manifest_digest: str = ""
    image_id: str = ""
    layers: list[LayerProgress] = field(default_factory=list)
    error: str = ""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.changed.set()


class _Aborted(Exception):
    """Set on the layer futures when the pull fails, to stop the unpacker."""


class Puller:
    def __init__(
        self,
        config: cfg.Config,
        content: ContentStore,
        images: ImageStore,
        leases: Leases,
        gc: GarbageCollector | None,
        snapshotter: Snapshots,
        registry: RegistryClient,
    ) -> None:
        self.config = config
        self.content = content
        self.images = images
        self.leases = leases
        self.gc = gc
        self.snapshotter = snapshotter
        self.registry = registry
        # Unpacks wait on downloads; they get their own threads so they can
        # never starve the default executor the downloads use.
        self._unpack_pool = concurrent.futures.ThreadPoolExecutor(8, "pyctr-unpack")
        self._unpack_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._live_leases: set[str] = set()  # leases of pulls running in this process
        self.reserve = DiskReserve(config.root_dir)
        self.reserve.hold()

    def close(self) -> None:
        self._unpack_pool.shutdown(wait=True, cancel_futures=True)

    @functools.cached_property
    def unpacker(self) -> Unpacker:
        """The layer applier as [snapshotter] configures it: one for every
        pull, so what a full disk kept from one is retried by the next."""
        from pyctr.snapshotter.applier import Unpacker

        sc = self.config.snapshotter
        # The backend itself: the applier handles the snapshotter's own errors.
        return Unpacker(
            self.snapshotter.backend_impl,
            allow_devices=sc.allow_devices,
            max_parallel=sc.max_parallel_unpack,
        )

    async def _hold(self, lease_id: str, kind: str, keys: list[str]) -> None:
        if self.gc is not None:
            async with self.gc.lock:
                self.leases.add(lease_id, kind, keys)
        else:
            self.leases.add(lease_id, kind, keys)

    @contextlib.asynccontextmanager
    async def _unpack_lock(self, chain_id: str) -> Any:
        lock, users = self._unpack_locks.get(chain_id, (asyncio.Lock(), 0))
        self._unpack_locks[chain_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._unpack_locks[chain_id]
            if users == 1:
                del self._unpack_locks[chain_id]
            else:
                self._unpack_locks[chain_id] = (lock, users - 1)

    async def pull(
        self,
        ref: str,
        creds: Credentials | None = None,
        platform: str = "",
        progress: PullProgress | None = None,
    ) -> Image:
        r = parse(ref)
        plat = Platform.parse(platform) if platform else Platform.host()
        progress = progress or PullProgress()
        progress.reference = str(r)
        repo = self.registry.repository(r, creds)
        self.leases.expire()  # failed pulls' leases must not pile up between GCs
        lease = self.leases.create(PULL_LEASE_TTL, {"pyctr.io/pull": str(r)})
        self._live_leases.add(lease.id)
        ok = full = False
        try:
            image, names = await self._pull(repo, plat, progress, lease.id)
            image = self.images.commit(image, names)
            ok = True
        except BaseException as e:
            progress.error = str(e) or type(e).__name__
            progress.set_phase("failed")
            if full := disk_full(e):
                self.reserve.release()  # room for the deletes below
                self._drop_partial_downloads(lease.id)
                with contextlib.suppress(Exception):
                    self.leases.db.checkpoint()  # and the WAL's room
                # With that room, the extraction snapshots the full disk kept
                # from being removed (SQLite needs room to delete a row) go too.
                await asyncio.to_thread(self.unpacker.discard_leftovers)
            raise
        finally:
            metrics.PULLS.labels("ok" if ok else "failed").inc()
            self._live_leases.discard(lease.id)
            if ok:
                self._drop_stale_leases(str(r))
            if ok or not self.leases.resources(lease.id):
                self.leases.delete(lease.id)
            else:
                with contextlib.suppress(Exception):
                    self.leases.set_expiry(lease.id, time.time() + FAILED_PULL_RETENTION)
            if ok or full:
                self.reserve.hold()  # back once there is room (a stat when it is there)
        progress.image_id = image.id
        progress.set_phase("done")
        return image

    def _drop_partial_downloads(self, lease_id: str) -> None:
        """On a full disk the space matters more than resuming: drop this
        pull's partial downloads (its complete blobs stay, for a retry)."""
        for kind, key in self.leases.resources(lease_id):
            if kind == "ingest":
                with contextlib.suppress(Exception):
                    self.content.remove_ingest(key)

    def _drop_stale_leases(self, ref: str) -> None:
        """Once a pull of `ref` succeeded, the leases that earlier failed or
        crashed pulls of it left for a retry have served their purpose: without
        this they would pin the image's content after its removal for hours."""
        for old in self.leases.list():
            if old.labels.get("pyctr.io/pull") == ref and old.id not in self._live_leases:
                self.leases.delete(old.id)

    async def _pull(
        self, repo: Repository, plat: Platform, progress: PullProgress, lease_id: str
    ) -> tuple[Image, list[ImageName]]:
        r = repo.ref
        target, body = await repo.resolve()
        await self._hold(lease_id, "content", [target.digest])
        self.content.write_bytes(target.digest, body)
        desc, mbody = target, body
        depth = 0
        while desc.media_type in INDEX_TYPES:
            depth += 1
            if depth > MAX_INDEX_DEPTH:
                raise FailedPrecondition(f"image {r}: indexes nested too deep")
            child = choose_platform(parse_json(mbody, f"index of {r}"), plat, f"image {r}")
            if child.media_type and child.media_type not in MANIFEST_TYPES + INDEX_TYPES:
                raise FailedPrecondition(
                    f"image {r}: unsupported manifest media type {child.media_type!r}"
                )
            await self._hold(lease_id, "content", [child.digest])
            if self.content.exists(child.digest):
                mbody = self.content.read(child.digest, MAX_MANIFEST)
            else:
                mbody = await repo.fetch_manifest(child)
                self.content.write_bytes(child.digest, mbody)
            mt = manifest_media_type(mbody, child.media_type, f"manifest {child.digest}")
            desc = Descriptor(mt, child.digest, child.size, child.platform)
        progress.manifest_digest = desc.digest
        what = f"manifest {desc.digest} of {r}"
        manifest = parse_json(mbody, what)
        config_desc = Descriptor.from_json(manifest.get("config"), what)
        if config_desc.media_type not in CONFIG_TYPES:
            raise FailedPrecondition(f"{what}: unsupported config type {config_desc.media_type!r}")
        raw_layers = manifest.get("layers")
        if not isinstance(raw_layers, list) or len(raw_layers) > MAX_LAYERS:
            raise InvalidArgument(f"{what}: layers must be a list of at most {MAX_LAYERS}")
        layers = [Descriptor.from_json(x, what) for x in raw_layers]
        for layer in layers:
            if layer.media_type not in LAYER_TYPES:
                raise FailedPrecondition(
                    f"{what}: layer {layer.digest} has unsupported media type {layer.media_type!r}"
                )
        await self._hold(lease_id, "content", [config_desc.digest] + [x.digest for x in layers])
        if self.content.exists(config_desc.digest):
            cbody = self.content.read(config_desc.digest, MAX_CONFIG)
        else:
            cbody = await repo.fetch_blob_bytes(config_desc, MAX_CONFIG)
            self.content.write_bytes(config_desc.digest, cbody)
        config = parse_json(cbody, f"config {config_desc.digest} of {r}")
        diff_ids = _diff_ids(config, len(layers), f"config {config_desc.digest} of {r}")
        chain = chain_ids(diff_ids)
        await self._hold(lease_id, "snapshot", chain)
        await self._hold(lease_id, "ingest", [ingest_ref(x.digest) for x in layers])
        progress.layers = [LayerProgress(x.digest, x.size, x.media_type) for x in layers]
        progress.set_phase("fetching")
        top = await self._fetch_and_unpack(repo, layers, diff_ids, progress)
        if chain and top != chain[-1]:
            raise Internal(f"image {r}: unpacked to {top}, expected chain ID {chain[-1]}")
        found = config.get("config")
        inner: dict[str, Any] = found if isinstance(found, dict) else {}
        labels = inner.get("Labels")
        if not isinstance(labels, dict):
            labels = {}
        image = Image(
            id=config_desc.digest,
            manifest_digest=desc.digest,
            manifest_media_type=desc.media_type,
            layers=[
                LayerRecord(x.digest, x.size, x.media_type, d)
                for x, d in zip(layers, diff_ids, strict=True)
            ],
            chain_id=chain[-1] if chain else "",
            size=desc.size + config_desc.size + sum(x.size for x in layers),
            user=str(inner.get("User") or ""),
            labels={str(k): str(v) for k, v in labels.items()},
            platform=str(
                Platform(
                    str(config.get("os", "")),
                    str(config.get("architecture", "")),
                    str(config.get("variant", "") or ""),
                )
            ),
        )
        name = r.with_digest(r.digest) if r.digest else r.tagged_name
        names = [ImageName(name, r.repository, target.digest, target.media_type, desc.digest)]
        return image, names

    async def _fetch_and_unpack(
        self,
        repo: Repository,
        layers: list[Descriptor],
        diff_ids: list[str],
        progress: PullProgress,
    ) -> str:
        # Per layer, how the unpacker gets its bytes: following the download
        # as it is written, or opening the stored blob.
        ready: list[concurrent.futures.Future[Callable[[], Blob]]] = [
            concurrent.futures.Future() for _ in layers
        ]
        followers: list[IngestFollower] = []
        limit = asyncio.Semaphore(max(1, self.config.registry.max_concurrent_downloads))

        def download(i: int, desc: Descriptor, writer: IngestWriter) -> Awaitable[None]:
            # A fresh download is unpacked as it arrives. A resumed one is not:
            # its start is on disk already, and if it fails verification the
            # content store retries with a new writer that no follower sees.
            if writer.offset == 0 and not ready[i].done():
                follower = writer.follow()
                followers.append(follower)
                ready[i].set_result(lambda: follower)
            return repo.fetch_blob(desc, writer)

        async def fetch(i: int, desc: Descriptor) -> None:
            lp = progress.layers[i]
            async with limit:
                lp.state = "downloading"
                progress.changed.set()
                began = time.monotonic()
                fresh = await self.content.fetch(
                    desc.digest, desc.size, lambda w: download(i, desc, w)
                )
                took = time.monotonic() - began
                if fresh:
                    metrics.LAYER_BYTES.inc(desc.size)
                    metrics.LAYER_SECONDS.observe(took)
                log.debug(
                    "layer %d (%s): %s, %.1f MiB in %.3fs",
                    i, desc.digest, "downloaded" if fresh else "present", desc.size / 2**20, took,
                )  # fmt: skip
            lp.state, lp.done = ("downloaded" if fresh else "exists"), desc.size
            progress.changed.set()
            if not ready[i].done():
                path = self.content.path(desc.digest)
                ready[i].set_result(lambda: open(path, "rb"))  # noqa: SIM115 (the unpacker closes it)

        def opener(i: int) -> Any:
            def open_layer() -> Blob:
                how = ready[i].result()
                progress.layers[i].state = "unpacking"
                return how()

            return open_layer

        def unpack() -> str:
            from pyctr.snapshotter.applier import Layer

            with snapshotter_errors():
                top = self.unpacker.unpack(
                    [
                        Layer(diff_id=d, media_type=x.media_type, open=opener(i))
                        for i, (x, d) in enumerate(zip(layers, diff_ids, strict=True))
                    ]
                )
            for lp in progress.layers:
                lp.state = "unpacked"
            return top

        if not layers:
            return ""
        tasks = [asyncio.create_task(fetch(i, x)) for i, x in enumerate(layers)]
        chain = chain_ids(diff_ids)
        loop = asyncio.get_running_loop()
        async with self._unpack_lock(chain[-1]):
            unpacking: asyncio.Future[str] = loop.run_in_executor(self._unpack_pool, unpack)
            downloads: asyncio.Future[Any] = asyncio.gather(*tasks)
            try:
                await asyncio.wait(
                    [downloads, unpacking],  # type: ignore[list-item]
                    return_when=asyncio.FIRST_EXCEPTION,
                )
                if unpacking.done() and isinstance(unpacking.exception(), DownloadStopped):
                    await downloads  # it failed or is failing: its error says why
                if unpacking.done():
                    unpacking.result()  # the unpacker failed early: raise its error
                await downloads
                progress.set_phase("unpacking")
                return await asyncio.shield(unpacking)
            except BaseException:
                for t in tasks:
                    t.cancel()
                for f in ready:
                    if not f.done():
                        f.set_exception(_Aborted("pull aborted"))
                await asyncio.gather(*tasks, return_exceptions=True)
                # The unpack thread stops at its next layer; wait for it so
                # nothing writes snapshots after the pull has returned.
                while not unpacking.done():
                    with contextlib.suppress(BaseException):
                        await asyncio.wait([unpacking])
                if not unpacking.cancelled() and unpacking.exception() is not None:
                    log.info("unpack for %s stopped: %s", repo.ref, unpacking.exception())
                raise
            finally:
                for follower in followers:  # those of layers the unpacker skipped
                    follower.close()


def _diff_ids(config: dict[str, Any], n_layers: int, what: str) -> list[str]:
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise InvalidArgument(f"{what}: rootfs.diff_ids missing or malformed")
    for d in diff_ids:
        try:
            validate_digest(d)
        except InvalidArgument:
            raise InvalidArgument(f"{what}: invalid diff ID {d!r}") from None
    if len(diff_ids) != n_layers:
        raise InvalidArgument(
            f"{what}: {len(diff_ids)} diff IDs for {n_layers} layers in the manifest"
        )
    return diff_ids


def iter_manifest_refs(content: ContentStore, digest: str, media_type: str) -> Iterator[str]:
    """Digests a stored manifest or index refers to (present or not)."""
    try:
        doc = json.loads(content.read(digest, MAX_MANIFEST))
    except Exception:
        return
    if media_type in INDEX_TYPES or "manifests" in doc:
        for m in doc.get("manifests") or []:
            if isinstance(m, dict) and isinstance(m.get("digest"), str):
                yield m["digest"]
                yield from iter_manifest_refs(content, m["digest"], str(m.get("mediaType", "")))
    else:
        cfg_desc = doc.get("config")
        if isinstance(cfg_desc, dict) and isinstance(cfg_desc.get("digest"), str):
            yield cfg_desc["digest"]
        for layer in doc.get("layers") or []:
            if isinstance(layer, dict) and isinstance(layer.get("digest"), str):
                yield layer["digest"]
