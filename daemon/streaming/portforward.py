"""Kubernetes' port-forward protocol, into a pod's network namespace.

Over SPDY (`portforward.k8s.io`) the client opens two streams per forwarded
connection, both with headers `port` and `requestid`: first `streamtype:
error` (it reads our error text from it, and half-closes its own side at
once), then `streamtype: data` (the connection's bytes both ways). Old
clients without `requestid` are paired by stream id, as the kubelet does.
Over WebSocket the ports are in the URL (`?port=80&port=443` or `port=80,443`);
port i gets data channel 2i and error channel 2i+1, and each channel starts
with the port as two little-endian bytes.

A connection to the port is made from inside the pod's network namespace
(to 127.0.0.1, then ::1): the socket is created on a throwaway thread that
entered the namespace (`netns.run_in`), and sockets keep the namespace they
were born in, so the event loop's thread never changes namespace.

The relay keeps TCP half-closes: the client's FIN on the data stream shuts
our socket's write side, the pod's EOF becomes our FIN. When both directions
are done the error stream is closed, which is what tells the client the
forwarded connection is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pyctr.daemon.pods import netns
from pyctr.daemon.streaming.requests import PortForwardRequest
from pyctr.daemon.streaming.session import SpdySession, SpdyStream, StreamResetError
from pyctr.daemon.streaming.websocket import WsChannels

log = logging.getLogger("pyctr.streaming")

PROTOCOL = "portforward.k8s.io"
WS_PROTOCOLS = {"v4.channel.k8s.io": False, "v4.base64.channel.k8s.io": True, "": False}
DIAL_TIMEOUT = 10.0
READ_SIZE = 256 << 10


class ForwardError(Exception):
    pass


def parse_port(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"unable to parse {text!r} as a port")
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"port {text!r} must be between 1 and 65535")
    return port


async def dial(netns_path: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to localhost:port inside the network namespace."""
    if not netns.is_netns(netns_path):
        raise ForwardError("the pod's network namespace is gone")
    loop = asyncio.get_running_loop()
    errors = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):

        def make(family: socket.AddressFamily = family) -> socket.socket:
            return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)

        try:
            sock = await asyncio.to_thread(netns.run_in, netns_path, make)
        except OSError as e:
            errors.append(f"{host}: {e.strerror or e}")
            continue
        sock.setblocking(False)
        try:
            async with asyncio.timeout(DIAL_TIMEOUT):
                await loop.sock_connect(sock, (host, port))
            return await asyncio.open_connection(sock=sock, limit=READ_SIZE)
        except (OSError, TimeoutError) as e:
            sock.close()
            errors.append(f"{host}: {getattr(e, 'strerror', None) or 'timed out'}")
        except BaseException:
            sock.close()
            raise
    raise ForwardError(f"cannot connect to port {port} in the pod: " + "; ".join(errors))


async def relay(
    read_client: Callable[[], Awaitable[bytes]],
    write_client: Callable[[bytes], Awaitable[None]],
    end_client: Callable[[], Awaitable[None]],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until both directions have ended; closes the socket."""

    async def upstream() -> None:  # client -> pod
        while data := await read_client():
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()

    async def downstream() -> None:  # pod -> client
        while data := await reader.read(READ_SIZE):
            await write_client(data)
        await end_client()

    try:
        up = asyncio.create_task(upstream())
        down = asyncio.create_task(downstream())
        try:
            # Either direction failing (reset, socket error) ends both.
            done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in (up, down):
                task.cancel()
            for task in (up, down):
                with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                    await task
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# -- SPDY -----------------------------------------------------------------------------


@dataclass
class _Pair:
    request_id: str
    error: SpdyStream | None = None
    data: SpdyStream | None = None
    task: asyncio.Task[None] | None = None


class SpdyPortForward:
    def __init__(self, session: SpdySession, req: PortForwardRequest, creation_timeout: float):
        self.session = session
        self.req = req
        self.creation_timeout = creation_timeout
        self._pairs: dict[str, _Pair] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def serve(self) -> None:
        try:
            while (stream := await self.session.accept()) is not None:
                self._on_stream(stream)
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _on_stream(self, stream: SpdyStream) -> None:
        kind = stream.header("streamtype")
        try:
            parse_port(stream.header("port"))
            if kind not in ("error", "data"):
                raise ValueError(f"invalid stream type {kind!r}")
        except ValueError as e:
            log.info("refusing port-forward stream %d: %s", stream.id, e)
            stream.reset()
            return
        stream.reply()
        request_id = stream.header("requestid")
        if not request_id:  # clients before requestID: consecutive odd stream ids
            request_id = str(stream.id if kind == "error" else stream.id - 2)
        pair = self._pairs.get(request_id)
        if pair is None:
            pair = self._pairs[request_id] = _Pair(request_id)
            self._spawn(self._expire(pair))
        if getattr(pair, kind) is not None:
            self._spawn(self._fail(pair, f"{kind} stream already assigned"))
            stream.reset()
            return
        setattr(pair, kind, stream)
        if pair.error is not None and pair.data is not None:
            del self._pairs[request_id]
            self._spawn(self._forward(pair.error, pair.data))

    async def _expire(self, pair: _Pair) -> None:
        await asyncio.sleep(self.creation_timeout)
        if self._pairs.get(pair.request_id) is pair:
            del self._pairs[pair.request_id]
            await self._fail(
                pair, f"timed out waiting for the streams of request {pair.request_id}"
            )
            if pair.data is not None:
                pair.data.reset()

    async def _fail(self, pair: _Pair, message: str) -> None:
        if pair.error is not None:
            with contextlib.suppress(ConnectionError):
                await pair.error.write(message.encode())
                await pair.error.close()

    async def _forward(self, error: SpdyStream, data: SpdyStream) -> None:
        port = parse_port(data.header("port"))
        message = ""
        try:
            if self.req.ports and port not in self.req.ports:
                raise ForwardError(f"port {port} was not requested for forwarding")
            reader, writer = await dial(self.req.netns, port)

            async def read_client() -> bytes:
                try:
                    return await data.read()
                except StreamResetError:
                    raise ConnectionResetError("data stream reset") from None

            await relay(read_client, data.write, data.close, reader, writer)
        except ForwardError as e:
            message = str(e)
        except (ConnectionError, OSError) as e:
            log.debug("port-forward to %d ended: %s", port, e)
        if message:
            text = f"error forwarding port {port} to pod {self.req.sandbox_id}: {message}"
            log.info("%s", text)
            with contextlib.suppress(ConnectionError):
                await error.write(text.encode())
        with contextlib.suppress(ConnectionError):
            await data.close()
            await error.close()


# -- WebSocket ----------------------------------------------------------------------------


def ports_from_query(values: list[str]) -> list[int]:
    ports = [parse_port(p.strip()) for value in values for p in value.split(",")]
    if not ports:
        raise ValueError('query parameter "port" is required')
    return ports


async def serve_websocket(channels: WsChannels, req: PortForwardRequest, ports: list[int]) -> None:
    for i, port in enumerate(ports):
        head = port.to_bytes(2, "little")
        await channels.write(2 * i, head)
        await channels.write(2 * i + 1, head)

    async def forward(i: int, port: int) -> None:
        message = ""
        try:
            if req.ports and port not in req.ports:
                raise ForwardError(f"port {port} was not requested for forwarding")
            reader, writer = await dial(req.netns, port)

            async def write_client(data: bytes) -> None:
                await channels.write(2 * i, data)

            async def end_client() -> None:
                pass  # the channel protocol has no half-close toward the client

            await relay(lambda: channels.read(2 * i), write_client, end_client, reader, writer)
        except ForwardError as e:
            message = str(e)
        except (ConnectionError, OSError) as e:
            log.debug("port-forward to %d ended: %s", port, e)
        if message:
            text = f"error forwarding port {port} to pod {req.sandbox_id}: {message}"
            with contextlib.suppress(ConnectionError):
                await channels.write(2 * i + 1, text.encode())

    tasks = [asyncio.create_task(forward(i, port)) for i, port in enumerate(ports)]
    everything = asyncio.gather(*tasks)
    gone = asyncio.create_task(channels.closed.wait())
    try:
        # Until every port is done, or the client hangs up.
        either: set[asyncio.Future[Any]] = {gone, everything}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (*tasks, gone):
            task.cancel()
        for fut in (everything, gone):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await fut
        await channels.close()
