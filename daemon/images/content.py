"""The content store: blobs addressed by digest, on disk under `<root>/content`.

    blobs/sha256/<hex>     committed blobs; each one's bytes hash to its name
    ingest/<ref>/data      a download in progress (ref = "sha256-<hex>")
    ingest/<ref>/meta      what it must become: {"digest", "size"}

Writing goes through an `IngestWriter`: bytes are appended to the ingest file
while they are hashed; `commit()` checks size and digest, fsyncs, and renames
the file into `blobs/` atomically, so a blob that is present is complete and
verified, and a blob that fails verification is never stored. An interrupted
download leaves its ingest behind: opening the same ref again re-hashes what is
there and continues from that offset (HTTP Range), so a crashed or cut pull
resumes. Stale ingests are removed by GC unless a lease holds them.

Two pulls that need one blob at the same time download it once: `fetch()`
keeps one in-flight download per digest; later callers wait for it.
Files are 0600 and directories 0700: image content may hold secrets.

A blob can be read while it downloads (`IngestWriter.follow()`), so a layer
unpacks as it arrives; the follower's end of stream waits for the digest check.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pyctr.daemon.errors import (
    DataLoss,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from pyctr.daemon.images.reference import validate_digest

CHUNK = 1 << 20


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    created: float  # seconds since the epoch (mtime of the committed file)


@dataclass(frozen=True)
class IngestInfo:
    ref: str
    digest: str
    size: int  # expected
    offset: int  # bytes written so far
    updated: float


def _check_sha256(digest: str) -> str:
    validate_digest(digest)
    if not digest.startswith("sha256:"):
        # Every registry and image we meet uses sha256; refusing others keeps
        # one hash implementation and one blob directory.
        raise InvalidArgument(f"unsupported digest algorithm in {digest!r}")
    return digest[len("sha256:") :]


def ingest_ref(digest: str) -> str:
    return "sha256-" + _check_sha256(digest)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class IngestWriter:
    """Appends a blob's bytes to its ingest file, hashing as it goes.

    Opening resumes a previous partial ingest of the same digest (its bytes are
    re-hashed, never trusted). Not thread-safe; one writer per ref at a time
    (an flock keeps a second process out too). Followers may read from other
    threads.
    """

    def __init__(self, store: ContentStore, digest: str, size: int) -> None:
        if size < 0:
            raise InvalidArgument(f"blob {digest}: negative size {size}")
        self.store = store
        self.digest = digest
        self.size = size
        self.ref = ingest_ref(digest)
        self.dir = store.ingest_dir / self.ref
        self.dir.mkdir(mode=0o700, exist_ok=True)
        meta = {"digest": digest, "size": size}
        meta_path = self.dir / "meta"
        fd = os.open(self.dir / "data", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._file = os.fdopen(fd, "r+b", buffering=0)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise Unavailable(f"blob {digest} is being written by another process") from None
        self._hash = hashlib.sha256()
        self.offset = 0
        self._progress = threading.Condition()  # followers wait on it for bytes
        self._followed = False
        self._verified = False  # size and digest checked: followers may end
        self._ended = False
        self._resets = 0
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            old = None
        if old == meta:
            self._rehash()
        else:
            self._file.truncate(0)
            tmp = self.dir / "meta.tmp"
            tmp.write_text(json.dumps(meta))
            tmp.chmod(0o600)
            tmp.replace(meta_path)

    def _rehash(self) -> None:
        self._file.seek(0)
        n = 0
        while n < self.size and (chunk := self._file.read(min(CHUNK, self.size - n))):
            self._hash.update(chunk)
            n += len(chunk)
        # Anything past the expected size cannot be right; drop it.
        self._file.truncate(n)
        self._file.seek(n)
        self.offset = n

    def write(self, chunk: bytes) -> None:
        if self.offset + len(chunk) > self.size:
            raise DataLoss(
                f"blob {self.digest} is larger than its descriptor says ({self.size} bytes)"
            )
        try:
            # An unbuffered write may be short (a disk filling up): the rest
            # must follow, or the error must come, never silently less.
            view = memoryview(chunk)
            while view:
                view = view[self._file.write(view) :]
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                # Keeping the partial download would hold the space a full disk
                # needs back; a retry starts over.
                self.abort()
                raise ResourceExhausted(f"blob {self.digest}: {e.strerror}") from None
            raise
        self._hash.update(chunk)
        self.offset += len(chunk)
        if self._followed:
            self._wake()

    def reset(self) -> None:
        """Start over from byte 0 (the server ignored our Range)."""
        self._file.truncate(0)
        self._file.seek(0)
        self._hash = hashlib.sha256()
        self.offset = 0
        self._resets += 1

    def follow(self) -> IngestFollower:
        """A reader of this blob's bytes as they are written, from byte 0.

        Its read() returns what has arrived, waiting for more; at the end of
        the blob it returns b"" only once commit() has verified size and
        digest (not waiting for the fsync that follows), and it raises
        DownloadStopped if the ingest ends any other way.
        Until then the bytes are unverified: whoever uses them checks what it
        makes of them (the applier checks the layer's diff ID) and drops it all
        if read() raises. After a reset() (a server ignoring Range) the
        follower goes on from where it was once the bytes are there again:
        the same blob, or a digest failure at the end.
        """
        fd = os.open(self.dir / "data", os.O_RDONLY | os.O_CLOEXEC)
        self._followed = True
        return IngestFollower(self, fd)

    def _wake(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def _end(self, verified: bool = False) -> None:
        with self._progress:
            if verified:
                self._verified = True
            else:
                self._ended = True
            self._progress.notify_all()

    def commit(self) -> None:
        """Verify size and digest, then move the blob into place atomically.

        On a mismatch the ingest is discarded (its bytes are wrong, resuming
        them would only reproduce the error) and DataLoss is raised.
        """
        if self.offset != self.size:
            self.abort()
            raise DataLoss(
                f"blob {self.digest}: got {self.offset} bytes, descriptor says {self.size}"
            )
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self.digest:
            self.abort()
            raise DataLoss(f"blob {self.digest}: content hashes to {actual}")
        if self._followed:
            self._end(verified=True)  # the bytes are right; durability is our business
        os.fsync(self._file.fileno())
        if os.fstat(self._file.fileno()).st_size != self.size:  # what is on disk counts
            self.abort()
            raise DataLoss(f"blob {self.digest}: the stored file is not {self.size} bytes long")
        target = self.store.path(self.digest)
        os.replace(self.dir / "data", target)
        _fsync_dir(target.parent)
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def close(self) -> None:
        """Stop writing; the partial ingest stays for a later resume."""
        if not self._file.closed:
            self._file.close()
        self._end()

    def abort(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class DownloadStopped(Unavailable):
    """A follower's blob will not be complete: the download's own error says why."""


class IngestFollower:
    """See IngestWriter.follow()."""

    def __init__(self, writer: IngestWriter, fd: int) -> None:
        self._writer = writer
        self._fd = fd
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        w = self._writer
        while True:
            with w._progress:
                while w.offset <= self._pos:
                    if w._verified and self._pos >= w.size:
                        return b""
                    if w._ended:
                        raise DownloadStopped(
                            f"blob {w.digest}: the download stopped before it was complete"
                        )
                    w._progress.wait()
                avail = w.offset - self._pos
                resets = w._resets
            data = os.pread(self._fd, avail if n < 0 else min(n, avail), self._pos)
            if data:
                self._pos += len(data)
                return data
            if w._resets == resets:  # not a reset() truncating it meanwhile
                raise DownloadStopped(f"blob {w.digest}: the file is shorter than written")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> IngestFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs" / "sha256"
        self.ingest_dir = root / "ingest"
        for d in (root, root / "blobs", self.blob_dir, self.ingest_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            d.chmod(0o700)
        self._inflight: dict[str, tuple[asyncio.Future[None], IngestWriter | None]] = {}

    # -- reading ---------------------------------------------------------------

    def path(self, digest: str) -> Path:
        return self.blob_dir / _check_sha256(digest)

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def info(self, digest: str) -> BlobInfo:
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            raise NotFound(f"content {digest} not found") from None
        return BlobInfo(digest=digest, size=st.st_size, created=st.st_mtime)

    def open(self, digest: str) -> BinaryIO:
        try:
            return self.path(digest).open("rb")
        except FileNotFoundError:
            raise NotFound(f"content {digest} not found") from None

    def read(self, digest: str, max_size: int) -> bytes:
        with self.open(digest) as f:
            data = f.read(max_size + 1)
        if len(data) > max_size:
            raise InvalidArgument(f"content {digest} is larger than {max_size} bytes")
        return data

    def list(self) -> list[BlobInfo]:
        out = []
        with os.scandir(self.blob_dir) as it:
            for entry in it:
                if len(entry.name) != 64:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    out.append(BlobInfo("sha256:" + entry.name, st.st_size, st.st_mtime))
        return out

    def delete(self, digest: str) -> bool:
        try:
            self.path(digest).unlink()
            return True
        except FileNotFoundError:
            return False

    def usage(self) -> tuple[int, int]:
        """(bytes on disk, inodes) of blobs and ingests."""
        used, inodes = 0, 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in filenames + dirnames:
                with contextlib.suppress(FileNotFoundError):
                    st = os.lstat(os.path.join(dirpath, name))
                    used += st.st_blocks * 512
                    inodes += 1
        return used, inodes

    # -- writing ---------------------------------------------------------------

    def writer(self, digest: str, size: int) -> IngestWriter:
        """Open (or resume) the ingest of one blob. Blocking: may re-hash."""
        return IngestWriter(self, digest, size)

    def write_bytes(self, digest: str, data: bytes) -> None:
        """Store a small blob held in memory (manifest, config), verified."""
        if self.exists(digest):
            return
        w = self.writer(digest, len(data))
        try:
            w.reset()
            w.write(data)
            w.commit()
        finally:
            w.close()

    def ingests(self) -> builtins.list[IngestInfo]:
        out = []
        with os.scandir(self.ingest_dir) as it:
            for entry in it:
                d = Path(entry.path)
                try:
                    meta = json.loads((d / "meta").read_text())
                    st = (d / "data").stat()
                    out.append(
                        IngestInfo(
                            entry.name, meta["digest"], meta["size"], st.st_size, st.st_mtime
                        )
                    )
                except (OSError, ValueError, KeyError, TypeError):
                    # Half-created ingest (crash between mkdir and meta).
                    out.append(IngestInfo(entry.name, "", 0, 0, entry.stat().st_mtime))
        return out

    def remove_ingest(self, ref: str) -> None:
        if "/" in ref or ref in ("", ".", ".."):
            raise InvalidArgument(f"invalid ingest ref {ref!r}")
        if self._is_inflight_ref(ref):
            return
        shutil.rmtree(self.ingest_dir / ref, ignore_errors=True)

    def _is_inflight_ref(self, ref: str) -> bool:
        return any(ingest_ref(d) == ref for d in self._inflight)

    def inflight_offset(self, digest: str) -> int | None:
        """Bytes written so far by the download of `digest` in progress, if any."""
        entry = self._inflight.get(digest)
        if entry is None:
            return None
        return entry[1].offset if entry[1] is not None else 0

    def inflight_digests(self) -> set[str]:
        return set(self._inflight)

    def is_inflight(self, digest: str) -> bool:
        return digest in self._inflight

    async def fetch(
        self, digest: str, size: int, download: Callable[[IngestWriter], Awaitable[None]]
    ) -> bool:
        """Make sure blob `digest` is stored, downloading it with `download` if not.

        `download(writer)` appends the bytes from `writer.offset` on. One
        download per digest runs at a time in this process; a caller that finds
        one running waits for it, and tries itself if it failed (the first
        caller's credentials or mirror may have been the problem). Returns True
        if this call downloaded it.
        """
        _check_sha256(digest)
        while True:
            if self.exists(digest):
                if self.path(digest).stat().st_size != size:
                    raise DataLoss(f"stored blob {digest} does not have size {size}")
                # A crash between a commit's rename and its cleanup leaves the
                # ingest dir of a stored blob: nothing will ever resume it.
                leftover = self.ingest_dir / ingest_ref(digest)
                if digest not in self._inflight and leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
                return False
            entry = self._inflight.get(digest)
            if entry is None:
                break
            await asyncio.wait([entry[0]])
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = (fut, None)
        try:
            writer = await asyncio.to_thread(self.writer, digest, size)
            self._inflight[digest] = (fut, writer)
            try:
                resumed = writer.offset > 0
                if writer.offset < size:
                    await download(writer)
                try:
                    await asyncio.to_thread(writer.commit)
                except DataLoss:
                    if resumed:
                        # A resumed partial may be what was wrong; one fresh try.
                        writer = await asyncio.to_thread(self.writer, digest, size)
                        self._inflight[digest] = (fut, writer)
                        await download(writer)
                        await asyncio.to_thread(writer.commit)
                    else:
                        raise
            finally:
                writer.close()
        except BaseException:
            fut.cancel()
            raise
        else:
            fut.set_result(None)
            return True
        finally:
            del self._inflight[digest]

    def walk_blobs(self) -> Iterator[str]:
        for info in self.list():
            yield info.digest
