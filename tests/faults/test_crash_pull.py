"""kill -9 of pyctrd at seeded random moments of a pull (download and unpack).

A five-layer image comes through a proxy that slows it to a few MiB/s, so
the pull lasts about a second; the daemon is killed at a random moment of
it (seeded: the delay is drawn from the seed in the test id, relative to how
long an uninterrupted pull took on this machine), restarted on the same
dirs, and then:

- content, snapshots, metadata and mounts agree (tests/faults/consistency.py):
  every blob re-hashes, no snapshot without its row or row without its dir,
  no extract-* snapshot, nothing mounted;
- the image is either fully there or not there at all;
- the same pull, retried, succeeds, and leaves no partial download behind;
- removing the image then frees everything: what the crashed pull had
  claimed is not pinned any longer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import grpc
import pytest

from pyctr.proto import cri_pb2, images_pb2, images_pb2_grpc
from pyctr.snapshotter.base import chain_ids
from tests.faults.conftest import Client, FaultImages, seeds
from tests.faults.consistency import blob_digests, ingests, problems, query, snapshots
from tests.faults.netfaults import SlowProxy

pytestmark = pytest.mark.root

RATE = 4 << 20  # bytes per second per connection
POINTS = 4  # kill points per seed


def _image_state(cl: Client, image_id: str) -> str:
    """'absent' or 'complete' (anything else is a torn image)."""
    rows = query(cl.d, "SELECT chain_id FROM images WHERE id = ?", (image_id,))
    if not rows:
        return "absent"
    return "complete" if rows[0]["chain_id"] in snapshots(cl.d) else "torn"


def _remove_and_collect(cl: Client, ref: str) -> None:
    cl.img.RemoveImage(cri_pb2.RemoveImageRequest(image=cri_pb2.ImageSpec(image=ref)), timeout=30)
    images_pb2_grpc.GCStub(cl.channel).Collect(images_pb2.GCCollectRequest(), timeout=60)


@pytest.mark.parametrize("seed", seeds(1, 2, 3, 4), ids=lambda s: f"seed={s}")
def test_kill_9_during_pull(
    client_factory: Callable[..., Client], fault_images: FaultImages, seed: int
) -> None:
    rng = random.Random(seed)
    big = fault_images.big
    cl = client_factory("[registry]\nmax_concurrent_downloads = 2\n")
    with SlowProxy(fault_images.registry.port, rate=RATE) as proxy:
        ref = fault_images.ref("big", proxy.host)
        started = time.monotonic()
        assert cl.pull(ref) == big.id
        duration = time.monotonic() - started
        _remove_and_collect(cl, ref)
        assert blob_digests(cl.d) == set() and snapshots(cl.d) == {}

        for point in range(POINTS):
            delay = rng.uniform(0.0, duration * 1.1)
            where = f"seed {seed} point {point}: kill after {delay:.3f}s of {duration:.3f}s"
            proxy.rate = RATE
            req = cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=ref))
            call = cl.img.PullImage.future(req, timeout=60)
            time.sleep(delay)
            cl.d.kill()
            try:
                call.result()
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, (where, e)
            cl.reconnect()
            cl.d.start()

            assert problems(cl.d) == [], where
            assert _image_state(cl, big.id) in ("absent", "complete"), where
            proxy.rate = None
            assert cl.pull(ref) == big.id, where
            assert problems(cl.d) == [], where
            assert _image_state(cl, big.id) == "complete", where
            assert ingests(cl.d) == [], where
            snaps = snapshots(cl.d)
            assert all(snaps[c]["kind"] == "committed" for c in chain_ids(big.diff_ids)), where
            _remove_and_collect(cl, ref)
            # Nothing stays pinned by the crashed pull once the image is gone.
            assert blob_digests(cl.d) == set(), where
            assert snapshots(cl.d) == {}, where
