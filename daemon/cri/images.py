"""CRI ImageService: the kubelet's view of images, over `ImageManager`.

Kubelet expectations this layer keeps:
- PullImage answers the image ID (config digest); ImageStatus, ListImages and
  containers report the same ID.
- ImageStatus of an unknown image is an empty response, not an error.
- RemoveImage of an unknown image succeeds (removal is idempotent).
- RepoDigests are `repo@<digest the name resolved to>`; the user is reported
  as a numeric uid when it is one, else as a name.
- The sandbox image is pinned (as containerd pins it): the kubelet's image GC
  skips pinned images, and it does not count pause containers as users.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit

import grpc

from pyctr.daemon.errors import InvalidArgument
from pyctr.daemon.images.auth import Credentials
from pyctr.daemon.images.manager import ImageManager
from pyctr.daemon.images.reference import parse
from pyctr.daemon.images.store import Image
from pyctr.proto import cri_pb2 as pb
from pyctr.proto import cri_pb2_grpc

log = logging.getLogger(__name__)


def cri_image(image: Image, pinned_names: frozenset[str] = frozenset()) -> pb.Image:
    out = pb.Image(
        id=image.id,
        repo_tags=image.repo_tags,
        repo_digests=image.repo_digests,
        size=image.size,
        spec=pb.ImageSpec(image=image.id),
        pinned=image.pinned or any(n.name in pinned_names for n in image.names),
    )
    user = image.user.split(":", 1)[0]
    if user.isdigit():
        out.uid.value = int(user)
    elif user:
        out.username = user
    return out


def _same_registry(server_address: str, domain: str) -> bool:
    addr = server_address.strip()
    host = urlsplit(addr if "://" in addr else f"//{addr}").netloc or addr
    aliases = {"index.docker.io", "registry-1.docker.io", "docker.io"}
    return host == domain or (host in aliases and domain == "docker.io")


def credentials(auth: pb.AuthConfig | None, domain: str) -> Credentials | None:
    if auth is None or not (
        auth.username or auth.password or auth.auth or auth.identity_token or auth.registry_token
    ):
        return None
    if auth.server_address and not _same_registry(auth.server_address, domain):
        # Credentials for another registry are never sent to this one.
        log.info("ignoring credentials for %s when pulling from %s", auth.server_address, domain)
        return None
    return Credentials.from_fields(
        auth.username, auth.password, auth.auth, auth.identity_token, auth.registry_token
    )


def reference_names(ref: str) -> frozenset[str]:
    """The names an image pulled as `ref` is stored under; none if invalid."""
    try:
        r = parse(ref)
    except InvalidArgument:
        return frozenset()
    return frozenset(n for n in (r.tagged_name, r.digest and r.with_digest(r.digest)) if n)


class ImageService(cri_pb2_grpc.ImageServiceServicer):
    def __init__(self, manager: ImageManager) -> None:
        self.manager = manager
        self.pinned_names = reference_names(manager.config.cri.sandbox_image)

    def _image(self, image: Image) -> pb.Image:
        return cri_image(image, self.pinned_names)

    async def PullImage(  # noqa: N802 (gRPC method names)
        self, request: pb.PullImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.PullImageResponse:
        ref = _image_ref(request.image, "PullImage")
        domain = parse(ref).domain
        has_auth = request.HasField("auth")
        creds = credentials(request.auth if has_auth else None, domain)
        image = await self.manager.pull(ref, creds)
        return pb.PullImageResponse(image_ref=image.id)

    async def ListImages(  # noqa: N802
        self, request: pb.ListImagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListImagesResponse:
        wanted = request.filter.image.image if request.HasField("filter") else ""
        if wanted:
            image = self.manager.store.find(wanted)
            images = [image] if image else []
        else:
            images = self.manager.store.list()
        return pb.ListImagesResponse(images=[self._image(i) for i in images])

    async def ImageStatus(  # noqa: N802
        self, request: pb.ImageStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImageStatusResponse:
        ref = _image_ref(request.image, "ImageStatus")
        image = self.manager.store.find(ref)
        if image is None:
            return pb.ImageStatusResponse()
        resp = pb.ImageStatusResponse(image=self._image(image))
        if request.verbose:
            info = {
                "id": image.id,
                "chainID": image.chain_id,
                "manifestDigest": image.manifest_digest,
                "manifestMediaType": image.manifest_media_type,
                "platform": image.platform,
                "names": [n.name for n in image.names],
                "imageSpec": self.manager.store.config(image),
            }
            resp.info["info"] = json.dumps(info)
        return resp

    async def RemoveImage(  # noqa: N802
        self, request: pb.RemoveImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.RemoveImageResponse:
        ref = _image_ref(request.image, "RemoveImage")
        await self.manager.remove(ref)
        return pb.RemoveImageResponse()

    async def ImageFsInfo(  # noqa: N802
        self, request: pb.ImageFsInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImageFsInfoResponse:
        u = await self.manager.fs_usage()
        usage = pb.FilesystemUsage(
            timestamp=u.timestamp_ns, fs_id=pb.FilesystemIdentifier(mountpoint=u.mountpoint)
        )
        usage.used_bytes.value = u.used_bytes
        usage.inodes_used.value = u.inodes_used
        return pb.ImageFsInfoResponse(image_filesystems=[usage])


def _image_ref(spec: pb.ImageSpec, call: str) -> str:
    if not spec.image:
        raise InvalidArgument(f"{call}: image.image is empty")
    return spec.image
