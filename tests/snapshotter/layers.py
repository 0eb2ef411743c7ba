"""Build layer tars in memory, wrap them as applier Layers, and describe trees."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import struct
import tarfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from pyctr.snapshotter.applier import Layer

T0 = 1_600_000_000  # a fixed mtime, so trees compare
MEDIA = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
# security.capability, VFS_CAP_REVISION_2 with the effective bit: cap_net_raw+ep
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)

Entry = tuple[tarfile.TarInfo, bytes | None]


def _info(name: str, kind: bytes, mode: int, uid: int, gid: int, mtime: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.uid, ti.gid = uid, gid
    ti.mtime = mtime
    return ti


def reg(
    name: str,
    data: bytes = b"",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = T0,
    xattrs: dict[str, bytes] | None = None,
) -> Entry:
    ti = _info(name, tarfile.REGTYPE, mode, uid, gid, mtime)
    ti.size = len(data)
    for k, v in (xattrs or {}).items():
        ti.pax_headers[f"SCHILY.xattr.{k}"] = v.decode("utf-8", "surrogateescape")  # type: ignore[index]
    return ti, data


def dir_(
    name: str,
    mode: int = 0o755,
    uid: int = 0,
    gid: int = 0,
    mtime: int = T0,
    xattrs: dict[str, bytes] | None = None,
) -> Entry:
    ti = _info(name, tarfile.DIRTYPE, mode, uid, gid, mtime)
    for k, v in (xattrs or {}).items():
        ti.pax_headers[f"SCHILY.xattr.{k}"] = v.decode("utf-8", "surrogateescape")  # type: ignore[index]
    return ti, None


def sym(name: str, target: str, uid: int = 0, gid: int = 0) -> Entry:
    ti = _info(name, tarfile.SYMTYPE, 0o777, uid, gid, T0)
    ti.linkname = target
    return ti, None


def hard(name: str, target: str) -> Entry:
    ti = _info(name, tarfile.LNKTYPE, 0o644, 0, 0, T0)
    ti.linkname = target
    return ti, None


def chr_(name: str, major: int, minor: int, mode: int = 0o666) -> Entry:
    ti = _info(name, tarfile.CHRTYPE, mode, 0, 0, T0)
    ti.devmajor, ti.devminor = major, minor
    return ti, None


def blk(name: str, major: int, minor: int, mode: int = 0o660) -> Entry:
    ti = _info(name, tarfile.BLKTYPE, mode, 0, 6, T0)
    ti.devmajor, ti.devminor = major, minor
    return ti, None


def fifo(name: str, mode: int = 0o620, uid: int = 0, gid: int = 0) -> Entry:
    return _info(name, tarfile.FIFOTYPE, mode, uid, gid, T0), None


def whiteout(path: str) -> Entry:
    head, _, base = path.rpartition("/")
    return reg(f"{head}/.wh.{base}" if head else f".wh.{base}")


def opaque(dir_path: str) -> Entry:
    return reg(f"{dir_path}/.wh..wh..opq")


def build_tar(entries: Iterable[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def compress(raw: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(raw, compresslevel=1)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(raw)
    return raw


def diff_id(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@dataclass
class LayerBlob:
    raw: bytes
    kind: str = "gzip"
    media_type: str = ""
    opens: int = 0
    blob: bytes = b""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.blob = compress(self.raw, self.kind)
        self.media_type = self.media_type or MEDIA[self.kind]

    @property
    def diff_id(self) -> str:
        return diff_id(self.raw)

    def _open(self) -> io.BytesIO:
        with self.lock:
            self.opens += 1
        return io.BytesIO(self.blob)

    def layer(self) -> Layer:
        return Layer(self.diff_id, self.media_type, self._open)


def layers_of(*tars: bytes, kind: str = "gzip") -> list[LayerBlob]:
    return [LayerBlob(t, kind) for t in tars]


# -- trees --------------------------------------------------------------------


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def describe(root: Path, *, dir_mtimes: bool = False) -> dict[str, tuple]:
    """Everything that matters about each path under root, comparable across trees."""
    out: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (
            ["", *dirnames, *filenames] if dirpath == str(root) else [*dirnames, *filenames]
        ):
            path = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            extra: object = None
            if stat.S_ISREG(kind):
                extra = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(kind):
                extra = os.readlink(path)
            elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
                extra = (os.major(st.st_rdev), os.minor(st.st_rdev))
            mtime = st.st_mtime_ns if (dir_mtimes or not stat.S_ISDIR(kind)) else None
            size = st.st_size if not stat.S_ISDIR(kind) else None
            out[rel] = (
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                size,
                extra,
                mtime,
                _xattrs(path),
            )
    # Hardlink groups, by the paths that share an inode.
    for paths in inodes.values():
        if len(paths) > 1:
            for p in paths:
                out[p] = (*out[p], tuple(sorted(paths)))
    return out


def diff_trees(a: dict[str, tuple], b: dict[str, tuple]) -> list[str]:
    lines = []
    for path in sorted(set(a) | set(b)):
        if a.get(path) != b.get(path):
            lines.append(f"{path}:\n    {a.get(path)}\n    {b.get(path)}")
    return lines


# -- OCI image layouts, for umoci ---------------------------------------------------


def _blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_layout(layout: Path, layers: list[LayerBlob], tag: str = "latest") -> None:
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [t.diff_id for t in layers]},
    }
    cfg = _blob(layout, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
        "layers": [{"mediaType": t.media_type, **_blob(layout, t.blob)} for t in layers],
    }
    man = _blob(layout, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **man,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
