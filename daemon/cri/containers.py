"""CRI container calls: lifecycle, status, exec-sync, resources, logs, events.

Create and start go through the pod (`SandboxManager`), which checks the
pod is ready and serialises them with its stop; the rest go straight to the
runtime manager. Unknown IDs answer NOT_FOUND, except StopContainer and
RemoveContainer, which succeed (both are idempotent in the CRI; critest
checks it, containerd 2 does it). ExecSync that runs
out of time answers DEADLINE_EXCEEDED, which the kubelet turns into a probe
timeout.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator

import grpc

from pyctr.daemon.context import Context
from pyctr.daemon.cri import convert
from pyctr.daemon.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
)
from pyctr.daemon.events import Event
from pyctr.daemon.pods.updates import update_container_resources
from pyctr.daemon.runtime.checkpoint import checkpoint_container
from pyctr.daemon.runtime.records import Container, CriContainer, Sandbox
from pyctr.daemon.spec.oci import exec_process
from pyctr.proto import cri_pb2 as cri

log = logging.getLogger(__name__)

# ExecSync output kept per stream: both together, with the answer's envelope,
# must fit the kubelet's (and our) 16 MiB message limit, or the probe fails.
MAX_EXEC_OUTPUT = 8 * 1024 * 1024 - 4096
_EVENT_TYPES = {
    "/containers/create": cri.CONTAINER_CREATED_EVENT,
    "/tasks/start": cri.CONTAINER_STARTED_EVENT,
    "/tasks/exit": cri.CONTAINER_STOPPED_EVENT,
    "/containers/delete": cri.CONTAINER_DELETED_EVENT,
}


class ContainerRpcs:
    ctx: Context

    async def CreateContainer(  # noqa: N802 (gRPC method names)
        self, request: cri.CreateContainerRequest, context: grpc.aio.ServicerContext
    ) -> cri.CreateContainerResponse:
        if not request.HasField("config") or not request.config.HasField("metadata"):
            raise InvalidArgument("CreateContainer: config.metadata is required")
        c = await self.ctx.sandboxes.create_container(request.pod_sandbox_id, request.config)
        return cri.CreateContainerResponse(container_id=c.id)

    async def StartContainer(  # noqa: N802
        self, request: cri.StartContainerRequest, context: grpc.aio.ServicerContext
    ) -> cri.StartContainerResponse:
        await self.ctx.sandboxes.start_container(request.container_id)
        return cri.StartContainerResponse()

    async def StopContainer(  # noqa: N802
        self, request: cri.StopContainerRequest, context: grpc.aio.ServicerContext
    ) -> cri.StopContainerResponse:
        c = self._known(request.container_id)
        if c is not None:  # else nothing is left to stop
            with contextlib.suppress(NotFound):  # removed meanwhile
                sig = convert.stop_signal(c, warn=True)
                await self.ctx.runtime.stop(c.id, max(0, request.timeout), sig)
        return cri.StopContainerResponse()

    async def RemoveContainer(  # noqa: N802
        self, request: cri.RemoveContainerRequest, context: grpc.aio.ServicerContext
    ) -> cri.RemoveContainerResponse:
        c = self._known(request.container_id)
        if c is not None:
            await self.ctx.sandboxes.remove_container(c.id)
        return cri.RemoveContainerResponse()

    def _known(self, ref: str) -> CriContainer | None:
        """The container, or None: Stop and Remove of an unknown one succeed."""
        try:
            return self.ctx.sandboxes.get_container(ref)
        except NotFound:
            return None

    def _containers(self, f: cri.ContainerFilter) -> list[cri.Container]:
        return [
            convert.container_summary(c)
            for c in self.ctx.runtime.store.list_of(CriContainer)
            if convert.container_matches(c, f)
        ]

    async def ListContainers(  # noqa: N802
        self, request: cri.ListContainersRequest, context: grpc.aio.ServicerContext
    ) -> cri.ListContainersResponse:
        return cri.ListContainersResponse(containers=self._containers(request.filter))

    async def StreamContainers(  # noqa: N802
        self, request: cri.StreamContainersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cri.StreamContainersResponse]:
        for part in convert.chunks(self._containers(request.filter)):
            yield cri.StreamContainersResponse(containers=part)

    async def ContainerStatus(  # noqa: N802
        self, request: cri.ContainerStatusRequest, context: grpc.aio.ServicerContext
    ) -> cri.ContainerStatusResponse:
        c = self.ctx.sandboxes.get_container(request.container_id)
        return cri.ContainerStatusResponse(
            status=convert.container_status(c),
            info=convert.container_info(c) if request.verbose else {},
        )

    async def UpdateContainerResources(  # noqa: N802
        self, request: cri.UpdateContainerResourcesRequest, context: grpc.aio.ServicerContext
    ) -> cri.UpdateContainerResourcesResponse:
        c = self.ctx.sandboxes.get_container(request.container_id)
        if not request.HasField("linux"):
            return cri.UpdateContainerResourcesResponse()
        await update_container_resources(self.ctx, c.id, request.linux)
        return cri.UpdateContainerResourcesResponse()

    async def CheckpointContainer(  # noqa: N802
        self, request: cri.CheckpointContainerRequest, context: grpc.aio.ServicerContext
    ) -> cri.CheckpointContainerResponse:
        c = self.ctx.sandboxes.get_container(request.container_id)
        await checkpoint_container(self.ctx, c, request.location, float(max(0, request.timeout)))
        return cri.CheckpointContainerResponse()

    async def ReopenContainerLog(  # noqa: N802
        self, request: cri.ReopenContainerLogRequest, context: grpc.aio.ServicerContext
    ) -> cri.ReopenContainerLogResponse:
        c = self.ctx.sandboxes.get_container(request.container_id)
        await self.ctx.runtime.shim(c.id).reopen_log()
        return cri.ReopenContainerLogResponse()

    async def ExecSync(  # noqa: N802
        self, request: cri.ExecSyncRequest, context: grpc.aio.ServicerContext
    ) -> cri.ExecSyncResponse:
        runtime = self.ctx.runtime
        c = self.ctx.sandboxes.get_container(request.container_id)
        if request.timeout < 0:
            raise InvalidArgument("ExecSync timeout must not be negative")
        shim = runtime.shim(c.id)
        process = exec_process(c.spec, list(request.cmd))
        timeout = float(request.timeout) or None
        result = await shim.exec_sync(
            f"sync-{secrets.token_hex(8)}", process, timeout=timeout, max_output=MAX_EXEC_OUTPUT
        )
        if result.timed_out:
            raise DeadlineExceeded(
                f"command {list(request.cmd)[:3]} in {c.id[:12]} timed out after {timeout:g}s"
            )
        return cri.ExecSyncResponse(
            stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code
        )

    # -- events --------------------------------------------------------------

    async def GetContainerEvents(  # noqa: N802
        self, request: cri.GetEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cri.ContainerEventResponse]:
        sub = self.ctx.events.subscribe(*_EVENT_TYPES)
        # Which pod each CRI container belongs to, kept for its delete event
        # (the record is gone by then), and each pod's last status, from the
        # start: the kubelet drops an event whose pod status has no metadata,
        # so a pod deleted later needs it even if nothing else of it was seen.
        records = [
            c for c in self.ctx.runtime.store.list() if isinstance(c, Sandbox | CriContainer)
        ]
        owners: dict[str, str] = {c.id: c.sandbox_id or c.id for c in records}
        pods = {c.id: convert.pod_status(c) for c in records if isinstance(c, Sandbox)}
        try:
            async for event in sub:
                response = self._event_response(event, owners, pods)
                if response is not None:
                    yield response
        finally:
            sub.close()

    def _event_response(
        self, event: Event, owners: dict[str, str], pods: dict[str, cri.PodSandboxStatus]
    ) -> cri.ContainerEventResponse | None:
        store = self.ctx.runtime.store
        cid = event.subject
        record: Container | None = None
        with contextlib.suppress(NotFound):
            record = store.get(cid)
        if record is not None:
            if not isinstance(record, Sandbox | CriContainer):
                return None  # a native-API container, not the kubelet's business
            owners[cid] = record.sandbox_id or record.id
        pod_id = owners.get(cid)
        if pod_id is None:
            return None
        statuses: list[cri.ContainerStatus] = []
        with contextlib.suppress(NotFound):
            sb = store.get_as(pod_id, Sandbox)
            pods[pod_id] = convert.pod_status(sb)
            members = store.list_of(CriContainer, sandbox_id=pod_id)
            statuses = [convert.container_status(c) for c in members]
        pod = pods.get(pod_id) or cri.PodSandboxStatus(id=pod_id)
        if event.topic == "/containers/delete":
            owners.pop(cid, None)
            if cid == pod_id:
                pods.pop(pod_id, None)
                pod.state = cri.SANDBOX_NOTREADY
        return cri.ContainerEventResponse(
            container_id=cid,
            container_event_type=_EVENT_TYPES[event.topic],  # type: ignore[arg-type]
            created_at=event.timestamp_ns,
            pod_sandbox_status=pod,
            containers_statuses=statuses,
        )
