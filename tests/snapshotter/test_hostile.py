"""Layers that try to get out of their snapshot: each is refused and changes nothing.

Every case runs on both backends. A canary dir outside the snapshotter root
(and a file inside it) must keep its content, listing and mtimes; no
snapshot but the benign base layer may remain, in the DB or on disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pyctr.snapshotter import Snapshotter, mounted
from pyctr.snapshotter.applier import Unpacker
from pyctr.snapshotter.errors import InvalidArgument
from tests.snapshotter.layers import (
    Entry,
    LayerBlob,
    build_tar,
    chr_,
    dir_,
    hard,
    opaque,
    reg,
    sym,
    whiteout,
)

# The snapshot dirs are tmp/sn-<backend>/snapshots/<id>/fs; the canary is tmp/canary.
UP = "../../../../canary"

Case = Callable[[str], tuple[list[Entry] | None, list[Entry]]]

CASES: dict[str, tuple[Case, str]] = {
    # name: (canary path -> (base layer or None, hostile layer), message pattern)
    "dotdot": (lambda c: (None, [reg(f"{UP}/file", b"pwned")]), r"'\.\.'"),
    "dotdot-inside": (lambda c: (None, [reg(f"a/../../{UP}/file", b"pwned")]), r"'\.\.'"),
    "absolute": (lambda c: (None, [reg(f"{c}/file", b"pwned")]), "absolute"),
    "absolute-dir": (lambda c: (None, [dir_(f"{c}/newdir")]), "absolute"),
    "symlink-then-file": (
        lambda c: (None, [sym("d", c), reg("d/file", b"pwned")]),
        "parent d is a symlink",
    ),
    "relative-symlink-then-file": (
        lambda c: (None, [sym("d", UP), reg("d/new", b"pwned")]),
        "parent d is a symlink",
    ),
    "symlink-then-dir": (lambda c: (None, [sym("d", c), dir_("d/sub")]), "symlink"),
    "deep-symlink-then-file": (
        lambda c: (None, [dir_("a"), sym("a/b", "/"), reg(f"a/b{c}/file", b"pwned")]),
        "parent a/b is a symlink",
    ),
    "dir-replaced-by-symlink": (
        lambda c: (None, [dir_("d"), reg("d/ok"), sym("d", c), reg("d/file", b"pwned")]),
        "symlink",
    ),
    "hardlink-absolute": (lambda c: (None, [hard("h", f"{c}/file")]), "absolute"),
    "hardlink-etc-passwd": (lambda c: (None, [hard("h", "/etc/passwd")]), "absolute"),
    "hardlink-dotdot": (lambda c: (None, [hard("h", f"{UP}/file")]), r"'\.\.'"),
    "hardlink-to-outside-symlink": (
        lambda c: (None, [sym("s", f"{c}/file"), hard("h", "s")]),
        "not a file of this layer",
    ),
    "hardlink-through-symlink-dir": (
        lambda c: (None, [sym("d", c), hard("h", "d/file")]),
        "not a file of this layer",
    ),
    "hardlink-to-lower-layer": (
        lambda c: ([reg("f", b"lower")], [hard("h", "f")]),
        "not a file of this layer",
    ),
    "whiteout-dotdot": (lambda c: (None, [reg(f"{UP}/.wh.file")]), r"'\.\.'"),
    "whiteout-plain-dotdot": (lambda c: (None, [reg("../.wh.x")]), r"'\.\.'"),
    "whiteout-through-symlink": (lambda c: (None, [sym("d", c), whiteout("d/file")]), "symlink"),
    "opaque-through-symlink": (lambda c: (None, [sym("d", c), opaque("d")]), "symlink"),
    "whiteout-of-dot": (lambda c: (None, [reg("d/.wh..")]), "invalid name"),
    "whiteout-as-dir": (lambda c: (None, [reg(".wh.d/f")]), "whiteout name used as a directory"),
    "device-forbidden": (lambda c: (None, [chr_("dev/mem", 1, 1)]), "device nodes are not allowed"),
    "fake-whiteout-device": (lambda c: (None, [chr_("x", 0, 0)]), "reserved"),
    "root-as-symlink": (lambda c: (None, [sym(".", c)]), "root"),
    "root-as-file": (lambda c: (None, [reg("./", b"x")]), "root"),
    "long-component": (lambda c: (None, [reg("a" * 256, b"x")]), "component of 256 bytes"),
    "long-path": (lambda c: (None, [reg("/".join(["d" * 200] * 21), b"x")]), "bytes long"),
    "long-symlink-target": (lambda c: (None, [sym("s", "x" * 5000)]), "symlink target"),
    # A symlink a parent layer planted: the native backend meets it in its
    # copy; the overlay backend finds it when settling the layer on its parents.
    "planted-symlink-file": (
        lambda c: ([sym("d", c)], [reg("d/file", b"pwned")]),
        "symlink",
    ),
    "planted-relative-symlink": (
        lambda c: ([dir_("etc"), sym("etc/x", UP)], [reg("etc/x/new", b"pwned")]),
        "symlink",
    ),
    "planted-symlink-whiteout": (lambda c: ([sym("d", c)], [whiteout("d/file")]), "symlink"),
    "planted-symlink-opaque": (
        lambda c: ([sym("d", c)], [opaque("d"), reg("d/x", b"pwned")]),
        "symlink",
    ),
}


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary"
    (path / "sub").mkdir(parents=True)
    (path / "file").write_bytes(b"precious")
    os.utime(path / "file", ns=(1, 1_000_000_000))
    os.utime(path / "sub", ns=(1, 2_000_000_000))
    os.utime(path, ns=(1, 3_000_000_000))
    return path


def state(path: Path) -> list[tuple[str, int, bytes | None]]:
    out = []
    for p in sorted([path, *path.rglob("*")]):
        st = p.lstat()
        out.append((str(p), st.st_mtime_ns, p.read_bytes() if p.is_file() else None))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_refused(sn: Snapshotter, canary: Path, case: str) -> None:
    build, pattern = CASES[case]
    base_entries, hostile = build(str(canary))
    before = state(canary)
    blobs = [LayerBlob(build_tar(hostile))]
    base_keys: list[str] = []
    if base_entries is not None:
        base = LayerBlob(build_tar(base_entries))
        Unpacker(sn).unpack([base.layer()])
        base_keys = [base.diff_id]
        blobs.insert(0, base)
    dirs_before = sorted(os.listdir(sn.root / "snapshots"))  # type: ignore[attr-defined]

    with pytest.raises(InvalidArgument, match=pattern) as exc:
        Unpacker(sn, allow_devices=False).unpack([b.layer() for b in blobs])

    assert "layer" in str(exc.value) and "entr" in str(exc.value)
    assert [i.key for i in sn.walk()] == base_keys
    assert sorted(os.listdir(sn.root / "snapshots")) == dirs_before  # type: ignore[attr-defined]
    assert state(canary) == before
    assert not Path("/etc/passwd").samefile(canary / "file")


@pytest.mark.parametrize("across_layers", [False, True])
def test_file_replacing_outside_symlink_does_not_write_through(
    sn: Snapshotter, canary: Path, mnt: Path, across_layers: bool
) -> None:
    """Later entries replace earlier ones (tar semantics): the symlink is replaced, not followed."""
    before = state(canary)
    planted = [sym("x", str(canary / "file")), sym("y", str(canary / "sub"))]
    writes = [reg("x", b"pwned", 0o666), dir_("y", 0o777), reg("y/new", b"pwned")]
    tars = [planted, writes] if across_layers else [planted + writes]
    top = Unpacker(sn).unpack([LayerBlob(build_tar(t)).layer() for t in tars])
    assert state(canary) == before
    with mounted(sn.view("v", top), mnt):
        assert (mnt / "x").read_bytes() == b"pwned" and not (mnt / "x").is_symlink()
        assert (mnt / "y").is_dir() and not (mnt / "y").is_symlink()
        assert (mnt / "y/new").read_bytes() == b"pwned"


def test_overlay_xattrs_from_layers_are_not_honoured(sn: Snapshotter, mnt: Path) -> None:
    """A layer must not forge overlay state (opaque dirs, redirects) with xattrs."""
    base = build_tar([dir_("etc"), reg("etc/keep", b"k")])
    forged = build_tar(
        [
            dir_("etc", xattrs={"trusted.overlay.opaque": b"y"}),
            reg("etc/new", b"n", xattrs={"trusted.overlay.redirect": b"/etc/keep"}),
        ]
    )
    top = Unpacker(sn).unpack([LayerBlob(base).layer(), LayerBlob(forged).layer()])
    with mounted(sn.view("v", top), mnt):
        assert sorted(os.listdir(mnt / "etc")) == ["keep", "new"]
        assert (mnt / "etc/new").read_bytes() == b"n"


def test_refused_layer_does_not_poison_later_unpacks(sn: Snapshotter, canary: Path) -> None:
    bad = LayerBlob(build_tar([sym("d", str(canary)), reg("d/file", b"pwned")]))
    with pytest.raises(InvalidArgument):
        Unpacker(sn).unpack([bad.layer()])
    good = LayerBlob(build_tar([reg("ok", b"1")]))
    assert Unpacker(sn).unpack([good.layer()]) == good.diff_id
