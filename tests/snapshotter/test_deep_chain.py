"""130 layers on overlayfs: more lowerdirs than one page of absolute paths holds."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyctr.snapshotter import Snapshotter, mounted
from pyctr.snapshotter.applier import Unpacker
from pyctr.snapshotter.errors import InvalidArgument
from pyctr.snapshotter.mount import MAX_OPTION_DATA, compact_lowerdirs
from tests.snapshotter.layers import LayerBlob, build_tar, dir_, reg, whiteout

DEPTH = 130


def test_130_layers_mount(make_sn: Callable[[str], Snapshotter], mnt: Path) -> None:
    sn = make_sn("overlayfs")
    tars = []
    for i in range(DEPTH):
        entries = [dir_("layers"), reg(f"layers/{i:03d}", f"layer {i}".encode())]
        if i == DEPTH - 1:
            entries.append(whiteout("layers/005"))
        tars.append(build_tar(entries))
    started = time.monotonic()
    top = Unpacker(sn).unpack([LayerBlob(t, "none").layer() for t in tars])
    print(f"unpacked {DEPTH} layers in {time.monotonic() - started:.2f}s")

    mounts = sn.prepare("deep", top)
    options = ",".join(mounts[0].options)
    # The absolute form does not fit in a page: the relative fallback is what mounts.
    assert options.count(":") == DEPTH - 1
    assert len(options) > MAX_OPTION_DATA
    with mounted(mounts, mnt):
        names = sorted(os.listdir(mnt / "layers"))
        assert len(names) == DEPTH - 1 and "005" not in names
        assert (mnt / "layers/000").read_bytes() == b"layer 0"
        assert (mnt / "layers/128").read_bytes() == b"layer 128"
        (mnt / "layers/000").write_bytes(b"copied up")
    # The daemon's working directory never moved.
    assert os.getcwd() != str(sn.root / "snapshots")  # type: ignore[attr-defined]

    # A read-only view of the whole chain is an overlay of lowerdirs only.
    with mounted(sn.view("deep-view", top), mnt):
        assert len(os.listdir(mnt / "layers")) == DEPTH - 1
        assert (mnt / "layers/000").read_bytes() == b"layer 0"


def test_too_many_layers_is_a_clear_error() -> None:
    lowers = ":".join(f"/var/lib/pyctr/snapshots/{100000 + i}/fs" for i in range(600))
    with pytest.raises(InvalidArgument, match="600 layers"):
        compact_lowerdirs([f"lowerdir={lowers}", "upperdir=/u", "workdir=/w"])
    cwd, short = compact_lowerdirs([f"lowerdir={lowers[:3000]}".rsplit(":", 1)[0], "index=off"])
    assert cwd == "/var/lib/pyctr/snapshots"
    assert short.startswith("lowerdir=100000/fs:100001/fs:") and short.endswith(",index=off")
