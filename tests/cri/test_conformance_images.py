"""The ImageService as critest's image suites and a kubelet use it.

The kubelet keys everything on Image.id (the config digest): PullImage's
image_ref, ImageStatus and ListImages must agree on it; it refuses an
ImageStatus answer without an ID or a size; it reads the image's user from
uid / username (runAsNonRoot); its image GC skips pinned images (the
sandbox image, as containerd pins it) and measures the image filesystem
with ImageFsInfo. critest checks repo tags and digests by how an image was
pulled, lookups by every kind of reference, and idempotent, concurrent
removal.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from pyctr.daemon.cri.images import cri_image
from pyctr.daemon.images.store import Image
from pyctr.daemon.pods import netns
from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import CriEnv, code_of
from tests.support.images import build_image, busybox_layer, push

pytestmark = pytest.mark.root

SECOND = 1_000_000_000


@dataclass
class UserImages:
    uid_repo: str  # User "1003:users", pushed as :1 only
    uid_digest: str  # its manifest digest
    named_repo: str  # User "www-data", pushed as :1 and :latest


@pytest.fixture(scope="module")
def user_images(cri_env: CriEnv, tmp_path_factory: pytest.TempPathFactory) -> UserImages:
    layout = tmp_path_factory.mktemp("conformance-oci")
    bb = busybox_layer()
    uid = build_image(layout, "uid", [bb], user="1003:users", labels={"which": "uid"})
    build_image(layout, "named", [bb], user="www-data", labels={"which": "named"})
    host = cri_env.registry.host
    with netns.entered(cri_env.host_ns):
        push(layout, "uid", f"{host}/conf/uid:1")
        push(layout, "named", f"{host}/conf/named:1")
        push(layout, "named", f"{host}/conf/named:latest")
    return UserImages(f"{host}/conf/uid", uid.manifest.digest, f"{host}/conf/named")


def status(env: CriEnv, ref: str, verbose: bool = False) -> cri.ImageStatusResponse:
    req = cri.ImageStatusRequest(image=cri.ImageSpec(image=ref), verbose=verbose)
    return env.images.ImageStatus(req, timeout=10)


def pull(env: CriEnv, ref: str) -> str:
    req = cri.PullImageRequest(image=cri.ImageSpec(image=ref))
    return env.images.PullImage(req, timeout=60).image_ref


def listed(env: CriEnv, ref: str = "") -> list[cri.Image]:
    f = cri.ImageFilter(image=cri.ImageSpec(image=ref)) if ref else None
    return list(env.images.ListImages(cri.ListImagesRequest(filter=f), timeout=10).images)


def remove(env: CriEnv, ref: str) -> None:
    env.images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=ref)), timeout=30)


def test_pull_status_and_list_agree_on_the_image(cri_env: CriEnv) -> None:
    image_id = pull(cri_env, cri_env.app_ref)
    assert image_id.startswith("sha256:") and len(image_id) == 71
    resp = status(cri_env, cri_env.app_ref, verbose=True)
    image = resp.image
    # What the kubelet requires of an ImageStatus answer.
    assert image.id == image_id and image.size > 0
    assert list(image.repo_tags) == [cri_env.app_ref]
    repo = cri_env.app_ref.rsplit(":", 1)[0]
    [digest] = image.repo_digests
    assert digest.startswith(repo + "@sha256:") and len(digest) == len(repo) + 72
    assert not image.pinned and image_id in resp.info["info"]
    # critest: the same answer by every kind of reference to the image.
    for ref in (image_id, image_id.removeprefix("sha256:"), cri_env.app_ref, digest):
        assert status(cri_env, ref).image == image, ref
    # ListImages lists the same message; a filter narrows it to the image.
    assert [i for i in listed(cri_env) if i.id == image_id] == [image]
    assert listed(cri_env, cri_env.app_ref) == [image] == listed(cri_env, image_id)

    # Unknown images: an empty status (no error), an empty list.
    for unknown in (
        f"{repo}:no-such-tag",
        f"{cri_env.registry.host}/no/such:1",
        "sha256:" + "0" * 64,
        "0" * 64,
        "busybox",
    ):
        assert not status(cri_env, unknown).HasField("image"), unknown
        assert listed(cri_env, unknown) == [], unknown
    with pytest.raises(grpc.RpcError) as e:
        status(cri_env, "")
    assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_sandbox_image_is_pinned(cri_env: CriEnv) -> None:
    # containerd pins its sandbox image, and the kubelet's image GC (which
    # does not count pause containers as users of an image) skips pinned ones.
    pause_id = pull(cri_env, cri_env.pause_ref)
    assert status(cri_env, cri_env.pause_ref).image.pinned
    assert status(cri_env, pause_id).image.pinned
    [entry] = [i for i in listed(cri_env) if i.id == pause_id]
    assert entry.pinned
    app_id = pull(cri_env, cri_env.app_ref)
    assert not status(cri_env, app_id).image.pinned


def test_image_user_as_uid_or_username(cri_env: CriEnv, user_images: UserImages) -> None:
    pull(cri_env, f"{user_images.uid_repo}:1")
    pull(cri_env, f"{user_images.named_repo}:1")
    uid = status(cri_env, f"{user_images.uid_repo}:1").image
    assert uid.HasField("uid") and uid.uid.value == 1003 and uid.username == ""
    named = status(cri_env, f"{user_images.named_repo}:1").image
    assert not named.HasField("uid") and named.username == "www-data"
    app = status(cri_env, pull(cri_env, cri_env.app_ref)).image
    assert not app.HasField("uid") and app.username == ""
    for ref in (f"{user_images.uid_repo}:1", f"{user_images.named_repo}:1"):
        remove(cri_env, ref)


def test_image_user_conversion() -> None:
    def user_of(user: str) -> tuple[int | None, str]:
        img = cri_image(Image("sha256:" + "a" * 64, "sha256:" + "b" * 64, "", [], "", 1, user))
        return (img.uid.value if img.HasField("uid") else None), img.username

    # critest's four cases, and no user at all.
    assert user_of("1002") == (1002, "")
    assert user_of("www-data") == (None, "www-data")
    assert user_of("1003:users") == (1003, "")
    assert user_of("www-data:group") == (None, "www-data")
    assert user_of("") == (None, "")


def test_tags_digests_and_concurrent_removal(cri_env: CriEnv, user_images: UserImages) -> None:
    named = user_images.named_repo
    # Pulled by tag, by another tag and without a tag (":latest"): one image.
    ids = {pull(cri_env, f"{named}:1"), pull(cri_env, f"{named}:latest"), pull(cri_env, named)}
    [named_id] = ids
    image = status(cri_env, named).image
    assert image.id == named_id
    assert sorted(image.repo_tags) == [f"{named}:1", f"{named}:latest"]
    # Removing one name leaves the image under the other.
    remove(cri_env, f"{named}:latest")
    assert not status(cri_env, f"{named}:latest").HasField("image")
    assert list(status(cri_env, named_id).image.repo_tags) == [f"{named}:1"]

    # Pulled by digest only: no tags, the digest reference as repo digest.
    by_digest = f"{user_images.uid_repo}@{user_images.uid_digest}"
    uid_id = pull(cri_env, by_digest)
    image = status(cri_env, by_digest).image
    assert image.id == uid_id and list(image.repo_tags) == []
    assert list(image.repo_digests) == [by_digest]

    # critest: five RemoveImage calls at once by ID all succeed, and the image
    # is gone when each returns; so is the other image, by name.
    errors: list[BaseException] = []
    found: list[bool] = []

    def remove_and_look() -> None:
        try:
            remove(cri_env, uid_id)
            found.append(status(cri_env, uid_id).HasField("image"))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=remove_and_look) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and found == [False] * 5
    remove(cri_env, f"{named}:1")
    remove(cri_env, f"{named}:1")
    remaining = {i.id for i in listed(cri_env)}
    assert uid_id not in remaining and named_id not in remaining


def test_pull_deadline_and_image_fs_info(cri_env: CriEnv, user_images: UserImages) -> None:
    since = time.time_ns()
    before = cri_env.images.ImageFsInfo(cri.ImageFsInfoRequest(), timeout=30)
    [fs] = before.image_filesystems
    assert os.path.isdir(fs.fs_id.mountpoint) and Path(fs.fs_id.mountpoint).is_absolute()
    assert fs.HasField("used_bytes") and fs.HasField("inodes_used")
    assert since - SECOND <= fs.timestamp <= time.time_ns()
    for other in before.container_filesystems:
        assert os.path.isdir(other.fs_id.mountpoint) and other.HasField("used_bytes")

    # critest: a pull that runs out of time is DEADLINE_EXCEEDED to the client,
    # and the daemon stays well (the module's daemon log must hold no traceback).
    ref = f"{user_images.uid_repo}:1"
    with pytest.raises(grpc.RpcError) as e:
        cri_env.images.PullImage(
            cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=0.001
        )
    assert code_of(e.value) == grpc.StatusCode.DEADLINE_EXCEEDED
    image_id = pull(cri_env, ref)
    after = cri_env.images.ImageFsInfo(cri.ImageFsInfoRequest(), timeout=30).image_filesystems[0]
    assert after.used_bytes.value > fs.used_bytes.value and after.inodes_used.value > 0
    assert after.fs_id.mountpoint == fs.fs_id.mountpoint
    remove(cri_env, image_id)


@pytest.fixture(autouse=True)
def _forget_images(cri_env: CriEnv) -> Iterator[None]:
    """Each test starts from the images the module's daemon was given."""
    yield
    for image in listed(cri_env):
        if image.id and not image.pinned:
            remove(cri_env, image.id)
