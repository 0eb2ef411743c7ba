"""Port-forward into a network namespace, over SPDY and WebSocket.

The "pod" is a network namespace made with pyctr's netns helpers, with
servers listening on its loopback only: sockets made inside it by
netns.run_in and served by this event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyctr.daemon.pods import netns
from pyctr.daemon.streaming.requests import PortForwardRequest
from pyctr.daemon.streaming.server import StreamingServer
from tests.conftest import new_base, safe_rmtree
from tests.streaming.kube import WsClient
from tests.streaming.spdyclient import SpdyClient

pytestmark = pytest.mark.root

PF = "portforward.k8s.io"
ECHO, SHOUT = 8080, 9090


class Pod:
    def __init__(self, path: Path) -> None:
        self.netns = str(path)
        self.servers: list[asyncio.AbstractServer] = []

    async def listen(self, port: int, handler: object) -> None:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(16)
            return s

        sock = await asyncio.to_thread(netns.run_in, self.netns, make)
        self.servers.append(await asyncio.start_server(handler, sock=sock))  # type: ignore[arg-type]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def shout(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write((await reader.read()).upper())
    await writer.drain()
    writer.close()


@pytest.fixture
async def pod() -> AsyncIterator[Pod]:
    base = new_base("pf")
    path = netns.create(base / "netns")
    p = Pod(path)
    try:
        await p.listen(ECHO, echo)
        await p.listen(SHOUT, shout)
        yield p
    finally:
        for s in p.servers:
            s.close()
            await s.wait_closed()
        netns.remove(path)
        safe_rmtree(base)


def pf_url(server: StreamingServer, pod: Pod, ports: tuple[int, ...] = ()) -> str:
    return server.url_for(PortForwardRequest("pod-1234", pod.netns, ports))


async def forward(
    client: SpdyClient, port: int, request_id: int, payload: bytes
) -> tuple[bytes, bytes]:
    """One forwarded connection, the way client-go's portforward opens it."""
    headers = {"port": str(port), "requestID": str(request_id)}
    error = await client.open_stream({**headers, "streamType": "error"})
    await client.close_stream(error)  # client-go: "we're not writing to this stream"
    data = await client.open_stream({**headers, "streamType": "data"})

    async def upload() -> None:
        for i in range(0, len(payload), 65536):
            await client.send(data, payload[i : i + 65536])
        await client.close_stream(data)

    up = asyncio.create_task(upload())
    received = await client.read_until_fin(data, timeout=60)
    await up
    return received, await client.read_until_fin(error)


async def test_ten_megabytes_both_ways_and_several_connections(
    server: StreamingServer, pod: Pod
) -> None:
    client, protocol = await SpdyClient.connect(pf_url(server, pod), [PF])
    assert protocol == PF
    try:
        big = os.urandom(10 << 20)
        results = await asyncio.gather(
            forward(client, ECHO, 0, big),
            forward(client, SHOUT, 1, b"hello pod"),
            forward(client, ECHO, 2, b"second connection"),
        )
        (echoed, err0), (shouted, err1), (small, err2) = results
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(big).digest()
        assert shouted == b"HELLO POD" and small == b"second connection"
        assert err0 == err1 == err2 == b""
    finally:
        await client.close()


async def test_closed_port_and_unrequested_port_report_errors(
    server: StreamingServer, pod: Pod
) -> None:
    client, _ = await SpdyClient.connect(pf_url(server, pod, ports=(ECHO, 7)), [PF])
    try:
        data, error = await forward(client, 7, 0, b"anyone?")
        assert data == b""
        assert error.startswith(b"error forwarding port 7 to pod pod-1234: cannot connect")
        data, error = await forward(client, SHOUT, 1, b"x")
        assert b"port 9090 was not requested" in error
        # The session survives both: a good connection still works.
        data, error = await forward(client, ECHO, 2, b"still here")
        assert (data, error) == (b"still here", b"")
    finally:
        await client.close()


async def test_old_clients_without_request_ids_and_bad_headers(
    server: StreamingServer, pod: Pod
) -> None:
    client, _ = await SpdyClient.connect(pf_url(server, pod), [PF])
    try:
        # Before requestID, a pair was an error stream and the next stream (id + 2).
        error = await client.open_stream({"port": str(ECHO), "streamType": "error"})
        data = await client.open_stream({"port": str(ECHO), "streamType": "data"})
        await client.send(data, b"legacy", fin=True)
        assert await client.read_until_fin(data) == b"legacy"
        assert await client.read_until_fin(error) == b""
        # A stream without a valid port or type is refused with RST_STREAM.
        for headers in ({"streamType": "data"}, {"port": "0", "streamType": "data"},
                        {"port": "80", "streamType": "bogus"}):  # fmt: skip
            with pytest.raises(ConnectionError, match="refused"):
                await client.open_stream(headers)
    finally:
        await client.close()


async def test_websocket_port_forward(server: StreamingServer, pod: Pod) -> None:
    url = pf_url(server, pod) + f"?port={ECHO}&port={SHOUT}"
    ws = await WsClient.connect(url, ["v4.channel.k8s.io"])
    try:
        head = [await ws.receive() for _ in range(4)]
        # Each channel first says its port, little-endian.
        assert sorted(head) == sorted(
            [(0, ECHO.to_bytes(2, "little")), (1, ECHO.to_bytes(2, "little")),
             (2, SHOUT.to_bytes(2, "little")), (3, SHOUT.to_bytes(2, "little"))]
        )  # fmt: skip
        await ws.send(0, b"ping over ws")
        await ws.send(2, b"quiet")
        async with asyncio.timeout(10):
            while ws.channels.get(0, b"") != bytearray(
                ECHO.to_bytes(2, "little") + b"ping over ws"
            ):
                await ws.receive()
    finally:
        await ws.close()


async def test_websocket_port_forward_needs_ports(server: StreamingServer, pod: Pod) -> None:
    with pytest.raises(Exception, match="400"):
        await WsClient.connect(pf_url(server, pod), ["v4.channel.k8s.io"])
