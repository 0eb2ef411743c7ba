"""The lean tar reader and the layer decoder, against tarfile and hostile input."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import tempfile

import pytest
import zstandard

from pyctr.snapshotter import tarstream
from pyctr.snapshotter.decode import CHUNK, LayerDecoder
from pyctr.snapshotter.errors import InvalidArgument
from pyctr.snapshotter.tarstream import Header, TarFormatError, TarReader
from tests.snapshotter.layers import MEDIA, build_tar, chr_, dir_, fifo, hard, reg, sym

ENTRIES = [
    dir_("d" * 150, mode=0o2755, uid=1000, gid=1001),
    reg("d" * 150 + "/" + "f" * 200, b"deep" * 5000, mode=0o4755),
    hard("d" * 150 + "/" + "h" * 180, "d" * 150 + "/" + "f" * 200),
    sym("s", "t" * 300),
    chr_("dev/null", 1, 3),
    fifo("p"),
    reg("x", b"x" * 10000, xattrs={"user.a": b"\xff\x00b", "security.capability": b"c"}),
    reg("empty"),
]


def _tar(entries: list, fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _chunks(raw: bytes, size: int = 777) -> list[bytes]:
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def _reader(raw: bytes, size: int = 777) -> TarReader:
    parts = _chunks(raw, size)[::-1]
    return TarReader(lambda: parts.pop() if parts else b"")


def _read_all(raw: bytes, size: int = 777) -> list[tuple[Header, bytes | None]]:
    out = []
    r = _reader(raw, size)
    while (h := r.next()) is not None:
        data = None
        if h.kind == tarstream.REG:
            with tempfile.TemporaryFile() as f:
                assert r.copy_to(f.fileno()) == h.size
                f.seek(0)
                data = f.read()
        out.append((h, data))
    return out


def _summary(h: Header, data: bytes | None) -> tuple:
    return (
        h.name.rstrip(b"/"),
        h.kind,
        h.mode,
        h.uid,
        h.gid,
        h.mtime_ns,
        h.linkname,
        (h.devmajor, h.devminor),
        h.xattrs,
        hashlib.sha256(data).hexdigest() if data is not None else None,
    )


def _tarfile_summary(raw: bytes) -> list[tuple]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|", errors="surrogateescape") as tar:
        for m in tar:
            f = tar.extractfile(m) if m.isreg() else None
            data = f.read() if f is not None else None
            out.append(
                (
                    os.fsencode(m.name).rstrip(b"/"),
                    b"0" if m.isreg() else m.type,
                    m.mode,
                    m.uid,
                    m.gid,
                    int(m.mtime) * 1_000_000_000,
                    os.fsencode(m.linkname),
                    (m.devmajor, m.devminor) if m.ischr() or m.isblk() else (0, 0),
                    {
                        k[len("SCHILY.xattr.") :]: v.encode("utf-8", "surrogateescape")
                        for k, v in m.pax_headers.items()
                        if k.startswith("SCHILY.xattr.")
                    },
                    hashlib.sha256(data).hexdigest() if data is not None else None,
                )
            )
    return out


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
@pytest.mark.parametrize("chunk", [1, 512, 777, 1 << 20])
def test_same_entries_as_tarfile(fmt: int, chunk: int) -> None:
    raw = _tar(ENTRIES, fmt)
    mine = [_summary(h, d) for h, d in _read_all(raw, chunk)]
    assert mine == _tarfile_summary(raw)


def test_ustar_prefix_and_v7_directory() -> None:
    ti, data = reg("p" * 120 + "/name", b"1")
    raw = _tar([(ti, data)], tarfile.USTAR_FORMAT)
    assert [h.name for h, _ in _read_all(raw)] == [b"p" * 120 + b"/name"]
    v7 = tarfile.TarInfo("olddir/")
    v7.type = tarfile.AREGTYPE
    raw = _tar([(v7, None)], tarfile.USTAR_FORMAT)
    assert [(h.name, h.kind) for h, _ in _read_all(raw)] == [(b"olddir/", tarstream.DIR)]


def test_pax_times_and_globals() -> None:
    ti, data = reg("f", b"x")
    ti.pax_headers = {"mtime": "1600000000.123456789", "atime": "-1.5"}
    raw = _tar([(ti, data)], tarfile.PAX_FORMAT)
    (h, _), *_ = _read_all(raw)
    assert h.mtime_ns == 1_600_000_000_123_456_789 and h.atime_ns == -1_500_000_000
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"uid": "4242"}
    ) as tar:
        for ti, data in [reg("a", b"1"), reg("b", b"2")]:
            tar.addfile(ti, io.BytesIO(data))
    assert [h.uid for h, _ in _read_all(buf.getvalue())] == [4242, 4242]


def test_base256_numbers() -> None:
    ti, data = reg("big-owner", b"x", uid=1 << 30, gid=7)
    raw = _tar([(ti, data)], tarfile.GNU_FORMAT)  # uid above 8 octal digits: base-256
    assert [(h.uid, h.gid) for h, _ in _read_all(raw)] == [(1 << 30, 7)]


def _corrupt(raw: bytes, at: int, value: bytes) -> bytes:
    return raw[:at] + value + raw[at + len(value) :]


def _rechecksum(raw: bytes, header: int) -> bytes:
    block = raw[header : header + 512]
    total = sum(block[:148]) + 256 + sum(block[156:])
    return _corrupt(raw, header + 148, b"%06o\0 " % total)


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda raw: _corrupt(raw, 1024 + 10, b"X"), "checksum"),
        (lambda raw: raw[: 1024 + 512 + 100], "unexpected end"),
        (lambda raw: raw[: 1024 + 300], "unexpected end"),
        (lambda raw: _rechecksum(_corrupt(raw, 1024 + 124, b"9" * 11), 1024), "octal size"),
    ],
)
def test_malformed_archives_refused(mangle, message: str) -> None:  # type: ignore[no-untyped-def]
    raw = build_tar([reg("a", b"1" * 100), reg("b", b"2" * 1000)])
    # In this PAX tar "b" has no extended header: its header is at 1024.
    assert raw[1024:1025] == b"b"
    with pytest.raises(TarFormatError, match=message):
        _read_all(mangle(raw))


def test_sparse_and_oversized_extended_headers_refused() -> None:
    ti, data = reg("s", b"x")
    ti.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}
    with pytest.raises(TarFormatError, match="sparse"):
        _read_all(_tar([(ti, data)], tarfile.PAX_FORMAT))
    ti, data = reg("f", b"x")
    ti.pax_headers = {"comment": "x" * (2 << 20)}
    with pytest.raises(TarFormatError, match="extended tar header of"):
        _read_all(_tar([(ti, data)], tarfile.PAX_FORMAT))


def test_endless_extended_headers_refused() -> None:
    one = _tar([reg("f", b"x")], tarfile.PAX_FORMAT)
    ti = tarfile.TarInfo("@LongLink")
    ti.type = tarfile.GNUTYPE_LONGNAME
    ti.size = 4
    longname = ti.tobuf(tarfile.GNU_FORMAT) + b"name".ljust(512, b"\0")
    with pytest.raises(TarFormatError, match="too many consecutive"):
        _read_all(longname * 100 + one)


def test_stream_without_end_blocks_ends_at_a_header_boundary() -> None:
    raw = build_tar([reg("a", b"1")])
    assert [h.name for h, _ in _read_all(raw[:1536])] == [b"a"]


# -- the decoder ------------------------------------------------------------------


def _decode(blob: bytes, kind: str, read_size: int = 1000) -> tuple[bytes, LayerDecoder]:
    src = io.BytesIO(blob)

    class Trickle:  # returns less than asked, as a download in progress does
        def read(self, n: int = -1) -> bytes:
            return src.read(min(n, read_size))

    dec = LayerDecoder(Trickle(), MEDIA[kind], "layer 0")  # type: ignore[arg-type]
    parts = []
    while chunk := dec.read():
        assert len(chunk) <= CHUNK
        parts.append(chunk)
    return b"".join(parts), dec


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_decoder_round_trip_and_digest(kind: str) -> None:
    raw = os.urandom(300_000) + b"a" * 3_000_000
    blob = {
        "gzip": gzip.compress(raw),
        "zstd": zstandard.ZstdCompressor().compress(raw),
        "none": raw,
    }[kind]
    out, dec = _decode(blob, kind)
    assert out == raw
    assert dec.digest() == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_concatenated_gzip_members_are_one_stream() -> None:
    out, _ = _decode(gzip.compress(b"first ") + gzip.compress(b"second"), "gzip", 7)
    assert out == b"first second"


@pytest.mark.parametrize(
    "blob",
    [
        gzip.compress(b"x" * 100_000)[:-20],  # cut short
        gzip.compress(b"x" * 100) + b"garbage after the member",
        _corrupt(gzip.compress(b"hello" * 100), 15, b"\xff\xff\xff"),
    ],
)
def test_decoder_errors_become_invalid_argument(blob: bytes) -> None:
    with pytest.raises(InvalidArgument, match="layer 0: corrupt compressed data"):
        _decode(blob, "gzip")


def test_decoder_bounds_each_chunk_of_a_bomb() -> None:
    bomb = gzip.compress(bytes(64 << 20), compresslevel=9)  # ~64 KiB in, 64 MiB out
    assert len(bomb) < 1 << 20
    out, dec = _decode(bomb, "gzip", 1 << 20)
    assert dec.bytes == 64 << 20 and len(out) == 64 << 20
