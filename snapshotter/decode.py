"""A layer blob's bytes in, its tar stream out in chunks, hashed on the way.

    dec = LayerDecoder(raw, media_type, what)  # checks the magic against the media type
    while chunk := dec.read():                 # at most CHUNK bytes each
        ...
    dec.digest()                               # "sha256:..." of all of it: the diff ID

`raw` needs only `read(n)`, which may return fewer bytes than asked (a blob
still being downloaded does). gzip goes through isal's zlib-compatible
decompressobj with a cap on each output chunk, so a small blob that inflates
to gigabytes never sits in memory; concatenated gzip members are read as one
stream, as gzip(1) does. zstd goes through zstandard's stream reader, frames
across. Decoder errors become InvalidArgument naming the layer.
"""

from __future__ import annotations

import hashlib
import zlib
from types import TracebackType
from typing import Protocol

import zstandard
from isal import isal_zlib

from pyctr.snapshotter.errors import InvalidArgument


class Reader(Protocol):
    """What the decoder reads a blob through: a file, or a download in progress."""

    def read(self, n: int = -1, /) -> bytes: ...


class Blob(Reader, Protocol):
    """A `Reader` the applier opens and closes (`with layer.open() as raw`)."""

    def __enter__(self) -> Blob: ...
    def __exit__(
        self,
        t: type[BaseException] | None,
        v: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> object: ...


CHUNK = 1 << 20  # decompressed bytes per read(): big enough that per-call costs vanish
RAW_CHUNK = 1 << 20  # compressed bytes per read of the blob
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_DECODE_ERRORS: tuple[type[BaseException], ...] = (  # type: ignore[assignment]
    EOFError,
    zlib.error,
    isal_zlib.IsalError,
    zstandard.ZstdError,
)


def compression_of(media_type: str) -> str:
    """ "gzip", "zstd" or "none", from an OCI or Docker layer media type."""
    mt = media_type.strip().lower()
    if not mt.startswith(
        ("application/vnd.oci.image.layer.", "application/vnd.docker.image.rootfs.")
    ):
        raise InvalidArgument(f"unsupported layer media type {media_type!r}")
    if mt.endswith(("+gzip", ".gzip")):
        return "gzip"
    if mt.endswith(("+zstd", ".zstd")):
        return "zstd"
    if mt.endswith(("tar", ".tar")):
        return "none"
    raise InvalidArgument(f"unsupported layer media type {media_type!r}")


class _Prefixed:
    """`raw` with bytes already read from it put back in front (for zstd)."""

    def __init__(self, head: bytes, raw: Reader) -> None:
        self.head = head
        self.raw = raw

    def read(self, n: int = -1) -> bytes:
        if self.head:
            out, self.head = self.head, b""
            return out
        return self.raw.read(n)


class LayerDecoder:
    def __init__(self, raw: Reader, media_type: str, what: str) -> None:
        self.what = what
        self.raw = raw
        self.sha = hashlib.sha256()
        self.bytes = 0  # decompressed bytes read so far
        self._eof = False
        kind = compression_of(media_type)
        head = self._head()
        found = "gzip" if head[:2] == GZIP_MAGIC else "zstd" if head[:4] == ZSTD_MAGIC else "none"
        if found != kind:
            actual = "uncompressed (or unknown)" if found == "none" else found
            raise InvalidArgument(
                f"{what}: media type {media_type} says {kind} but the data is {actual}"
            )
        self._pending = head  # compressed bytes read but not yet decoded
        self._next = {"gzip": self._gzip, "zstd": self._zstd, "none": self._plain}[kind]
        if kind == "gzip":
            self._gz = isal_zlib.decompressobj(wbits=31)
        elif kind == "zstd":
            self._zs = zstandard.ZstdDecompressor().stream_reader(
                _Prefixed(head, raw),  # type: ignore[arg-type]  # read() is all it uses
                read_size=RAW_CHUNK,
                read_across_frames=True,
            )

    def _head(self) -> bytes:
        """At least 4 bytes from the blob (fewer only if it is that short)."""
        head = b""
        while len(head) < 4:
            more = self.raw.read(RAW_CHUNK)
            if not more:
                break
            head += more
        return head

    def read(self) -> bytes:
        """The next chunk of the tar stream (at most CHUNK bytes); b"" at its end."""
        if self._eof:
            return b""
        try:
            out = self._next()
        except _DECODE_ERRORS as e:
            raise InvalidArgument(f"{self.what}: corrupt compressed data: {e}") from None
        if out:
            self.sha.update(out)
            self.bytes += len(out)
        else:
            self._eof = True
        return out

    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()

    def _raw(self) -> bytes:
        if self._pending:
            out, self._pending = self._pending, b""
            return out
        return self.raw.read(RAW_CHUNK)

    def _plain(self) -> bytes:
        return self._raw()

    def _zstd(self) -> bytes:
        return self._zs.read(CHUNK)  # type: ignore[no-any-return]

    def _gzip(self) -> bytes:
        while True:
            gz = self._gz
            if gz.unconsumed_tail:
                data = gz.unconsumed_tail
            elif gz.eof:
                # One member done: another may follow (gzip(1) concatenates).
                data = gz.unused_data or self._raw()
                if not data:
                    return b""
                gz = self._gz = isal_zlib.decompressobj(wbits=31)
            else:
                data = self._raw()
                if not data:
                    raise EOFError("compressed data ended before the end of the stream")
            out = gz.decompress(data, CHUNK)
            if out:
                return out  # type: ignore[no-any-return]
