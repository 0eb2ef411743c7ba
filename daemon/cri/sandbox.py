"""CRI pod sandbox calls, over `SandboxManager` (ctx.sandboxes).

Unknown IDs: PodSandboxStatus answers NOT_FOUND (the kubelet reads it as
"gone"); StopPodSandbox and RemovePodSandbox succeed, since the CRI makes
them idempotent and critest calls them with unknown IDs (containerd 2 does
the same). A unique ID prefix works wherever an ID does. Also here: the
runtime settings the kubelet pushes (UpdateRuntimeConfig) and reads
(RuntimeConfig).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from pyctr.daemon.context import Context
from pyctr.daemon.cri import convert
from pyctr.daemon.errors import InvalidArgument, NotFound
from pyctr.daemon.runtime.records import CriContainer, Sandbox
from pyctr.daemon.spec.cri import oci_resources
from pyctr.proto import cri_pb2 as cri

log = logging.getLogger(__name__)


class SandboxRpcs:
    ctx: Context

    async def RunPodSandbox(  # noqa: N802 (gRPC method names)
        self, request: cri.RunPodSandboxRequest, context: grpc.aio.ServicerContext
    ) -> cri.RunPodSandboxResponse:
        if not request.HasField("config") or not request.config.HasField("metadata"):
            raise InvalidArgument("RunPodSandbox: config.metadata is required")
        sb = await self.ctx.sandboxes.run(request.config, request.runtime_handler)
        return cri.RunPodSandboxResponse(pod_sandbox_id=sb.id)

    async def StopPodSandbox(  # noqa: N802
        self, request: cri.StopPodSandboxRequest, context: grpc.aio.ServicerContext
    ) -> cri.StopPodSandboxResponse:
        with contextlib.suppress(NotFound):  # nothing left to stop
            await self.ctx.sandboxes.stop(request.pod_sandbox_id)
        return cri.StopPodSandboxResponse()

    async def RemovePodSandbox(  # noqa: N802
        self, request: cri.RemovePodSandboxRequest, context: grpc.aio.ServicerContext
    ) -> cri.RemovePodSandboxResponse:
        await self.ctx.sandboxes.remove(request.pod_sandbox_id)
        return cri.RemovePodSandboxResponse()

    async def PodSandboxStatus(  # noqa: N802
        self, request: cri.PodSandboxStatusRequest, context: grpc.aio.ServicerContext
    ) -> cri.PodSandboxStatusResponse:
        sandboxes = self.ctx.sandboxes
        sb = sandboxes.get(request.pod_sandbox_id)
        containers = sandboxes.store.list_of(CriContainer, sandbox_id=sb.id)
        return cri.PodSandboxStatusResponse(
            status=convert.pod_status(sb),
            info=convert.pod_info(sb) if request.verbose else {},
            containers_statuses=[convert.container_status(c) for c in containers],
            timestamp=convert.now_ns(),
        )

    def _pods(self, f: cri.PodSandboxFilter) -> list[cri.PodSandbox]:
        creating = self.ctx.sandboxes.creating  # listed once RunPodSandbox is done
        return [
            convert.pod_summary(sb)
            for sb in self.ctx.sandboxes.store.list_of(Sandbox)
            if sb.id not in creating and convert.pod_matches(sb, f)
        ]

    async def ListPodSandbox(  # noqa: N802
        self, request: cri.ListPodSandboxRequest, context: grpc.aio.ServicerContext
    ) -> cri.ListPodSandboxResponse:
        return cri.ListPodSandboxResponse(items=self._pods(request.filter))

    async def StreamPodSandboxes(  # noqa: N802
        self, request: cri.StreamPodSandboxesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cri.StreamPodSandboxesResponse]:
        for part in convert.chunks(self._pods(request.filter)):
            yield cri.StreamPodSandboxesResponse(pod_sandboxes=part)

    async def UpdatePodSandboxResources(  # noqa: N802
        self, request: cri.UpdatePodSandboxResourcesRequest, context: grpc.aio.ServicerContext
    ) -> cri.UpdatePodSandboxResourcesResponse:
        # The kubelet owns and has already resized the pod cgroup; the
        # runtime tells NRI plugins, which may refuse.
        sb = self.ctx.sandboxes.get(request.pod_sandbox_id)
        v2 = self.ctx.cgroups.v2
        overhead = oci_resources(request.overhead, v2) if request.HasField("overhead") else {}
        resources = oci_resources(request.resources, v2) if request.HasField("resources") else {}
        await self.ctx.nri.update_pod(sb, overhead, resources)
        await self.ctx.nri.post_update_pod(sb)
        return cri.UpdatePodSandboxResourcesResponse()

    # -- runtime settings ----------------------------------------------------

    async def UpdateRuntimeConfig(  # noqa: N802
        self, request: cri.UpdateRuntimeConfigRequest, context: grpc.aio.ServicerContext
    ) -> cri.UpdateRuntimeConfigResponse:
        cidr = request.runtime_config.network_config.pod_cidr
        if cidr and cidr != self.ctx.sandboxes.pod_cidr:
            # The CNI config decides pod addresses; the CIDR is kept for Status.
            log.info("kubelet set the pod CIDR to %s", cidr)
            self.ctx.sandboxes.pod_cidr = cidr
        return cri.UpdateRuntimeConfigResponse()

    async def RuntimeConfig(  # noqa: N802
        self, request: cri.RuntimeConfigRequest, context: grpc.aio.ServicerContext
    ) -> cri.RuntimeConfigResponse:
        driver = cri.SYSTEMD if self.ctx.cgroups.systemd else cri.CGROUPFS
        return cri.RuntimeConfigResponse(
            linux=cri.LinuxRuntimeConfiguration(cgroup_driver=driver)  # type: ignore[arg-type]
        )
