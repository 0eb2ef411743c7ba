"""Fixtures for the image tests: one open registry with a set of test images.

The images are built once per session from local material (busybox-static
and generated files) and pushed with skopeo; tests that need faults or auth
start their own registry or put a FaultProxy in front of this one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from pyctr.proto import cri_pb2 as cri
from pyctr.proto import cri_pb2_grpc
from tests.support.daemon import PyctrDaemon
from tests.support.images import (
    HOST_PLATFORM,
    BuiltImage,
    BuiltIndex,
    build_image,
    build_index,
    busybox_layer,
    files_layer,
    push,
)
from tests.support.registry import Registry

OTHER_PLATFORM = "linux/arm64" if HOST_PLATFORM != "linux/arm64" else "linux/amd64"


@dataclass
class ImageSet:
    registry: Registry
    layout: Path
    busybox: BuiltImage  # test/busybox:1 and :2 — two gzip layers, user 1000:1000
    small: BuiltImage  # test/small:1 — one tiny layer
    multi: BuiltIndex  # test/multi:1 — index for the host and OTHER_PLATFORM
    zstd: BuiltImage  # test/zstd:1 — zstd layers
    plain: BuiltImage  # test/plain:1 — uncompressed layers
    docker: BuiltImage  # test/docker:1 — the busybox image as Docker schema 2

    def ref(self, name: str) -> str:
        return f"{self.registry.host}/{name}"


@pytest.fixture(scope="session")
def test_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageSet]:
    base = tmp_path_factory.mktemp("images")
    layout = base / "oci"
    hello = files_layer({"etc/hello": b"hello from pyctr\n"})
    with Registry(base) as reg:
        busybox = build_image(
            layout, "busybox", [busybox_layer(), hello], user="1000:1000", labels={"t": "busybox"}
        )
        small = build_image(layout, "small", [files_layer({"small.txt": b"small\n"})])
        multi = build_index(
            layout,
            "multi",
            {
                HOST_PLATFORM: [files_layer({"platform": HOST_PLATFORM.encode()})],
                OTHER_PLATFORM: [files_layer({"platform": OTHER_PLATFORM.encode()})],
            },
        )
        zstd = build_image(layout, "zstd", [busybox_layer(), hello], compression="zstd")
        plain = build_image(layout, "plain", [hello], compression="none")
        push(layout, "busybox", f"{reg.host}/test/busybox:1")
        push(layout, "busybox", f"{reg.host}/test/busybox:2")
        push(layout, "small", f"{reg.host}/test/small:1")
        push(layout, "multi", f"{reg.host}/test/multi:1", all_platforms=True)
        push(layout, "zstd", f"{reg.host}/test/zstd:1")
        push(layout, "plain", f"{reg.host}/test/plain:1")
        push(layout, "busybox", f"{reg.host}/test/docker:1", docker_format=True)
        yield ImageSet(reg, layout, busybox, small, multi, zstd, plain, busybox)


def images_stub(d: PyctrDaemon) -> cri_pb2_grpc.ImageServiceStub:
    return cri_pb2_grpc.ImageServiceStub(d.channel())


def cri_pull(d: PyctrDaemon, ref: str, timeout: float = 60, **auth: str) -> str:
    req = cri.PullImageRequest(image=cri.ImageSpec(image=ref))
    if auth:
        req.auth.CopyFrom(cri.AuthConfig(**auth))
    return images_stub(d).PullImage(req, timeout=timeout).image_ref


def status_code(call: object) -> grpc.StatusCode:
    assert isinstance(call, grpc.RpcError)
    return call.code()  # type: ignore[attr-defined, no-any-return]
