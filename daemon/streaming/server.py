"""The streaming server: the HTTP endpoint CRI Exec/Attach/PortForward URLs point at.

    server = StreamingServer(config.cri.streaming, backend)
    await server.start()
    url = server.url_for(ExecRequest(...))    # what the CRI call returns
    ...
    await server.stop()

Routes are `/exec/{token}`, `/attach/{token}` and `/portforward/{token}`
(GET or POST, as clients use either). The token is consumed before anything
else is looked at, so a URL works once even when the upgrade then fails. A
request is served over SPDY/3.1 (`Upgrade: SPDY/3.1` with
`X-Stream-Protocol-Version` negotiation, as client-go's SPDY round-tripper
sends it) or over WebSocket (`Sec-WebSocket-Protocol` negotiation).

aiohttp parses the request and writes the 101 response; for SPDY, which
aiohttp knows nothing about, the connection's transport is then given a
`SpdySession` as its protocol (`transport.set_protocol`, plain asyncio) and
aiohttp's protocol is told when the connection is finally lost, so its own
bookkeeping stays right. The request handler lives as long as the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from multidict import CIMultiDict

from pyctr.daemon.config import Streaming
from pyctr.daemon.errors import PyctrError
from pyctr.daemon.streaming import portforward, remotecommand
from pyctr.daemon.streaming.remotecommand import (
    SpdyCommandIO,
    Started,
    WsCommandIO,
    internal_error,
    run_command,
)
from pyctr.daemon.streaming.requests import (
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    StreamRequest,
    TokenCache,
)
from pyctr.daemon.streaming.session import SpdySession
from pyctr.daemon.streaming.websocket import WsChannels, parse_protocols

log = logging.getLogger("pyctr.streaming")

SPDY_UPGRADE = "SPDY/3.1"
PROTOCOL_HEADER = "X-Stream-Protocol-Version"
ACCEPTED_HEADER = "X-Accepted-Stream-Protocol-Versions"
MAX_WS_MESSAGE = 16 << 20


class Backend(Protocol):
    """What the server needs from the runtime, resolved when the client arrives."""

    async def start_exec(self, req: ExecRequest) -> Started: ...

    async def attach(self, req: AttachRequest) -> Started: ...


def _text(status: int, message: str, headers: dict[str, Any] | None = None) -> web.Response:
    return web.Response(status=status, text=message.rstrip("\n") + "\n", headers=headers)


def is_websocket(request: web.BaseRequest) -> bool:
    connection = request.headers.get("Connection", "").lower()
    return request.headers.get("Upgrade", "").lower() == "websocket" and "upgrade" in (
        t.strip() for t in connection.split(",")
    )


class StreamingServer:
    def __init__(self, config: Streaming, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.cache = TokenCache(config.token_ttl)
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._active: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 16)
        app.router.add_route("*", r"/{kind:exec|attach|portforward}/{token}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.config.address, self.config.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise OSError(
                e.errno,
                f"streaming server cannot listen on {self.config.address}:{self.config.port}: "
                f"{e.strerror}",
            ) from None
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.base_url = f"http://{_url_host(host)}:{port}"
        log.info("streaming server listening on %s", self.base_url)

    async def stop(self) -> None:
        """Close every session (killing their execs), then the listener."""
        for task in list(self._active):
            task.cancel()
        for task in list(self._active):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url_for(self, request: StreamRequest) -> str:
        """A fresh single-use URL for `request` (ResourceExhausted when too many wait)."""
        token = self.cache.insert(request)
        return f"{self.base_url}/{request.kind}/{token}"

    # -- requests --------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        req = self.cache.consume(request.match_info["token"])
        if req is None or req.kind != request.match_info["kind"]:
            return _text(404, "streaming URL not found: unknown, used or expired token")
        task = asyncio.current_task()
        assert task is not None
        self._active.add(task)
        try:
            if is_websocket(request):
                return await self._websocket(request, req)
            return await self._spdy(request, req)
        finally:
            self._active.discard(task)

    async def _spdy(self, request: web.Request, req: StreamRequest) -> web.StreamResponse:
        offered = [
            p.strip()
            for value in request.headers.getall(PROTOCOL_HEADER, [])
            for p in value.split(",")
            if p.strip()
        ]
        supported = (
            (portforward.PROTOCOL,)
            if isinstance(req, PortForwardRequest)
            else remotecommand.SPDY_PROTOCOLS
        )
        if not offered:
            return _text(400, f"unable to upgrade: {PROTOCOL_HEADER} is required")
        chosen = next((p for p in offered if p in supported), None)
        if chosen is None:
            headers = CIMultiDict((ACCEPTED_HEADER, p) for p in supported)
            message = (
                f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                f"server accepts {list(supported)}"
            )
            return web.Response(status=403, text=message + "\n", headers=headers)
        connection = request.headers.get("Connection", "").lower()
        if "upgrade" not in connection or SPDY_UPGRADE.lower() not in (
            request.headers.get("Upgrade", "").lower()
        ):
            return _text(400, "unable to upgrade: missing upgrade headers in request")
        transport = request.transport
        if transport is None:
            return _text(400, "connection lost")
        response = web.StreamResponse(
            status=101,
            headers={"Connection": "Upgrade", "Upgrade": SPDY_UPGRADE, PROTOCOL_HEADER: chosen},
        )
        await response.prepare(request)
        session = SpdySession(transport, on_lost=request.protocol.connection_lost)
        transport.set_protocol(session)
        watchdog = asyncio.create_task(self._idle_watch(lambda: session.last_activity))
        try:
            if isinstance(req, PortForwardRequest):
                pf = portforward.SpdyPortForward(session, req, self.config.stream_creation_timeout)
                serve = asyncio.create_task(pf.serve())
                await asyncio.wait({serve, watchdog}, return_when=asyncio.FIRST_COMPLETED)
                serve.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serve
                await session.close()
            else:
                io = SpdyCommandIO(session, chosen, req)
                if not await io.wait_for_streams(self.config.stream_creation_timeout):
                    await session.close()
                    return response
                await self._command(io, req, watchdog)
        finally:
            watchdog.cancel()
            if not session.dead:
                session.abort()
        return response

    async def _websocket(self, request: web.Request, req: StreamRequest) -> web.StreamResponse:
        offered = parse_protocols(request.headers.get("Sec-WebSocket-Protocol", ""))
        table = (
            portforward.WS_PROTOCOLS
            if isinstance(req, PortForwardRequest)
            else remotecommand.WS_PROTOCOLS
        )
        chosen = next((p for p in offered if p in table), None) if offered else ""
        if chosen is None:
            return _text(
                403,
                f"requested protocol(s) are not supported: {offered}; "
                f"supports {[p for p in table if p]}",
            )
        ports: list[int] = []
        if isinstance(req, PortForwardRequest):
            try:
                ports = portforward.ports_from_query(request.query.getall("port", []))
            except ValueError as e:
                return _text(400, str(e))
            readable = {2 * i for i in range(len(ports))}
        else:
            readable = {remotecommand.STDIN, remotecommand.RESIZE}
        ws = web.WebSocketResponse(
            protocols=(chosen,) if chosen else (),
            compress=False,
            max_msg_size=MAX_WS_MESSAGE,
            autoping=True,
        )
        if not ws.can_prepare(request).ok:
            return _text(400, "unable to upgrade: not a valid WebSocket request")
        await ws.prepare(request)
        channels = WsChannels(
            ws,
            base64=table[chosen],
            close_signal=chosen == remotecommand.V5,
            readable=readable,
        )
        watchdog = asyncio.create_task(self._idle_watch(lambda: channels.last_activity))
        try:
            if isinstance(req, PortForwardRequest):
                serve = asyncio.create_task(portforward.serve_websocket(channels, req, ports))
                await asyncio.wait({serve, watchdog}, return_when=asyncio.FIRST_COMPLETED)
                serve.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serve
            else:
                io = WsCommandIO(channels, chosen, req)
                await io.start()
                await self._command(io, req, watchdog)
        except ConnectionError as e:
            log.debug("WebSocket session ended: %s", e)
        finally:
            watchdog.cancel()
            await channels.close()
        return ws

    async def _command(
        self,
        io: remotecommand.CommandIO,
        req: ExecRequest | AttachRequest,
        watchdog: asyncio.Task[None],
    ) -> None:
        what = "executing command in" if isinstance(req, ExecRequest) else "attaching to"
        try:
            if isinstance(req, ExecRequest):
                started = await self.backend.start_exec(req)
            else:
                started = await self.backend.attach(req)
        except PyctrError as e:
            log.info("streaming: error %s container %s: %s", what, req.container_id[:12], e)
            await io.finish(internal_error(f"error {what} container: {e}"))
            return
        relay = asyncio.create_task(run_command(io, started))
        status = None
        try:
            await asyncio.wait({relay, watchdog}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not relay.done():  # idle for too long (or we are shutting down)
                relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                status = await relay
        if status is None:
            await io.abort()
        else:
            await io.finish(status)

    async def _idle_watch(self, last_activity: Callable[[], float]) -> None:
        """Returns once the connection has been idle for idle_timeout seconds."""
        idle = self.config.idle_timeout
        if idle <= 0:
            await asyncio.Event().wait()
        loop = asyncio.get_running_loop()
        while (left := last_activity() + idle - loop.time()) > 0:
            await asyncio.sleep(min(left, 30.0) + 0.01)
        log.info("closing a streaming connection idle for %gs", idle)


def _url_host(host: str) -> str:
    """The host part of our URLs: a concrete address, IPv6 in brackets."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.is_unspecified:
        # Bound to all addresses: name one the kubelet can reach, this node's own.
        with contextlib.suppress(OSError):
            ip = ipaddress.ip_address(socket.gethostbyname(socket.gethostname()))
        if ip.is_unspecified:
            ip = ipaddress.ip_address("127.0.0.1")
    return f"[{ip}]" if ip.version == 6 else str(ip)
