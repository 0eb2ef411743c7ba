"""CRI `runtime.v1.RuntimeService`: a thin layer over the daemon's managers.

The service is assembled from one mixin per group of calls, each in its own
module (as CRI-O keeps one file per call): pod sandboxes, containers,
streaming, and the runtime-wide calls below. Each handler translates the CRI
message to a call on a manager and back; the work lives elsewhere. RPCs no
mixin implements fall through to the generated base class, which the
server's interceptor answers as UNIMPLEMENTED with the method's name.
"""

from __future__ import annotations

import grpc

from pyctr.daemon.context import Context
from pyctr.daemon.cri.containers import ContainerRpcs
from pyctr.daemon.cri.metrics import MetricsRpcs
from pyctr.daemon.cri.sandbox import SandboxRpcs
from pyctr.daemon.cri.stats import StatsRpcs
from pyctr.daemon.cri.streaming import StreamingRpcs
from pyctr.daemon.runtime.handlers import Handlers, handler_info
from pyctr.daemon.version import CRI_API_VERSION, RUNTIME_NAME, VERSION
from pyctr.proto import cri_pb2 as cri
from pyctr.proto import cri_pb2_grpc


def runtime_handlers(handlers: Handlers) -> list[cri.RuntimeHandler]:
    """Each handler a pod can run on here ("" is the default), with what it
    supports: the kubelet shows them in the node's status and refuses pods
    needing what their handler lacks."""
    out = []
    for h in handlers.usable:
        features = cri.RuntimeHandlerFeatures(
            recursive_read_only_mounts=h.rro.on, user_namespaces=h.userns.on
        )
        names = [""] if h.name == handlers.default else []
        out += [cri.RuntimeHandler(name=n, features=features) for n in [*names, h.name]]
    return out


class RuntimeRpcs:
    """Version, Status and the other runtime-wide calls."""

    ctx: Context

    async def Version(  # noqa: N802 (gRPC method names)
        self, request: cri.VersionRequest, context: grpc.aio.ServicerContext
    ) -> cri.VersionResponse:
        return cri.VersionResponse(
            version="0.1.0",  # the CRI's own "kubelet API version" field
            runtime_name=RUNTIME_NAME,
            runtime_version=VERSION,
            runtime_api_version=CRI_API_VERSION,
        )

    async def Status(  # noqa: N802
        self, request: cri.StatusRequest, context: grpc.aio.ServicerContext
    ) -> cri.StatusResponse:
        runtime_ready = cri.RuntimeCondition(type="RuntimeReady", status=True)
        handlers = self.ctx.handlers
        default = handlers.by_name[handlers.default]
        if not default.usable:
            runtime_ready.status = False
            runtime_ready.reason = "RuncNotFound" if default.path is None else "RuntimeUnusable"
            runtime_ready.message = f"default runtime handler {default.name!r}: {default.unusable}"
        network_ready = self._network_condition()
        info: dict[str, str] = {}
        if request.verbose:
            import json

            info["config"] = json.dumps(
                {
                    "runc": self.ctx.runc_path,
                    "defaultRuntime": handlers.default,
                    "runtimes": {h.name: handler_info(h) for h in handlers.by_name.values()},
                    "cgroup": self.ctx.cgroups.version,
                    "cgroupDriver": self.ctx.cgroups.driver,
                    "apparmor": {
                        "enabled": self.ctx.apparmor.enabled,
                        "defaultProfileLoaded": self.ctx.apparmor.default_loaded,
                        "reason": self.ctx.apparmor.reason,
                    },
                }
            )
        return cri.StatusResponse(
            status=cri.RuntimeStatus(conditions=[runtime_ready, network_ready]),
            info=info,
            runtime_handlers=runtime_handlers(handlers),
            # Strict supplemental groups are honoured; the kubelet (1.33+)
            # refuses Strict pods on a node whose runtime does not say so.
            features=cri.RuntimeFeatures(supplemental_groups_policy=True),
        )

    def _network_condition(self) -> cri.RuntimeCondition:
        ready, message = self.ctx.sandboxes.cni.status()
        if not ready:
            return cri.RuntimeCondition(
                type="NetworkReady", status=False, reason="NetworkPluginNotReady", message=message
            )
        return cri.RuntimeCondition(type="NetworkReady", status=True)


# Mixins, one line each; earlier ones win where names overlap (none should).
class RuntimeService(
    RuntimeRpcs,
    SandboxRpcs,
    ContainerRpcs,
    StatsRpcs,
    MetricsRpcs,
    StreamingRpcs,
    cri_pb2_grpc.RuntimeServiceServicer,
):
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
