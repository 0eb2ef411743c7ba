"""The applier against an independent implementation (umoci), and its contracts."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pyctr.daemon.metadata import Metadata
from pyctr.snapshotter import Kind, Snapshotter, mounted
from pyctr.snapshotter.applier import Layer, Unpacker, chain_ids
from pyctr.snapshotter.base import DIFF_ID_LABEL
from pyctr.snapshotter.errors import DataLoss, InvalidArgument
from pyctr.snapshotter.native import NativeSnapshotter
from pyctr.snapshotter.overlay import OverlaySnapshotter
from tests.snapshotter.layers import (
    CAP_NET_RAW,
    LayerBlob,
    blk,
    build_tar,
    chr_,
    describe,
    diff_trees,
    dir_,
    fifo,
    hard,
    oci_layout,
    opaque,
    reg,
    sym,
    whiteout,
)

BIG = os.urandom(3 << 20)  # crosses the applier's 1 MiB chunks

# Three layers with every entry type, then changes of every kind across layers.
L1 = build_tar(
    [
        dir_(".", 0o755),
        dir_("etc"),
        reg("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
        reg("etc/shadow", b"root:*:1::::::\n", 0o640, gid=42),
        dir_("tmp", 0o1777),
        dir_("usr"),
        dir_("usr/bin"),
        reg("usr/bin/su", b"su binary", 0o4755),
        reg("usr/bin/wall", b"wall binary", 0o2755, gid=5),
        reg("usr/bin/ping", b"ping binary", 0o755, xattrs={"security.capability": CAP_NET_RAW}),
        reg("usr/bin/attrs", b"x", xattrs={"user.foo": b"bar", "trusted.t": b"\x00\xff"}),
        reg("usr/bin/big", BIG, 0o755),
        reg("usr/bin/empty"),
        hard("usr/bin/su-again", "usr/bin/su"),
        sym("bin", "usr/bin"),
        sym("etc/abs", "/etc/passwd"),
        sym("etc/dangling", "../nowhere/at/all"),
        dir_("dev"),
        chr_("dev/null", 1, 3),
        blk("dev/loop0", 7, 0),
        fifo("dev/initctl", 0o600),
        dir_("home", 0o700, 1000, 1000),
        reg("home/notes", b"u", 0o600, 1000, 1000),
        dir_("opt"),
        reg("opt/gone", b"deleted in L2"),
        dir_("opt/gonedir"),
        reg("opt/gonedir/x", b"deleted with its dir"),
        dir_("opt/dir"),
        dir_("opt/dir/sub"),
        reg("opt/dir/sub/f", b"hidden by the opaque dir"),
        reg("opt/dir/old", b"hidden by the opaque dir"),
        dir_("var"),
        dir_("var/thing"),
        reg("var/thing/inside", b"gone when the dir becomes a file"),
        dir_("srv"),
        reg("srv/x", b"a file that becomes a dir"),
        dir_("sticky", 0o1777, xattrs={"user.dir": b"yes"}),
    ]
)
L2 = build_tar(
    [
        whiteout("opt/gone"),
        whiteout("opt/gonedir"),
        dir_("opt/dir", 0o750),
        opaque("opt/dir"),
        reg("opt/dir/new", b"the only child now"),
        reg("etc/passwd", b"root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home:/bin/sh\n", 0o600),
        reg("var/thing", b"now a file"),
        dir_("srv/x", 0o711),
        reg("srv/x/y", b"y"),
        reg("tmp/implicit-parent", b"tmp has no header in this layer"),
        sym("etc/abs", "/etc/shadow"),
        reg("usr/bin/l2file", b"l2"),
        hard("usr/bin/l2link", "usr/bin/l2file"),
    ]
)
L3 = build_tar(
    [
        dir_("opt"),
        dir_("opt/gonedir", 0o700),  # back, empty of what L1 had
        reg("opt/gonedir/fresh", b"fresh"),
        whiteout("usr/bin/l2file"),  # one of two links goes
        whiteout("etc/dangling"),
        reg("usr/bin/ping", b"ping v2", 0o755, uid=0, gid=0),  # caps dropped
    ]
)


def umoci_rootfs(tmp_path: Path, blobs: list[LayerBlob]) -> Path:
    layout, bundle = tmp_path / "oci", tmp_path / "bundle"
    oci_layout(layout, blobs)
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)],
        check=True,
        capture_output=True,
    )
    return bundle / "rootfs"


def unpack(sn: Snapshotter, blobs: list[LayerBlob], **kw: object) -> str:
    return Unpacker(sn, **kw).unpack([b.layer() for b in blobs])  # type: ignore[arg-type]


def test_chain_ids() -> None:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    expect = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert chain_ids([a, b]) == [a, expect]
    with pytest.raises(InvalidArgument):
        chain_ids(["md5:abc"])


@pytest.mark.parametrize("kinds", [("gzip", "none", "gzip"), ("none", "gzip", "none")])
def test_same_tree_as_umoci(
    sn: Snapshotter, mnt: Path, tmp_path: Path, kinds: tuple[str, ...]
) -> None:
    blobs = [LayerBlob(raw, kind) for raw, kind in zip([L1, L2, L3], kinds, strict=True)]
    expected = describe(umoci_rootfs(tmp_path, blobs), dir_mtimes=True)
    top = unpack(sn, blobs)
    with mounted(sn.prepare("ctr", top), mnt):
        got = describe(mnt, dir_mtimes=True)
    # umoci leaves the rootfs dir's own mtime at 0; ours is the image's
    # root entry's. Everything else, dir mtimes included, must match.
    assert got.pop(".")[:6] == expected.pop(".")[:6]
    assert diff_trees(got, expected) == []
    # And the parts that must not be visible, spelled out.
    for hidden in ["opt/gone", "opt/gonedir/x", "opt/dir/sub", "opt/dir/old", "var/thing/inside"]:
        assert hidden not in got
    assert got["opt/dir/new"] and got["opt/gonedir/fresh"] and got["srv/x/y"]
    assert got["tmp"][1] == 0o1777  # an implicit parent kept its lower mode


def test_zstd_matches_gzip(make_sn: Callable[[str], Snapshotter], mnt: Path) -> None:
    """umoci 0.4 has no zstd, so zstd is checked against our own gzip result."""
    sn = make_sn("overlayfs")
    trees = []
    for i, kind in enumerate(["gzip", "zstd"]):
        blobs = [LayerBlob(raw, kind) for raw in (L1, L2, L3)]
        for b in blobs[1:]:  # make the chains differ so both really unpack
            b.raw += b"\0" * 512 * (i + 1)
            b.__post_init__()
        top = unpack(sn, blobs)
        with mounted(sn.prepare(f"c-{kind}", top), mnt):
            trees.append(describe(mnt, dir_mtimes=True))
    assert diff_trees(trees[0], trees[1]) == []


def test_commit_labels_and_chain(sn: Snapshotter) -> None:
    blobs = [LayerBlob(L1), LayerBlob(L2, "none")]
    top = unpack(sn, blobs)
    chains = chain_ids([b.diff_id for b in blobs])
    assert top == chains[-1]
    for chain, blob, parent in zip(chains, blobs, [None, chains[0]], strict=True):
        info = sn.stat(chain)
        assert info.kind == Kind.COMMITTED
        assert info.parent == parent
        assert info.labels[DIFF_ID_LABEL] == blob.diff_id
    assert sorted(i.key for i in sn.walk()) == sorted(chains)


def test_idempotent_and_skips_committed(sn: Snapshotter) -> None:
    blobs = [LayerBlob(L1), LayerBlob(L2), LayerBlob(L3)]
    top = unpack(sn, blobs[:2])
    assert [b.opens for b in blobs] == [1, 1, 0]
    assert unpack(sn, blobs) != top
    assert [b.opens for b in blobs] == [1, 1, 1]  # only the new layer was read
    unpack(sn, blobs)
    assert [b.opens for b in blobs] == [1, 1, 1]  # nothing to do the second time


def test_parallel_equals_serial(tmp_path: Path, mnt: Path) -> None:
    blobs = [LayerBlob(raw) for raw in (L1, L2, L3)]
    trees = []
    for parallel in (1, 3):
        db = Metadata(tmp_path / f"p{parallel}.db")
        try:
            sn = OverlaySnapshotter(db, tmp_path / f"p{parallel}")
            top = unpack(sn, blobs, max_parallel=parallel)
            with mounted(sn.prepare("c", top), mnt):
                trees.append(describe(mnt, dir_mtimes=True))
        finally:
            db.close()
    assert diff_trees(trees[0], trees[1]) == []


def test_layers_really_extract_in_parallel(make_sn: Callable[[str], Snapshotter]) -> None:
    """Each layer's open() blocks until all three are open: only parallel unpack finishes."""
    sn = make_sn("overlayfs")
    blobs = [LayerBlob(raw) for raw in (L1, L2, L3)]
    barrier = threading.Barrier(3, timeout=20)

    def gated(blob: LayerBlob) -> Layer:
        def open_():  # type: ignore[no-untyped-def]
            barrier.wait()
            return blob._open()

        return Layer(blob.diff_id, blob.media_type, open_)

    top = Unpacker(sn, max_parallel=3).unpack([gated(b) for b in blobs])
    assert sn.stat(top).kind == Kind.COMMITTED


def test_concurrent_unpacks_share_work(sn: Snapshotter) -> None:
    blobs = [LayerBlob(raw) for raw in (L1, L2, L3)]
    results: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(unpack(sn, blobs))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    assert [b.opens for b in blobs] == [1, 1, 1]
    assert len(list(sn.walk())) == 3


def test_diff_id_mismatch_leaves_nothing(sn: Snapshotter) -> None:
    good = LayerBlob(L1)
    bad = LayerBlob(L2)
    lying = Layer(LayerBlob(L3).diff_id, bad.media_type, bad._open)
    with pytest.raises(DataLoss, match="digest"):
        Unpacker(sn).unpack([good.layer(), lying])
    assert [i.key for i in sn.walk()] == [good.diff_id]  # the good base stays
    assert len(os.listdir(sn.root / "snapshots")) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kind", "media_type"),
    [
        ("gzip", "application/vnd.oci.image.layer.v1.tar+zstd"),
        ("zstd", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("none", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ("gzip", "application/vnd.oci.image.layer.v1.tar"),
    ],
)
def test_media_type_must_match_magic(sn: Snapshotter, kind: str, media_type: str) -> None:
    blob = LayerBlob(L1, kind, media_type=media_type)
    with pytest.raises(InvalidArgument, match="media type"):
        unpack(sn, [blob])
    assert list(sn.walk()) == []


def test_docker_media_types(sn: Snapshotter) -> None:
    blob = LayerBlob(L1, "gzip", media_type="application/vnd.docker.image.rootfs.diff.tar.gzip")
    assert sn.stat(unpack(sn, [blob])).kind == Kind.COMMITTED
    with pytest.raises(InvalidArgument, match="unsupported"):
        unpack(sn, [LayerBlob(L2, "gzip", media_type="application/octet-stream")])


def test_corrupt_streams(sn: Snapshotter) -> None:
    cases = []
    gz = LayerBlob(L1, "gzip")
    truncated = LayerBlob(L1, "gzip")
    truncated.blob = gz.blob[: len(gz.blob) // 2]
    cases.append(truncated)
    flipped = LayerBlob(L1, "zstd")
    flipped.blob = (
        flipped.blob[:200] + bytes(b ^ 0xFF for b in flipped.blob[200:400]) + flipped.blob[400:]
    )
    cases.append(flipped)
    not_tar = LayerBlob(b"hello, this is not a tar archive" * 100, "gzip")
    cases.append(not_tar)
    for blob in cases:
        with pytest.raises((InvalidArgument, DataLoss)):
            unpack(sn, [blob])
    assert list(sn.walk()) == []
    assert os.listdir(sn.root / "snapshots") == []  # type: ignore[attr-defined]


def test_devices_refused_when_not_allowed(sn: Snapshotter) -> None:
    with pytest.raises(InvalidArgument, match="dev/null.*device"):
        unpack(sn, [LayerBlob(L1)], allow_devices=False)
    fifo_only = build_tar([fifo("p"), reg("f", b"x")])
    assert unpack(sn, [LayerBlob(fifo_only)], allow_devices=False)


def test_native_tree_equals_overlay_tree(tmp_path: Path, mnt: Path) -> None:
    blobs = [LayerBlob(raw) for raw in (L1, L2, L3)]
    trees = []
    for cls in (OverlaySnapshotter, NativeSnapshotter):
        db = Metadata(tmp_path / f"{cls.backend}.db")
        try:
            sn = cls(db, tmp_path / cls.backend)
            top = unpack(sn, blobs)
            with mounted(sn.view("v", top), mnt):
                trees.append(describe(mnt, dir_mtimes=True))
        finally:
            db.close()
    assert diff_trees(trees[0], trees[1]) == []


def test_repeated_layers(sn: Snapshotter, mnt: Path) -> None:
    """Images often repeat one empty layer: same diff ID, different chain IDs."""
    empty = LayerBlob(build_tar([]))
    data = LayerBlob(build_tar([reg("f", b"1")]))
    blobs = [empty, data, empty, empty]
    top = unpack(sn, blobs)
    assert len(list(sn.walk())) == 4
    with mounted(sn.view("v", top), mnt):
        assert os.listdir(mnt) == ["f"]


def test_gnu_long_names_and_links(sn: Snapshotter, mnt: Path) -> None:
    long_dir = "d" * 150
    long_name = f"{long_dir}/{'f' * 200}"
    entries = [
        dir_(long_dir),
        reg(long_name, b"deep"),
        hard(f"{long_dir}/{'h' * 180}", long_name),
        sym("s", "t" * 300),
    ]
    raw_gnu = io.BytesIO()
    with tarfile.open(fileobj=raw_gnu, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    top = unpack(sn, [LayerBlob(raw_gnu.getvalue())])
    with mounted(sn.view("v", top), mnt):
        assert (mnt / long_name).read_bytes() == b"deep"
        assert (mnt / long_dir / ("h" * 180)).stat().st_nlink == 2
        assert os.readlink(mnt / "s") == "t" * 300


def test_huge_extended_header_refused(sn: Snapshotter) -> None:
    ti, data = reg("f", b"x")
    ti.pax_headers = {"comment": "x" * (2 << 20)}
    with pytest.raises(InvalidArgument, match="extended tar header"):
        unpack(sn, [LayerBlob(build_tar([(ti, data)]))])
    assert list(sn.walk()) == []


def test_blob_without_peek(sn: Snapshotter) -> None:
    blob = LayerBlob(L1)

    class Plain:  # read() only, like a socket-backed stream
        def __init__(self) -> None:
            self.data = io.BytesIO(blob.blob)

        def read(self, n: int = -1) -> bytes:
            return self.data.read(min(n, 1000) if n > 0 else n)

        def __enter__(self) -> Plain:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    top = Unpacker(sn).unpack([Layer(blob.diff_id, blob.media_type, Plain)])  # type: ignore[arg-type]
    assert top == blob.diff_id


def test_daemon_umask_does_not_leak_into_trees(sn: Snapshotter, mnt: Path) -> None:
    old = os.umask(0o077)
    try:
        top = unpack(sn, [LayerBlob(build_tar([reg("implicit/dir/f", b"x", 0o644)]))])
        mounts = sn.prepare("c", top)
    finally:
        os.umask(old)
    with mounted(mounts, mnt):
        assert os.stat(mnt).st_mode & 0o777 == 0o755
        assert os.stat(mnt / "implicit/dir").st_mode & 0o777 == 0o755
        assert os.stat(mnt / "implicit/dir/f").st_mode & 0o777 == 0o644


def test_later_entries_replace_earlier_ones_in_one_layer(sn: Snapshotter, mnt: Path) -> None:
    """Tar semantics within a layer: the last entry for a path wins, whatever it replaces."""
    base = LayerBlob(build_tar([reg("w", b"lower")]))
    top = LayerBlob(
        build_tar(
            [
                reg("f", b"first"),
                reg("f", b"second"),
                sym("s", "f"),
                reg("s", b"file now"),
                dir_("d"),
                reg("d/x", b"x"),
                reg("d", b"file over a dir"),
                fifo("p"),
                hard("p", "f"),
                whiteout("w"),
                reg("w", b"rewritten after its whiteout"),
            ]
        )
    )
    got = unpack(sn, [base, top])
    with mounted(sn.view("v", got), mnt):
        assert (mnt / "f").read_bytes() == b"second"
        assert (mnt / "s").read_bytes() == b"file now" and not (mnt / "s").is_symlink()
        assert (mnt / "d").read_bytes() == b"file over a dir"
        assert (mnt / "p").read_bytes() == b"second" and (mnt / "p").stat().st_nlink == 2
        assert (mnt / "w").read_bytes() == b"rewritten after its whiteout"
