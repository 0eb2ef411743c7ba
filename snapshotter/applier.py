"""The layer applier: image layers in, committed snapshots named by chain ID out.

    top = Unpacker(snapshotter).unpack([Layer(diff_id, media_type, open), ...])

For each layer not yet committed, the compressed blob is opened, decompressed
by its media type (pyctr.snapshotter.decode, checked against the magic bytes),
extracted path-safely (pyctr.snapshotter.unpack) into an
`extract-<uuid> <chainID>` snapshot, verified against its diffID, and
committed as its chain ID with the diffID as a label. A failed layer leaves no
snapshot behind; a crash leaves `extract-*` snapshots that `reconcile()`
removes at the next start.

The blob may still be arriving (a pull follows its downloads): its read()
then waits for bytes, and raises at the end if the blob fails its own digest
check. So the blob is always read to its end before a layer is committed, and
when a layer fails, the blob's error, if it has one, is the one reported.

With the overlay backend layers do not depend on each other's content, so up
to `max_parallel` extract at once and are committed in chain order as they
finish; the native backend copies each parent, so it goes one by one.
Concurrent unpacks of overlapping chains share the work: the first to claim a
chain ID unpacks it, the others wait for it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyctr.snapshotter.base import (
    DIFF_ID_LABEL,
    EXTRACT_PREFIX,
    Kind,
    LayerTarget,
    Snapshotter,
    chain_ids,
)
from pyctr.snapshotter.decode import RAW_CHUNK, Blob, LayerDecoder, Reader, compression_of
from pyctr.snapshotter.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SnapshotterError,
)
from pyctr.snapshotter.fsutil import remove_tree
from pyctr.snapshotter.lowers import settle_implicit_dirs
from pyctr.snapshotter.unpack import Extracted, extract

log = logging.getLogger("pyctr.snapshotter")


@dataclass
class Layer:
    diff_id: str  # "sha256:..." of the uncompressed tar
    media_type: str  # OCI or Docker layer media type
    open: Callable[[], Blob]  # blocks until the compressed blob is available


def _read_to_end(raw: Reader) -> Exception | None:
    """Read a blob to its end; the error that stopped it, if one did."""
    try:
        while raw.read(RAW_CHUNK):
            pass
    except Exception as e:
        return e
    return None


class _Flights:
    """Chain IDs being unpacked right now, per snapshotter, across Unpackers."""

    _lock = threading.Lock()
    _by_root: dict[str, dict[str, cf.Future[None]]] = {}

    @classmethod
    def claim(cls, sn: Snapshotter, chain: str) -> tuple[cf.Future[None], bool]:
        with cls._lock:
            table = cls._by_root.setdefault(cls._where(sn), {})
            fut = table.get(chain)
            if fut is not None:
                return fut, False
            fut = cf.Future()
            table[chain] = fut
            return fut, True

    @classmethod
    def release(cls, sn: Snapshotter, chain: str) -> None:
        with cls._lock:
            cls._by_root.get(cls._where(sn), {}).pop(chain, None)

    @staticmethod
    def _where(sn: Snapshotter) -> str:
        # By directory, so two snapshotter objects over one root still share.
        root = getattr(sn, "root", None)
        return str(root) if root is not None else f"id:{id(sn)}"


class Unpacker:
    def __init__(
        self, snapshotter: Snapshotter, *, allow_devices: bool = True, max_parallel: int = 3
    ) -> None:
        self.sn = snapshotter
        self.allow_devices = allow_devices
        self.max_parallel = max(1, max_parallel)
        self._lock = threading.Lock()
        self._undiscarded: list[str] = []  # extraction snapshots a full disk kept

    def _committed(self, chain: str) -> bool:
        try:
            return self.sn.stat(chain).kind == Kind.COMMITTED
        except NotFound:
            return False

    def unpack(self, layers: Sequence[Layer]) -> str:
        """Make sure every layer's chain is committed; return the top chain ID.

        Synchronous (run it in a thread). Idempotent: committed chains are
        skipped without opening their blobs.
        """
        if not layers:
            raise InvalidArgument("an image needs at least one layer")
        chains = chain_ids([layer.diff_id for layer in layers])
        for layer in layers:
            compression_of(layer.media_type)  # refuse bad input before any work
        while True:
            # Layers are committed bottom-up, so the highest committed one
            # tells where work starts.
            start = next(
                (i + 1 for i in reversed(range(len(chains))) if self._committed(chains[i])), 0
            )
            if start == len(chains):
                return chains[-1]
            if self._unpack_from(layers, chains, start):
                return chains[-1]

    def _unpack_from(self, layers: Sequence[Layer], chains: list[str], start: int) -> bool:
        """Unpack chains[start:]; False when another unpack failed a layer we need."""
        claims = [_Flights.claim(self.sn, chain) for chain in chains[start:]]
        mine: list[int] = []
        for i, (fut, owned) in enumerate(claims, start):
            if owned and self._committed(chains[i]):  # finished just before our claim
                fut.set_result(None)
            elif owned:
                mine.append(i)
        targets: dict[int, LayerTarget] = {}
        pool = cf.ThreadPoolExecutor(
            max_workers=self.max_parallel if self.sn.independent_layers else 1,
            thread_name_prefix="pyctr-unpack",
        )
        done = False
        try:
            jobs: dict[int, cf.Future[Extracted]] = {}
            if self.sn.independent_layers:
                for i in mine:
                    jobs[i] = pool.submit(self._extract, layers[i], chains, i, targets)
            for i, (fut, _) in enumerate(claims, start):
                if i not in mine:
                    try:
                        fut.result()
                    except Exception:
                        return False  # its owner failed: look again, maybe claim it
                    continue
                if i not in jobs:  # native: the parent had to be committed first
                    jobs[i] = pool.submit(self._extract, layers[i], chains, i, targets)
                extracted = jobs[i].result()
                self._commit(layers[i], chains, i, targets.pop(i), extracted)
                fut.set_result(None)
            done = True
            return True
        finally:
            # Stop extractions not started; wait for running ones to stop.
            pool.shutdown(wait=True, cancel_futures=True)
            for target in targets.values():
                self._discard(target.key, target.path)
            self.discard_leftovers()
            for i in mine:
                # Released before waiters wake, so a retrying waiter can claim it.
                _Flights.release(self.sn, chains[i])
                fut = claims[i - start][0]
                if not fut.done():
                    fut.set_exception(RuntimeError(f"unpack of {chains[i]} failed"))
            if not done:
                log.debug("unpack of %s stopped", chains[-1])

    def _extract(
        self, layer: Layer, chains: list[str], i: int, targets: dict[int, LayerTarget]
    ) -> Extracted:
        what = f"layer {i} ({layer.diff_id})"
        parent = chains[i - 1] if i else None
        key = f"{EXTRACT_PREFIX}{uuid.uuid4().hex} {chains[i]}"
        target = self.sn.prepare_layer(key, parent)
        targets[i] = target
        try:
            with layer.open() as raw:
                began = time.monotonic()
                log.debug("%s: extracting", what)
                try:
                    decoder = LayerDecoder(raw, layer.media_type, what)
                    result = self._extract_tar(decoder, target, what)
                    # The diffID covers the whole stream, padding after the tar's end too.
                    while decoder.read():
                        pass
                except Exception as e:
                    # Whether the layer or the blob is at fault: a blob still
                    # downloading may be wrong (then its error is the one to report).
                    blob_error = _read_to_end(raw)
                    if blob_error is not None:
                        raise blob_error from e
                    raise
                # A blob still being downloaded ends only once its digest has been verified.
                blob_error = _read_to_end(raw)
                if blob_error is not None:
                    raise blob_error
            got = decoder.digest()
            if got != layer.diff_id:
                raise DataLoss(f"{what}: uncompressed content has digest {got}")
        except BaseException:
            targets.pop(i, None)
            self._discard(key, target.path)
            raise
        log.debug(
            "%s: %d entries, %d bytes in %.3fs",
            what,
            result.entries,
            result.bytes,
            time.monotonic() - began,
        )
        return result

    def _extract_tar(self, decoder: LayerDecoder, target: LayerTarget, what: str) -> Extracted:
        try:
            return extract(
                decoder.read, target.path, target.whiteouts, allow_devices=self.allow_devices
            )
        except InvalidArgument as e:
            if str(e).startswith(what):
                raise
            raise InvalidArgument(f"{what}: {e}") from None

    def _commit(
        self, layer: Layer, chains: list[str], i: int, target: LayerTarget, extracted: Extracted
    ) -> None:
        parent = chains[i - 1] if i else None
        began = time.monotonic()
        try:
            if target.whiteouts == "overlay":
                settle_implicit_dirs(
                    target.path, extracted.implicit_dirs, self.sn.lower_dirs(parent)
                )
            self.sn.commit_layer(chains[i], target.key, parent, {DIFF_ID_LABEL: layer.diff_id})
            log.debug(
                "layer %d (%s): committed in %.3fs", i, layer.diff_id, time.monotonic() - began
            )
        except AlreadyExists:
            self._discard(target.key, target.path)  # committed by someone else meanwhile
            if self.sn.stat(chains[i]).kind != Kind.COMMITTED:
                raise FailedPrecondition(
                    f"snapshot {chains[i]!r} exists but is not committed; remove it first"
                ) from None
        except SnapshotterError as e:
            self._discard(target.key, target.path)
            if isinstance(e, InvalidArgument):
                raise InvalidArgument(f"layer {i} ({layer.diff_id}): {e}") from None
            raise
        except BaseException:
            self._discard(target.key, target.path)
            raise

    def _discard(self, key: str, path: Path | None = None) -> None:
        try:
            self.sn.remove(key)
            return
        except NotFound:
            return
        except Exception:
            if path is None:
                log.exception("could not remove extraction snapshot %s", key)
                return
        # A full disk refuses even the row's removal (SQLite needs room to
        # write): free the extraction's tree, never needed again, and retry;
        # if other extractions took the room meanwhile, once they have stopped
        # (_unpack_from), and again once the puller freed the failed pull's
        # downloads. Whatever still fails, reconcile() clears at start.
        with contextlib.suppress(OSError):
            for entry in os.scandir(path):
                remove_tree(Path(entry.path))
        try:
            self.sn.remove(key)
        except NotFound:
            pass
        except Exception:
            with self._lock:
                self._undiscarded.append(key)

    def discard_leftovers(self) -> None:
        """Retry removing the extraction snapshots a full disk refused to drop."""
        with self._lock:
            keys, self._undiscarded = self._undiscarded, []
        failed = []
        for key in keys:
            try:
                self.sn.remove(key)
            except NotFound:
                pass
            except Exception:
                log.exception("could not remove extraction snapshot %s", key)
                failed.append(key)  # kept for the next try, once there is room
        if failed:
            with self._lock:
                self._undiscarded.extend(failed)
