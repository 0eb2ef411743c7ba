"""CRI Exec, Attach and PortForward: validate, then hand out a streaming URL.

The calls themselves stream nothing. They check the request the way the CRI
describes it (the container exists and runs; an exec has a command; tty and
stderr are not both asked for, since a terminal has one output; at least one
of stdin, stdout and stderr), remember it under a single-use token, and
return the streaming server's URL for it. The kubelet's client (or crictl)
then connects there; see pyctr.daemon.streaming.
"""

from __future__ import annotations

from typing import Any

import grpc

from pyctr.daemon.context import Context
from pyctr.daemon.errors import FailedPrecondition, InvalidArgument, Unavailable
from pyctr.daemon.streaming.requests import AttachRequest, ExecRequest, PortForwardRequest
from pyctr.daemon.streaming.server import StreamingServer
from pyctr.proto import cri_pb2 as cri

# A pod on the node's network: its ports are the daemon's own netns's.
HOST_NETNS = "/proc/self/ns/net"


def _check_stdio(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> None:
    if tty and stderr:
        raise InvalidArgument("tty and stderr cannot both be true: a terminal has one output")
    if not (stdin or stdout or stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be true")


class StreamingRpcs:
    ctx: Context

    def _streaming(self) -> StreamingServer:
        server = self.ctx.streaming
        if server is None:
            raise Unavailable("the streaming server is not running")
        return server  # type: ignore[no-any-return]

    async def Exec(  # noqa: N802 (gRPC method names)
        self, request: cri.ExecRequest, context: grpc.aio.ServicerContext
    ) -> cri.ExecResponse:
        c = self.ctx.sandboxes.get_container(request.container_id)
        if not request.cmd or not request.cmd[0]:
            raise InvalidArgument("exec needs a command: cmd is empty")
        url = self._stdio_url(c.id, request, ExecRequest, cmd=tuple(request.cmd))
        return cri.ExecResponse(url=url)

    async def Attach(  # noqa: N802
        self, request: cri.AttachRequest, context: grpc.aio.ServicerContext
    ) -> cri.AttachResponse:
        c = self.ctx.sandboxes.get_container(request.container_id)
        return cri.AttachResponse(url=self._stdio_url(c.id, request, AttachRequest))

    def _stdio_url(
        self, cid: str, request: Any, kind: type[ExecRequest | AttachRequest], **extra: Any
    ) -> str:
        """The streaming URL of an exec or attach (`kind`) on running container `cid`."""
        _check_stdio(request.stdin, request.stdout, request.stderr, request.tty)
        self.ctx.runtime.shim(cid)  # FailedPrecondition unless it runs
        req = kind(
            container_id=cid,
            tty=request.tty,
            stdin=request.stdin,
            stdout=request.stdout,
            stderr=request.stderr,
            **extra,
        )
        return self._streaming().url_for(req)

    async def PortForward(  # noqa: N802
        self, request: cri.PortForwardRequest, context: grpc.aio.ServicerContext
    ) -> cri.PortForwardResponse:
        sb = self.ctx.sandboxes.get(request.pod_sandbox_id)
        if not sb.ready:
            raise FailedPrecondition(f"pod sandbox {sb.id[:12]} is not ready")
        for port in request.port:
            if not 0 < port < 65536:
                raise InvalidArgument(f"invalid port {port}: must be between 1 and 65535")
        view = self.ctx.sandboxes.view(sb)
        netns = HOST_NETNS if view.host_network else view.netns
        if not netns:
            raise FailedPrecondition(f"pod sandbox {sb.id[:12]} has no network namespace")
        req = PortForwardRequest(sandbox_id=sb.id, netns=netns, ports=tuple(request.port))
        return cri.PortForwardResponse(url=self._streaming().url_for(req))
