"""Registries that cut, lie and stall; concurrent pulls of one image.

A FaultProxy sits between pyctrd and the real registry. Whatever happens, the
content store must hold only blobs that hash to their names.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from pyctr.proto import cri_pb2 as cri
from pyctr.proto import images_pb2 as npb
from pyctr.proto import images_pb2_grpc
from tests.images.conftest import ImageSet, cri_pull, images_stub
from tests.images.faultproxy import FaultProxy
from tests.support.daemon import PyctrDaemon


@pytest.fixture
def proxy(test_images: ImageSet) -> Iterator[FaultProxy]:
    with FaultProxy(test_images.registry.port) as p:
        yield p


def assert_store_sound(d: PyctrDaemon) -> set[str]:
    """Every stored blob hashes to its name; returns the digests."""
    digests = set()
    for path in (d.root / "content" / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
        digests.add("sha256:" + path.name)
    return digests


def ingests(d: PyctrDaemon) -> list[npb.ContentIngest]:
    stub = images_pb2_grpc.ContentStub(d.channel())
    return list(stub.List(npb.ContentListRequest()).ingests)


def pull_error(d: PyctrDaemon, ref: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        cri_pull(d, ref, timeout=60)
    return e.value


def test_cut_blob_resumes_with_range(
    pyctrd: PyctrDaemon, proxy: FaultProxy, test_images: ImageSet
) -> None:
    img = test_images.busybox
    proxy.cuts = [100_000, 300_000]
    assert cri_pull(pyctrd, f"{proxy.host}/test/busybox:1") == img.id
    assert "bytes=100000-" in proxy.ranges
    assert proxy.blob_gets(img.layers[0].digest) == 3
    assert img.layers[0].digest in assert_store_sound(pyctrd)
    assert ingests(pyctrd) == []


def test_cut_pull_fails_cleanly_then_resumes(
    daemon_factory: Callable[..., PyctrDaemon], proxy: FaultProxy, test_images: ImageSet
) -> None:
    # One download at a time, so the big layer is the one that gets cut.
    pyctrd = daemon_factory("[registry]\nmax_concurrent_downloads = 1\n")
    img = test_images.busybox
    ref = f"{proxy.host}/test/busybox:1"
    proxy.cuts, proxy.cut_forever = [100_000], 0
    err = pull_error(pyctrd, ref)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    assert img.layers[0].digest in err.details()
    # Nothing partial among the blobs; the partial download waits as an ingest.
    assert img.layers[0].digest not in assert_store_sound(pyctrd)
    [partial] = [i for i in ingests(pyctrd) if i.digest == img.layers[0].digest]
    assert partial.offset == 100_000 and partial.size == img.layers[0].size
    assert images_stub(pyctrd).ListImages(cri.ListImagesRequest()).images == []

    # A GC meanwhile keeps it: the failed pull's lease holds it for a retry.
    images_pb2_grpc.GCStub(pyctrd.channel()).Collect(npb.GCCollectRequest())
    assert [i.offset for i in ingests(pyctrd) if i.digest == img.layers[0].digest] == [100_000]

    proxy.cut_forever = None
    proxy.ranges.clear()
    assert cri_pull(pyctrd, ref) == img.id
    assert proxy.ranges == ["bytes=100000-"]
    assert img.layers[0].digest in assert_store_sound(pyctrd)
    assert ingests(pyctrd) == []


@pytest.mark.parametrize("which", ["layer", "config"])
def test_flipped_byte_is_data_loss(
    pyctrd: PyctrDaemon, proxy: FaultProxy, test_images: ImageSet, which: str
) -> None:
    img = test_images.busybox
    digest = img.layers[0].digest if which == "layer" else img.config.digest
    proxy.flip_digest = digest
    err = pull_error(pyctrd, f"{proxy.host}/test/busybox:1")
    assert err.code() == grpc.StatusCode.DATA_LOSS, err.details()
    assert digest in err.details()
    assert digest not in assert_store_sound(pyctrd)
    assert [i for i in ingests(pyctrd) if i.digest == digest] == []


def test_blob_larger_than_descriptor(
    pyctrd: PyctrDaemon, proxy: FaultProxy, test_images: ImageSet
) -> None:
    img = test_images.busybox
    proxy.grow_digest = img.layers[0].digest
    err = pull_error(pyctrd, f"{proxy.host}/test/busybox:1")
    assert err.code() == grpc.StatusCode.DATA_LOSS, err.details()
    assert "larger than its descriptor" in err.details()
    assert img.layers[0].digest not in assert_store_sound(pyctrd)


def test_stalled_registry_times_out(
    daemon_factory: Callable[..., PyctrDaemon], proxy: FaultProxy, test_images: ImageSet
) -> None:
    d = daemon_factory("[registry]\ntimeout = 0.5\n")
    proxy.stall_digest = "*"
    err = pull_error(d, f"{proxy.host}/test/small:1")
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()


def test_pull_past_its_deadline_is_abandoned(
    pyctrd: PyctrDaemon, proxy: FaultProxy, test_images: ImageSet
) -> None:
    """The caller's deadline ends the pull in the daemon too: it hangs up on
    the registry at once instead of waiting out its own 30 s stall timeout,
    and a later pull of the same image succeeds."""
    proxy.stall_digest = "*"
    ref = f"{proxy.host}/test/small:1"
    with pytest.raises(grpc.RpcError) as e:
        cri_pull(pyctrd, ref, timeout=2)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    gone = time.monotonic() + 10
    while proxy.stalled and time.monotonic() < gone:
        time.sleep(0.1)
    assert proxy.stalled == 0, "the daemon kept pulling after its caller's deadline"
    proxy.stall_digest = ""
    assert cri_pull(pyctrd, ref).startswith("sha256:")
    assert_store_sound(pyctrd)


def test_concurrent_pulls_download_each_blob_once(
    pyctrd: PyctrDaemon, proxy: FaultProxy, test_images: ImageSet
) -> None:
    img = test_images.busybox
    ref = f"{proxy.host}/test/busybox:1"
    stub = images_stub(pyctrd)
    calls = [
        stub.PullImage.future(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=60)
        for _ in range(10)
    ]
    assert {c.result().image_ref for c in calls} == {img.id}
    for layer in img.layers:
        assert proxy.blob_gets(layer.digest) == 1, layer.digest
    assert len(stub.ListImages(cri.ListImagesRequest()).images) == 1
    assert_store_sound(pyctrd)


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.mark.parametrize(
    ("body", "media_type", "code", "says"),
    [
        (b"<html>not json</html>", "text/html", grpc.StatusCode.INVALID_ARGUMENT, "JSON"),
        (b'{"schemaVersion": 1, "fsLayers": []}', "application/json",
         grpc.StatusCode.FAILED_PRECONDITION, "schema 1"),
        (b'{"mediaType": "application/x-other"}', "application/x-other",
         grpc.StatusCode.FAILED_PRECONDITION, "unsupported manifest media type"),
        (b'{"mediaType": "' + OCI_MANIFEST.encode() + b'", "config": {}, "layers": []}',
         OCI_MANIFEST, grpc.StatusCode.INVALID_ARGUMENT, "descriptor"),
        (b'{"layers": [' + b" " * (4 << 20) + b"]}", OCI_MANIFEST,
         grpc.StatusCode.FAILED_PRECONDITION, "too large"),
    ],
    ids=["html", "schema1", "other-type", "no-config", "huge"],
)  # fmt: skip
def test_bad_manifests(
    pyctrd: PyctrDaemon,
    proxy: FaultProxy,
    body: bytes,
    media_type: str,
    code: grpc.StatusCode,
    says: str,
) -> None:
    proxy.manifest = (body, media_type)
    err = pull_error(pyctrd, f"{proxy.host}/test/busybox:1")
    assert err.code() == code, err.details()
    assert says in err.details()
    assert images_stub(pyctrd).ListImages(cri.ListImagesRequest()).images == []


def test_manifest_not_matching_its_digest(
    pyctrd: PyctrDaemon, proxy: FaultProxy, test_images: ImageSet
) -> None:
    small = test_images.small
    proxy.manifest = (b'{"schemaVersion": 2, "layers": []}', OCI_MANIFEST)
    err = pull_error(pyctrd, f"{proxy.host}/test/small@{small.manifest.digest}")
    assert err.code() == grpc.StatusCode.DATA_LOSS, err.details()
    assert small.manifest.digest in err.details()
