"""CRI ImageService over the daemon's socket, against a real registry."""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
from pathlib import Path

import grpc
import pytest

from pyctr.proto import cri_pb2 as cri
from pyctr.proto import images_pb2 as npb
from pyctr.proto import images_pb2_grpc
from tests.images.conftest import OTHER_PLATFORM, ImageSet, cri_pull, images_stub
from tests.support.daemon import PyctrDaemon
from tests.support.images import build_image, files_layer, push, tar_bytes


def spec(ref: str) -> cri.ImageSpec:
    return cri.ImageSpec(image=ref)


def stored_blobs(d: PyctrDaemon) -> dict[str, bytes]:
    blob_dir = d.root / "content" / "blobs" / "sha256"
    return {"sha256:" + p.name: p.read_bytes() for p in blob_dir.iterdir()}


def test_pull_list_status_remove(pyctrd: PyctrDaemon, test_images: ImageSet) -> None:
    img = test_images.busybox
    ref = test_images.ref("test/busybox:1")
    repo = test_images.ref("test/busybox")
    stub = images_stub(pyctrd)

    assert cri_pull(pyctrd, ref) == img.id

    [listed] = stub.ListImages(cri.ListImagesRequest()).images
    assert listed.id == img.id
    assert list(listed.repo_tags) == [ref]
    assert list(listed.repo_digests) == [f"{repo}@{img.manifest.digest}"]
    assert listed.size == img.size
    assert listed.uid.value == 1000 and listed.username == ""

    # Every way the kubelet may name it finds the same image.
    for name in (ref, img.id, img.id.removeprefix("sha256:"), f"{repo}@{img.manifest.digest}"):
        got = stub.ImageStatus(cri.ImageStatusRequest(image=spec(name))).image
        assert got.id == img.id, name
    filtered = stub.ListImages(cri.ListImagesRequest(filter=cri.ImageFilter(image=spec(ref))))
    assert [i.id for i in filtered.images] == [img.id]

    verbose = stub.ImageStatus(cri.ImageStatusRequest(image=spec(ref), verbose=True))
    info = json.loads(verbose.info["info"])
    assert info["chainID"] == img.chain_id
    assert info["imageSpec"]["config"]["User"] == "1000:1000"
    assert info["imageSpec"]["config"]["Labels"] == {"t": "busybox"}

    # The store holds exactly the image's blobs, each hashing to its name.
    blobs = stored_blobs(pyctrd)
    expected = {img.manifest.digest, img.config.digest, *(x.digest for x in img.layers)}
    assert set(blobs) == expected
    for digest, data in blobs.items():
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    blob_file = pyctrd.root / "content" / "blobs" / "sha256" / img.config.digest[7:]
    assert blob_file.stat().st_mode & 0o777 == 0o600

    stub.RemoveImage(cri.RemoveImageRequest(image=spec(img.id)))
    assert stub.ListImages(cri.ListImagesRequest()).images == []
    assert not stub.ImageStatus(cri.ImageStatusRequest(image=spec(ref))).HasField("image")
    assert stored_blobs(pyctrd) == {}, "GC after removal left blobs"
    # Idempotent: removing again, or something never seen, is fine.
    stub.RemoveImage(cri.RemoveImageRequest(image=spec(img.id)))
    stub.RemoveImage(cri.RemoveImageRequest(image=spec("never/seen:1")))


def test_status_of_unknown_image_is_empty(pyctrd: PyctrDaemon) -> None:
    resp = images_stub(pyctrd).ImageStatus(cri.ImageStatusRequest(image=spec("nothing:here")))
    assert not resp.HasField("image")
    assert dict(resp.info) == {}


def test_second_name_and_removing_one_name(pyctrd: PyctrDaemon, test_images: ImageSet) -> None:
    img = test_images.busybox
    one, two = test_images.ref("test/busybox:1"), test_images.ref("test/busybox:2")
    stub = images_stub(pyctrd)
    assert cri_pull(pyctrd, one) == img.id
    assert cri_pull(pyctrd, two) == img.id
    [listed] = stub.ListImages(cri.ListImagesRequest()).images
    assert sorted(listed.repo_tags) == [one, two]

    stub.RemoveImage(cri.RemoveImageRequest(image=spec(one)))
    [listed] = stub.ListImages(cri.ListImagesRequest()).images
    assert list(listed.repo_tags) == [two]
    assert img.config.digest in stored_blobs(pyctrd)

    stub.RemoveImage(cri.RemoveImageRequest(image=spec(two)))
    assert stub.ListImages(cri.ListImagesRequest()).images == []
    assert stored_blobs(pyctrd) == {}


def test_multi_platform_index(pyctrd: PyctrDaemon, test_images: ImageSet) -> None:
    multi = test_images.multi
    ref = test_images.ref("test/multi:1")
    host_img = next(i for p, i in multi.images.items() if p != OTHER_PLATFORM)
    assert cri_pull(pyctrd, ref) == host_img.id
    [listed] = images_stub(pyctrd).ListImages(cri.ListImagesRequest()).images
    # RepoDigests name what the tag points at: the index.
    assert list(listed.repo_digests) == [f"{test_images.ref('test/multi')}@{multi.index.digest}"]

    native = images_pb2_grpc.ImagesStub(pyctrd.channel())
    other = list(native.Pull(npb.ImagePullRequest(reference=ref, platform=OTHER_PLATFORM)))
    assert other[-1].image.id == multi.images[OTHER_PLATFORM].id
    assert other[-1].image.platform == OTHER_PLATFORM

    with pytest.raises(grpc.RpcError) as e:
        list(native.Pull(npb.ImagePullRequest(reference=ref, platform="linux/s390x")))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "linux/s390x" in e.value.details()


@pytest.mark.parametrize("name", ["zstd", "plain", "docker"])
def test_layer_compressions_and_docker_format(
    pyctrd: PyctrDaemon, test_images: ImageSet, name: str
) -> None:
    img = getattr(test_images, name)
    image_id = cri_pull(pyctrd, test_images.ref(f"test/{name}:1"))
    assert image_id == img.id
    native = images_pb2_grpc.ImagesStub(pyctrd.channel())
    got = native.Get(npb.ImageGetRequest(reference=image_id))
    assert got.image.chain_id == img.chain_id
    if name == "docker":
        assert got.image.manifest_media_type == (
            "application/vnd.docker.distribution.manifest.v2+json"
        )
    for digest, data in stored_blobs(pyctrd).items():
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest


def test_pull_errors(pyctrd: PyctrDaemon, test_images: ImageSet) -> None:
    def code_of(ref: str) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as e:
            cri_pull(pyctrd, ref, timeout=30)
        return e.value.code(), e.value.details()

    code, msg = code_of(test_images.ref("test/busybox:nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "manifest unknown" in msg
    code, msg = code_of(test_images.ref("test/nothing:1"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, msg = code_of("Bad Name!")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, msg = code_of("127.0.0.1:1/test/busybox:1")
    assert code == grpc.StatusCode.UNAVAILABLE and "127.0.0.1:1" in msg
    code, msg = code_of("")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert images_stub(pyctrd).ListImages(cri.ListImagesRequest()).images == []


def test_image_fs_info(pyctrd: PyctrDaemon, test_images: ImageSet) -> None:
    stub = images_stub(pyctrd)
    before = stub.ImageFsInfo(cri.ImageFsInfoRequest()).image_filesystems[0]
    cri_pull(pyctrd, test_images.ref("test/busybox:1"))
    after = stub.ImageFsInfo(cri.ImageFsInfoRequest()).image_filesystems[0]
    assert abs(after.timestamp - time.time_ns()) < 60 * 10**9
    assert after.fs_id.mountpoint == str(pyctrd.root)
    # The compressed layers plus the unpacked busybox binary at least.
    assert after.used_bytes.value - before.used_bytes.value >= test_images.busybox.size + 1_900_000
    assert after.inodes_used.value > before.inodes_used.value + 10


def test_images_survive_a_daemon_restart(pyctrd: PyctrDaemon, test_images: ImageSet) -> None:
    img = test_images.busybox
    cri_pull(pyctrd, test_images.ref("test/busybox:1"))
    pyctrd.restart()
    [listed] = images_stub(pyctrd).ListImages(cri.ListImagesRequest()).images
    assert listed.id == img.id
    assert set(stored_blobs(pyctrd)) == {
        img.manifest.digest, img.config.digest, *(x.digest for x in img.layers)
    }  # fmt: skip


def test_hostile_layers_are_refused(
    pyctrd: PyctrDaemon, test_images: ImageSet, tmp_path: Path
) -> None:
    layout = tmp_path / "oci"
    escape = tarfile.TarInfo("../../escaped")
    escape.size = 4
    build_image(layout, "escape", [tar_bytes([(escape, b"evil")])])
    liar_config = {"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}
    build_image(layout, "liar", [files_layer({"a": b"a"})], extra_config=liar_config)
    reg = test_images.registry
    push(layout, "escape", f"{reg.host}/test/escape:1")
    push(layout, "liar", f"{reg.host}/test/liar:1")

    with pytest.raises(grpc.RpcError) as e:
        cri_pull(pyctrd, f"{reg.host}/test/escape:1")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        cri_pull(pyctrd, f"{reg.host}/test/liar:1")
    assert e.value.code() == grpc.StatusCode.DATA_LOSS, e.value.details()
    assert images_stub(pyctrd).ListImages(cri.ListImagesRequest()).images == []
    assert not (tmp_path.parent / "escaped").exists()
