"""One suite, both backends: the Snapshotter protocol's semantics, mounted for real."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pyctr.snapshotter import Kind, Snapshotter, mounted
from pyctr.snapshotter.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pyctr.snapshotter.fsutil import disk_usage
from tests.snapshotter.layers import CAP_NET_RAW


def write_commit(sn: Snapshotter, mnt: Path, name: str, parent: str | None, files: dict) -> None:
    """Prepare on parent, write files through the mount, commit as name."""
    key = f"build-{name}"
    with mounted(sn.prepare(key, parent), mnt):
        for rel, data in files.items():
            path = mnt / rel
            if data is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    sn.commit(name, key)


def test_prepare_commit_view_chain(sn: Snapshotter, mnt: Path) -> None:
    write_commit(sn, mnt, "l1", None, {"a": b"1", "dir/b": b"2"})
    write_commit(sn, mnt, "l2", "l1", {"a": None, "c": b"3"})
    write_commit(sn, mnt, "l3", "l2", {"dir/b": b"22"})

    assert sn.stat("l3").parent == "l2" and sn.stat("l3").kind == Kind.COMMITTED
    with mounted(sn.view("v", "l3"), mnt):
        assert sorted(os.listdir(mnt)) == ["c", "dir"]
        assert (mnt / "dir/b").read_bytes() == b"22"
        with pytest.raises(OSError):  # a view is read-only
            (mnt / "new").write_bytes(b"x")
    assert sn.stat("v").kind == Kind.VIEW
    # A view of a single layer, and of two.
    with mounted(sn.view("v1", "l1"), mnt):
        assert sorted(os.listdir(mnt)) == ["a", "dir"]
    with mounted(sn.view("v2", "l2"), mnt):
        assert sorted(os.listdir(mnt)) == ["c", "dir"]
    # Lower layers were not changed by what came above.
    with mounted(sn.view("v1b", "l1"), mnt):
        assert (mnt / "a").read_bytes() == b"1" and (mnt / "dir/b").read_bytes() == b"2"


def test_active_is_writable_and_private(sn: Snapshotter, mnt: Path, tmp_path: Path) -> None:
    write_commit(sn, mnt, "base", None, {"f": b"base"})
    other = tmp_path / "other"
    other.mkdir()
    with mounted(sn.prepare("c1", "base"), mnt), mounted(sn.prepare("c2", "base"), other):
        (mnt / "f").write_bytes(b"changed")
        (mnt / "new").write_bytes(b"n")
        assert (other / "f").read_bytes() == b"base"
        assert not (other / "new").exists()
    # Remounting the same active snapshot shows what was written.
    with mounted(sn.mounts("c1"), mnt):
        assert (mnt / "f").read_bytes() == b"changed"
    # An active snapshot with no parent starts empty.
    with mounted(sn.prepare("empty"), mnt):
        assert os.listdir(mnt) == []
        (mnt / "x").write_bytes(b"x")


def test_errors(sn: Snapshotter, mnt: Path) -> None:
    write_commit(sn, mnt, "l1", None, {"a": b"1"})
    sn.prepare("act", "l1")
    sn.view("vw", "l1")
    with pytest.raises(AlreadyExists):
        sn.prepare("act", "l1")
    with pytest.raises(AlreadyExists):
        sn.view("l1", None)  # one namespace for keys and names
    with pytest.raises(NotFound):
        sn.prepare("x", "missing")
    with pytest.raises(FailedPrecondition):
        sn.prepare("x", "act")  # parents must be committed
    with pytest.raises(FailedPrecondition):
        sn.commit("n", "vw")  # views do not commit
    with pytest.raises(FailedPrecondition):
        sn.commit("n", "l1")  # nor do committed snapshots
    with pytest.raises(AlreadyExists):
        sn.commit("l1", "act")
    with pytest.raises(FailedPrecondition):
        sn.mounts("l1")
    for bad in ["", "a\0b", "x" * 1025]:
        with pytest.raises(InvalidArgument):
            sn.prepare(bad)
    with pytest.raises(NotFound):
        sn.stat("nope")
    with pytest.raises(NotFound):
        sn.remove("nope")
    with pytest.raises(NotFound):
        sn.usage("nope")
    assert sorted(i.key for i in sn.walk()) == ["act", "l1", "vw"]


def test_keys_are_opaque(sn: Snapshotter, mnt: Path) -> None:
    # Keys that would be dangerous as paths are fine as keys.
    for key in ["../../etc", "/abs/path", "a/b", "with space", "é", "x" * 1023]:
        with mounted(sn.prepare(key), mnt):
            (mnt / "f").write_bytes(b"1")
        sn.commit(key + "!", key)
        assert sn.stat(key + "!").kind == Kind.COMMITTED
    names = sorted(os.listdir(sn.root / "snapshots"))  # type: ignore[attr-defined]
    assert all(n.isdigit() for n in names)


def test_remove_refused_with_children(sn: Snapshotter, mnt: Path) -> None:
    write_commit(sn, mnt, "l1", None, {"a": b"1"})
    write_commit(sn, mnt, "l2", "l1", {"b": b"2"})
    sn.prepare("c", "l2")
    with pytest.raises(FailedPrecondition, match="children"):
        sn.remove("l1")
    with pytest.raises(FailedPrecondition):
        sn.remove("l2")
    # Children first works.
    before = set(os.listdir(sn.root / "snapshots"))  # type: ignore[attr-defined]
    sn.remove("c")
    sn.remove("l2")
    sn.remove("l1")
    assert list(sn.walk()) == []
    assert os.listdir(sn.root / "snapshots") == []  # type: ignore[attr-defined]
    assert len(before) == 3


def test_labels_and_timestamps(sn: Snapshotter, mnt: Path) -> None:
    t0 = time.time_ns()
    sn.prepare("a")
    sn.commit("c", "a", labels={"k": "v"})
    info = sn.stat("c")
    assert info.labels == {"k": "v"}
    assert t0 <= info.created_ns <= info.updated_ns <= time.time_ns()
    updated = sn.update("c", {"pyctr.io/gc.root": "yes", "x": "y"})
    assert updated.labels == {"pyctr.io/gc.root": "yes", "x": "y"}
    assert updated.updated_ns >= info.updated_ns and updated.created_ns == info.created_ns
    assert sn.stat("c").labels == updated.labels
    assert sn.update("c", {}).labels == {}
    with pytest.raises(InvalidArgument):
        sn.update("c", {"k": "v" * 5000})
    with pytest.raises(NotFound):
        sn.update("nope", {})


def test_usage(sn: Snapshotter, mnt: Path) -> None:
    write_commit(sn, mnt, "l1", None, {"big": os.urandom(1 << 20), "d/small": b"s"})
    used = sn.usage("l1")
    assert used.size_bytes >= 1 << 20
    assert used.inodes >= 4  # root, big, d, d/small
    with mounted(sn.prepare("c", "l1"), mnt):
        before = sn.usage("c")
        (mnt / "more").write_bytes(os.urandom(2 << 20))
        after = sn.usage("c")
    assert after.size_bytes - before.size_bytes >= 2 << 20
    assert after.inodes == before.inodes + 1
    total = sn.fs_usage()
    assert total.size_bytes >= used.size_bytes + (2 << 20)
    # The bookkeeping shortcut adds up to what a full walk finds.
    assert total == disk_usage(sn.root / "snapshots")  # type: ignore[attr-defined]


def test_walk(sn: Snapshotter, mnt: Path) -> None:
    write_commit(sn, mnt, "l1", None, {"a": b"1"})
    sn.prepare("act", "l1")
    sn.view("vw", "l1")
    infos = {i.key: i for i in sn.walk()}
    assert {k: (i.kind, i.parent) for k, i in infos.items()} == {
        "l1": (Kind.COMMITTED, None),
        "act": (Kind.ACTIVE, "l1"),
        "vw": (Kind.VIEW, "l1"),
    }


def test_special_files_survive_commit(sn: Snapshotter, mnt: Path) -> None:
    """What a container writes keeps owners, modes, xattrs, hardlinks and devices."""
    with mounted(sn.prepare("k"), mnt):
        (mnt / "f").write_bytes(b"data")
        os.chown(mnt / "f", 1234, 5678)
        os.chmod(mnt / "f", 0o4750)
        os.link(mnt / "f", mnt / "hl")
        os.setxattr(mnt / "f", "user.test", b"value")
        os.setxattr(mnt / "hl", "security.capability", CAP_NET_RAW)  # after chown/chmod
        os.mknod(mnt / "null", 0o666 | 0o020000, os.makedev(1, 3))
        os.mkfifo(mnt / "fifo")
        os.symlink("/nowhere", mnt / "link")
    sn.commit("c", "k")
    with mounted(sn.prepare("k2", "c"), mnt):
        st = os.stat(mnt / "f")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 5678, 0o4750)
        assert os.stat(mnt / "hl").st_ino == st.st_ino
        assert os.getxattr(mnt / "f", "user.test") == b"value"
        assert os.getxattr(mnt / "f", "security.capability") == CAP_NET_RAW
        assert os.stat(mnt / "null").st_rdev == os.makedev(1, 3)
        assert os.readlink(mnt / "link") == "/nowhere"
        assert (mnt / "fifo").is_fifo()


def test_backend_is_pinned(tmp_path: Path, make_sn, backend: str) -> None:  # type: ignore[no-untyped-def]
    sn = make_sn(backend)
    sn.prepare("x")
    other = "native" if backend == "overlayfs" else "overlayfs"
    with pytest.raises(FailedPrecondition, match="made by"):
        make_sn(other)
