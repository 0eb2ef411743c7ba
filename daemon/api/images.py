"""pyctr.v1 Images, Content and GC services (for `pyctr images|content|gc`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import grpc

from pyctr.daemon.errors import InvalidArgument
from pyctr.daemon.images.auth import Credentials
from pyctr.daemon.images.manager import ImageManager
from pyctr.daemon.images.pull import PullProgress
from pyctr.daemon.images.reference import parse
from pyctr.daemon.images.store import Image
from pyctr.proto import images_pb2 as pb
from pyctr.proto import images_pb2_grpc

# How often a pull's progress is sent at most.
PROGRESS_INTERVAL = 0.2


def image_record(image: Image) -> pb.ImageRecord:
    return pb.ImageRecord(
        id=image.id,
        repo_tags=image.repo_tags,
        repo_digests=image.repo_digests,
        names=[
            pb.ImageName(
                name=n.name, target_digest=n.target_digest, target_media_type=n.target_media_type
            )
            for n in image.names
        ],
        manifest_digest=image.manifest_digest,
        manifest_media_type=image.manifest_media_type,
        layers=[
            pb.ImageLayer(digest=x.digest, media_type=x.media_type, size=x.size, diff_id=x.diff_id)
            for x in image.layers
        ],
        chain_id=image.chain_id,
        size=image.size,
        user=image.user,
        labels=image.labels,
        platform=image.platform,
        created_at=int(image.created * 1e9),
        updated_at=int(image.updated * 1e9),
    )


class ImagesService(images_pb2_grpc.ImagesServicer):
    def __init__(self, manager: ImageManager) -> None:
        self.manager = manager

    def _progress(self, p: PullProgress) -> pb.ImagePullProgress:
        return pb.ImagePullProgress(
            reference=p.reference,
            phase=p.phase,
            manifest_digest=p.manifest_digest,
            layers=[
                pb.ImageLayerProgress(
                    digest=x.digest,
                    media_type=x.media_type,
                    size=x.size,
                    done=self.manager.layer_done(x),
                    state=x.state,
                )
                for x in p.layers
            ],
        )

    async def Pull(  # noqa: N802 (gRPC method names)
        self, request: pb.ImagePullRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ImagePullProgress]:
        if not request.reference:
            raise InvalidArgument("pull: reference is empty")
        parse(request.reference)  # refuse a bad reference before streaming
        creds = None
        if request.HasField("auth"):
            a = request.auth
            creds = Credentials.from_fields(
                a.username, a.password, a.auth, a.identity_token, a.registry_token
            )
            creds = creds or None
        progress = PullProgress()
        task = asyncio.create_task(
            self.manager.pull(request.reference, creds, request.platform, progress)
        )
        try:
            while not task.done():
                progress.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(progress.changed.wait()), 1.0)
                if task.done():
                    break
                yield self._progress(progress)
                await asyncio.wait([task], timeout=PROGRESS_INTERVAL)
            image = await task
        finally:
            if not task.done():
                # The client went away: stop the pull; its lease keeps what
                # it fetched so far for the next try.
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        last = self._progress(progress)
        last.image.CopyFrom(image_record(image))
        yield last

    async def List(  # noqa: N802
        self, request: pb.ImageListRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImageListResponse:
        store = self.manager.store
        if request.filter:
            found = store.find(request.filter)
            images = [found] if found else []
        else:
            images = store.list()
        return pb.ImageListResponse(images=[image_record(i) for i in images])

    async def Get(  # noqa: N802
        self, request: pb.ImageGetRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImageGetResponse:
        store = self.manager.store
        image = store.get(request.reference)
        return pb.ImageGetResponse(
            image=image_record(image),
            manifest_json=json.dumps(store.manifest(image)),
            config_json=json.dumps(store.config(image)),
        )

    async def Remove(  # noqa: N802
        self, request: pb.ImageRemoveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImageRemoveResponse:
        if not request.reference:
            raise InvalidArgument("remove: reference is empty")
        deleted = await self.manager.remove(request.reference, collect=not request.no_gc)
        return pb.ImageRemoveResponse(deleted=deleted)

    async def Tag(  # noqa: N802
        self, request: pb.ImageTagRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImageTagResponse:
        image = self.manager.store.tag(request.reference, request.new_name)
        return pb.ImageTagResponse(image=image_record(image))


class ContentService(images_pb2_grpc.ContentServicer):
    def __init__(self, manager: ImageManager) -> None:
        self.manager = manager

    async def List(  # noqa: N802
        self, request: pb.ContentListRequest, context: grpc.aio.ServicerContext
    ) -> pb.ContentListResponse:
        content = self.manager.content
        blobs, ingests = await asyncio.to_thread(lambda: (content.list(), content.ingests()))
        return pb.ContentListResponse(
            blobs=[
                pb.ContentBlob(digest=b.digest, size=b.size, created_at=int(b.created * 1e9))
                for b in sorted(blobs, key=lambda b: b.created)
            ],
            ingests=[
                pb.ContentIngest(
                    ref=i.ref,
                    digest=i.digest,
                    size=i.size,
                    offset=i.offset,
                    updated_at=int(i.updated * 1e9),
                )
                for i in ingests
            ],
        )

    async def Info(  # noqa: N802
        self, request: pb.ContentInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ContentInfoResponse:
        b = self.manager.content.info(request.digest)
        return pb.ContentInfoResponse(
            blob=pb.ContentBlob(digest=b.digest, size=b.size, created_at=int(b.created * 1e9))
        )


class GCService(images_pb2_grpc.GCServicer):
    def __init__(self, manager: ImageManager) -> None:
        self.manager = manager

    async def Collect(  # noqa: N802
        self, request: pb.GCCollectRequest, context: grpc.aio.ServicerContext
    ) -> pb.GCCollectResponse:
        r = await self.manager.collect()
        return pb.GCCollectResponse(
            leases_expired=r.leases_expired,
            blobs_removed=r.blobs_removed,
            ingests_removed=r.ingests_removed,
            snapshots_removed=r.snapshots_removed,
            bytes_freed=r.bytes_freed,
            duration_seconds=r.duration,
        )


def register(server: grpc.aio.Server, manager: ImageManager) -> None:
    """Add CRI ImageService and the native Images/Content/GC services."""
    from pyctr.daemon.cri.images import ImageService
    from pyctr.proto import cri_pb2_grpc

    cri_pb2_grpc.add_ImageServiceServicer_to_server(ImageService(manager), server)
    images_pb2_grpc.add_ImagesServicer_to_server(ImagesService(manager), server)
    images_pb2_grpc.add_ContentServicer_to_server(ContentService(manager), server)
    images_pb2_grpc.add_GCServicer_to_server(GCService(manager), server)
