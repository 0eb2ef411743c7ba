"""pyctr.v1.System: version and host information for `pyctr version|info`."""

from __future__ import annotations

import os
import platform

import grpc

from pyctr.daemon import config, host
from pyctr.daemon.context import Context
from pyctr.daemon.runtime.handlers import info_features
from pyctr.daemon.version import CRI_API_VERSION, NATIVE_API_VERSION, VERSION
from pyctr.proto import system_pb2 as pb
from pyctr.proto import system_pb2_grpc


class SystemService(system_pb2_grpc.SystemServicer):
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def Version(  # noqa: N802 (gRPC method names)
        self, request: pb.VersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.VersionResponse:
        return pb.VersionResponse(
            version=VERSION,
            cri_api_version=CRI_API_VERSION,
            api_version=NATIVE_API_VERSION,
            python=f"{platform.python_implementation()} {platform.python_version()}",
        )

    async def Info(  # noqa: N802
        self, request: pb.InfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.InfoResponse:
        cfg = self.ctx.config
        return pb.InfoResponse(
            root=cfg.root,
            state=cfg.state,
            address=cfg.address,
            config_file=str(self.ctx.config_file or ""),
            config_toml=config.render(cfg),
            runc_path=self.ctx.runc_path or "",
            runc_version=host.runc_version(self.ctx.runc_path),
            kernel=platform.release(),
            features=[
                pb.Feature(name=f.name, value=f.value, detail=f.detail)
                for f in host.features(cfg.cri.cni.conf_dir, cfg.cri.cni.bin_dir, self.ctx.cgroups)
            ]
            + [
                pb.Feature(
                    name="apparmor",
                    value="yes" if self.ctx.apparmor.enabled else "no",
                    detail=self.ctx.apparmor.reason,
                )
            ]
            + [nri_feature(self.ctx)]
            + [
                pb.Feature(name=name, value=value, detail=detail)
                for name, value, detail in info_features(self.ctx.handlers)
            ],
            pid=os.getpid(),
            started_at=self.ctx.started_at_ns,
        )

    async def ListNriPlugins(  # noqa: N802
        self, request: pb.ListNriPluginsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListNriPluginsResponse:
        info = self.ctx.nri.info()
        return pb.ListNriPluginsResponse(
            enabled=info["enabled"],
            socket=info["socket"],
            plugins=[pb.NriPlugin(**p) for p in info["plugins"]],
            missing=info["missing"],
            socket_error=info["socket_error"],
        )


def nri_feature(ctx: Context) -> pb.Feature:
    info = ctx.nri.info()
    if not info["enabled"]:
        return pb.Feature(name="nri", value="no", detail="disabled in the config ([nri] enable)")
    names = [f"{p['index']}-{p['name']}" for p in info["plugins"] if p["synchronized"]]
    if info["socket"]:
        where = f"socket {info['socket']}"
    else:
        where = f"no socket: {info['socket_error'] or 'disable_connections'}"
    detail = f"{where}; plugins: {', '.join(names) or 'none'}"
    if info["missing"]:
        detail += f"; required, not connected: {', '.join(info['missing'])}"
    return pb.Feature(name="nri", value="yes", detail=detail)
