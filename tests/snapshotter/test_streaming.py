"""Layers unpacked from blobs still arriving: as a pull following its downloads feeds them.

A blob's reader may hand out bytes in small pieces, waiting between them, and
may fail at its end (its download failed verification): then nothing of the
layer is committed, and the blob's error, not what the layer's bytes looked
like, is what the unpack reports.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from pyctr.snapshotter import Snapshotter, mounted
from pyctr.snapshotter.applier import Layer, Unpacker
from pyctr.snapshotter.errors import DataLoss, InvalidArgument
from tests.snapshotter.layers import LayerBlob, build_tar, describe, dir_, reg, sym

TAR = build_tar(
    [dir_("etc"), reg("etc/big", os.urandom(300_000)), sym("etc/link", "big")]
    + [reg(f"many/f{i}", b"%d" % i) for i in range(200)]
)


class Arriving:
    """A blob delivered in pieces by another thread; optionally failing at its end."""

    def __init__(self, blob: bytes, fail_at_end: bool = False) -> None:
        self.blob = blob
        self.fail_at_end = fail_at_end
        self.pos = 0
        self.arrived = 0
        self.cond = threading.Condition()
        self.done = False
        self.thread = threading.Thread(target=self._deliver)
        self.thread.start()

    def _deliver(self) -> None:
        while self.arrived < len(self.blob):
            time.sleep(0.002)
            with self.cond:
                self.arrived = min(len(self.blob), self.arrived + 4096)
                self.cond.notify_all()
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def read(self, n: int = -1) -> bytes:
        with self.cond:
            while self.pos >= self.arrived and not self.done:
                self.cond.wait()
            if self.pos >= self.arrived:
                if self.fail_at_end:
                    raise DataLoss("blob sha256:feed: content hashes to sha256:beef")
                return b""
            end = self.arrived if n < 0 else min(self.arrived, self.pos + n)
            out, self.pos = self.blob[self.pos : end], end
            return out

    def __enter__(self) -> Arriving:
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join()


def test_layer_arriving_in_pieces_unpacks_the_same(sn: Snapshotter, mnt: Path) -> None:
    blob = LayerBlob(TAR)
    top = Unpacker(sn).unpack([Layer(blob.diff_id, blob.media_type, lambda: Arriving(blob.blob))])
    with mounted(sn.view("v", top), mnt):
        arrived = describe(mnt)
    plain = Unpacker(sn).unpack([blob.layer()])
    assert plain == top  # the same chain: already committed
    assert len(arrived) == 205 and arrived["etc/link"][5] == "big"


def test_blob_failing_at_its_end_commits_nothing(sn: Snapshotter) -> None:
    blob = LayerBlob(TAR)
    opened = lambda: Arriving(blob.blob, fail_at_end=True)  # noqa: E731
    with pytest.raises(DataLoss, match="hashes to"):
        Unpacker(sn).unpack([Layer(blob.diff_id, blob.media_type, opened)])
    assert list(sn.walk()) == []
    assert os.listdir(sn.root / "snapshots") == []  # type: ignore[attr-defined]


def test_blob_error_wins_over_what_its_bytes_looked_like(sn: Snapshotter) -> None:
    blob = LayerBlob(TAR)
    mangled = blob.blob[:2000] + bytes(500) + blob.blob[2500:]  # a registry sending garbage
    with pytest.raises(InvalidArgument, match="layer 0.*corrupt"):
        Unpacker(sn).unpack([Layer(blob.diff_id, blob.media_type, lambda: Arriving(mangled))])
    opened = lambda: Arriving(mangled, fail_at_end=True)  # noqa: E731
    with pytest.raises(DataLoss, match="hashes to"):
        Unpacker(sn).unpack([Layer(blob.diff_id, blob.media_type, opened)])
    assert list(sn.walk()) == []
