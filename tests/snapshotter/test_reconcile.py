"""Crash leftovers are reconciled away when the snapshotter is reopened."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable

import pytest

from pyctr.snapshotter import Kind, Snapshotter
from pyctr.snapshotter.applier import Layer, Unpacker, chain_ids
from tests.snapshotter.layers import LayerBlob, build_tar, reg


class Crash(BaseException):
    """Stands for the daemon dying mid-unpack (a fault we cannot otherwise produce)."""


def test_reconcile_after_crash(
    make_sn: Callable[[str], Snapshotter], backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    sn = make_sn(backend)
    base = LayerBlob(build_tar([reg("a", b"1")]))
    Unpacker(sn).unpack([base.layer()])
    sn.prepare("ctr", base.diff_id)  # a container's snapshot survives reconcile

    # An unpack that dies after its extraction snapshot exists, before commit.
    second = LayerBlob(build_tar([reg("b", b"2")]))

    def dying_open():  # type: ignore[no-untyped-def]
        raise Crash

    doomed = Unpacker(sn)
    doomed._discard = lambda key, path=None: None  # type: ignore[method-assign]  # a crash cleans nothing
    with pytest.raises(Crash):
        doomed.unpack([base.layer(), Layer(second.diff_id, second.media_type, dying_open)])
    extracting = [i for i in sn.walk() if i.key.startswith("extract-")]
    assert len(extracting) == 1 and extracting[0].kind == Kind.ACTIVE
    assert extracting[0].key.endswith(" " + chain_ids([base.diff_id, second.diff_id])[1])

    # Leftovers on disk: a dir the DB never heard of, a half-built new-* dir.
    snapshots = sn.root / "snapshots"  # type: ignore[attr-defined]
    (snapshots / "999" / "fs").mkdir(parents=True)
    (snapshots / "999" / "fs" / "junk").write_bytes(b"x")
    (snapshots / "new-deadbeef").mkdir()

    reopened = make_sn(backend)  # as the daemon would at start
    with caplog.at_level(logging.INFO, logger="pyctr.snapshotter"):
        reopened.reconcile()

    assert sorted(i.key for i in reopened.walk()) == sorted([base.diff_id, "ctr"])
    ids = {str(i) for i in os.listdir(snapshots)}
    assert "999" not in ids and "new-deadbeef" not in ids and len(ids) == 2
    assert "interrupted extraction" in caplog.text and "orphan" in caplog.text
    # The interrupted layer unpacks fine afterwards.
    assert Unpacker(reopened).unpack([base.layer(), second.layer()])


def test_reconcile_drops_rows_whose_dir_is_gone(
    make_sn: Callable[[str], Snapshotter], backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    sn = make_sn(backend)
    l1 = LayerBlob(build_tar([reg("a", b"1")]))
    l2 = LayerBlob(build_tar([reg("b", b"2")]))
    top = Unpacker(sn).unpack([l1.layer(), l2.layer()])
    sn.prepare("ctr", top)
    keep = LayerBlob(build_tar([reg("c", b"3")]))
    Unpacker(sn).unpack([keep.layer()])
    snapshots = sn.root / "snapshots"  # type: ignore[attr-defined]
    # Lose the bottom layer's directory: it, its child and the container go.
    shutil.rmtree(sn.lower_dirs(l1.diff_id)[0].parent)
    with caplog.at_level(logging.WARNING, logger="pyctr.snapshotter"):
        sn.reconcile()
    assert [i.key for i in sn.walk()] == [keep.diff_id]
    assert len(os.listdir(snapshots)) == 1
    assert "lost its directory" in caplog.text
