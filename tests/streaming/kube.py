"""What kubectl / crictl do with a streaming URL, for the tests.

Over SPDY: the streams client-go's remotecommand opens (error first, then
stdin, stdout, stderr, and resize with a tty), each with a `streamType`
header, each waited on for its SYN_REPLY. Over WebSocket: aiohttp's client
with the channel framing of Kubernetes' wsstream.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.streaming.spdyclient import SpdyClient

V4 = "v4.channel.k8s.io"
V5 = "v5.channel.k8s.io"
CLIENT_GO_PROTOCOLS = [V4, "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"]


@dataclass
class Result:
    protocol: str
    stdout: bytes = b""
    stderr: bytes = b""
    error: bytes = b""  # the error stream, raw
    frames: list[Any] = field(default_factory=list)

    @property
    def status(self) -> dict[str, Any]:
        return json.loads(self.error)


async def open_command_streams(
    client: SpdyClient, *, stdin: bool, stdout: bool, stderr: bool, tty: bool, protocol: str
) -> dict[str, int]:
    ids = {"error": await client.open_stream({"streamType": "error"})}
    for name, on in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr and not tty)):
        if on:
            ids[name] = await client.open_stream({"streamType": name})
    if tty and protocol not in ("v2.channel.k8s.io", "channel.k8s.io"):
        ids["resize"] = await client.open_stream({"streamType": "resize"})
    return ids


async def spdy_command(
    url: str,
    *,
    stdin: bytes | None = None,
    stdout: bool = True,
    stderr: bool = True,
    tty: bool = False,
    protocols: list[str] | None = None,
    flow_control: int = 0,
    netns_path: str | None = None,
) -> Result:
    client, protocol = await SpdyClient.connect(
        url, protocols or CLIENT_GO_PROTOCOLS, flow_control=flow_control, netns_path=netns_path
    )
    try:
        ids = await open_command_streams(
            client, stdin=stdin is not None, stdout=stdout, stderr=stderr, tty=tty,
            protocol=protocol,
        )  # fmt: skip
        if stdin is not None:
            await client.send(ids["stdin"], stdin, fin=True)
        result = Result(protocol)
        if "stdout" in ids:
            result.stdout = await client.read_until_fin(ids["stdout"])
        if "stderr" in ids:
            result.stderr = await client.read_until_fin(ids["stderr"])
        result.error = await client.read_until_fin(ids["error"])
        result.frames = client.frames
        assert not client.window_violations, client.window_violations
        return result
    finally:
        await client.close()


class WsClient:
    """A WebSocket channel client (binary or base64 framing)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession):
        self.ws, self.session = ws, session
        self.protocol = ws.protocol or ""
        self.b64 = "base64" in self.protocol
        self.channels: dict[int, bytearray] = {}
        self.messages: list[tuple[int, bytes]] = []

    @classmethod
    async def connect(cls, url: str, protocols: list[str]) -> WsClient:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(url, protocols=protocols, autoclose=False)
        except BaseException:
            await session.close()
            raise
        return cls(ws, session)

    async def send(self, channel: int, data: bytes) -> None:
        if self.b64:
            await self.ws.send_str(chr(48 + channel) + base64.b64encode(data).decode())
        else:
            await self.ws.send_bytes(bytes([channel]) + data)

    async def receive(self, timeout: float = 30) -> tuple[int, bytes] | None:
        msg = await self.ws.receive(timeout)
        if msg.type == aiohttp.WSMsgType.BINARY:
            item = (msg.data[0], msg.data[1:])
        elif msg.type == aiohttp.WSMsgType.TEXT:
            item = (ord(msg.data[0]) - 48, base64.b64decode(msg.data[1:]))
        else:
            return None
        self.messages.append(item)
        self.channels.setdefault(item[0], bytearray()).extend(item[1])
        return item

    async def until_closed(self, timeout: float = 30) -> dict[int, bytes]:
        async with asyncio.timeout(timeout):
            while await self.receive() is not None:
                pass
        return {k: bytes(v) for k, v in self.channels.items()}

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()
