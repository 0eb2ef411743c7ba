"""pyctr.v1.Snapshots: the snapshotter, read-mostly, for `pyctr snapshots`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc

from pyctr.daemon.errors import FailedPrecondition, InvalidArgument
from pyctr.proto import snapshots_pb2 as pb
from pyctr.proto import snapshots_pb2_grpc
from pyctr.snapshotter.mount import Mount

if TYPE_CHECKING:
    from pyctr.daemon.context import Context


class SnapshotsService(snapshots_pb2_grpc.SnapshotsServicer):
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def _users(self) -> dict[str, list[str]]:
        """Snapshot key -> what holds it (images by their top chain, containers by key)."""
        users: dict[str, list[str]] = {}
        images = self.ctx.images
        if images is not None:
            for image in images.store.list():
                names = image.repo_tags or [image.id]
                users.setdefault(image.chain_id, []).extend(names)
        runtime = self.ctx.runtime
        if runtime is not None:
            for c in runtime.store.list():
                if c.snapshot:
                    users.setdefault(c.snapshot, []).append(f"container {c.id[:12]}")
        return users

    @staticmethod
    def _key(request: pb.SnapshotKeyRequest) -> str:
        if not request.key:
            raise InvalidArgument("a snapshot key is required")
        return request.key

    def _info(self, info: Any, users: dict[str, list[str]]) -> pb.SnapshotInfo:
        return pb.SnapshotInfo(
            key=info.key,
            parent=info.parent or "",
            kind=str(info.kind),
            labels=info.labels,
            created_at=info.created_ns,
            updated_at=info.updated_ns,
            used_by=users.get(info.key, []),
        )

    async def List(  # noqa: N802 (gRPC method names)
        self, request: pb.SnapshotListRequest, context: grpc.aio.ServicerContext
    ) -> pb.SnapshotListResponse:
        snap = self.ctx.snapshotter
        infos = await asyncio.to_thread(lambda: list(snap.walk()))
        users = self._users()
        return pb.SnapshotListResponse(
            snapshots=[self._info(i, users) for i in infos], backend=snap.backend
        )

    async def Info(  # noqa: N802
        self, request: pb.SnapshotKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.SnapshotInfo:
        info = await asyncio.to_thread(self.ctx.snapshotter.stat, self._key(request))
        return self._info(info, self._users())

    async def Usage(  # noqa: N802
        self, request: pb.SnapshotKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.SnapshotUsage:
        usage = await asyncio.to_thread(self.ctx.snapshotter.usage, self._key(request))
        return pb.SnapshotUsage(size_bytes=usage.size_bytes, inodes=usage.inodes)

    async def Mounts(  # noqa: N802
        self, request: pb.SnapshotKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.SnapshotMounts:
        mounts = await asyncio.to_thread(self._mounts, self._key(request))
        return pb.SnapshotMounts(
            mounts=[
                pb.SnapshotMount(type=m.type, source=m.source, options=m.options) for m in mounts
            ]
        )

    def _mounts(self, key: str) -> list[Any]:
        """A committed snapshot is shown read-only, straight from its layer dirs."""
        snap = self.ctx.snapshotter
        if snap.stat(key).kind != "committed":
            return list(snap.mounts(key))
        dirs = [str(d) for d in snap.lower_dirs(key)]
        if len(dirs) == 1:  # overlay needs two lowers when it has no upper
            return [Mount("bind", dirs[0], ["rbind", "ro"])]
        return [Mount("overlay", "overlay", ["ro", f"lowerdir={':'.join(dirs)}", "index=off"])]

    async def Remove(  # noqa: N802
        self, request: pb.SnapshotKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.SnapshotRemoveResponse:
        key = self._key(request)
        holders = self._users().get(key)
        if holders:
            raise FailedPrecondition(f"snapshot {key} is in use by {', '.join(holders)}")
        await asyncio.to_thread(self.ctx.snapshotter.remove, key)
        return pb.SnapshotRemoveResponse()


def register(server: grpc.aio.Server, ctx: Context) -> None:
    snapshots_pb2_grpc.add_SnapshotsServicer_to_server(SnapshotsService(ctx), server)
