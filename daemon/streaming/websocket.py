"""Kubernetes' channel framing over a WebSocket (aiohttp does the WebSocket).

Each message carries one channel's bytes behind a channel number: a leading
byte for the binary protocols (`channel.k8s.io`, `v4.channel.k8s.io`,
`v5.channel.k8s.io`), or a leading ASCII digit and a base64 body for the
`base64.` ones, as text messages. Under v5 a binary message [255, n] from
the client means it will send nothing more on channel n.

Reading is bounded: each channel holds at most INBOX_LIMIT bytes that nobody
has read; past that the reader stops taking messages, aiohttp's queue fills,
and it stops reading the socket.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections import deque

from aiohttp import WSMsgType, web

log = logging.getLogger("pyctr.streaming")

CLOSE_SIGNAL = 255
INBOX_LIMIT = 1 << 20


def parse_protocols(header: str) -> list[str]:
    return [p.strip() for p in header.split(",") if p.strip()]


class _Inbox:
    """Bytes for one channel: one producer, one consumer, bounded."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.eof = False
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def put(self, data: bytes) -> None:
        while self._size >= INBOX_LIMIT and not self.eof:
            self._room.clear()
            await self._room.wait()
        if not self.eof:
            self._chunks.append(data)
            self._size += len(data)
            self._readable.set()

    def close(self) -> None:
        self.eof = True
        self._readable.set()
        self._room.set()

    async def get(self) -> bytes:
        while not self._chunks:
            if self.eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._chunks.popleft()
        self._size -= len(data)
        self._room.set()
        return data


class WsChannels:
    """Numbered channels over one prepared aiohttp WebSocketResponse."""

    def __init__(
        self, ws: web.WebSocketResponse, *, base64: bool, close_signal: bool, readable: set[int]
    ) -> None:
        self.ws = ws
        self.base64 = base64
        self.close_signal = close_signal
        self._inboxes = {ch: _Inbox() for ch in readable}
        self.closed = asyncio.Event()
        self.last_activity = asyncio.get_running_loop().time()
        self._reader = asyncio.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            async for msg in self.ws:
                self.last_activity = asyncio.get_running_loop().time()
                if msg.type == WSMsgType.BINARY and not self.base64:
                    data: bytes = msg.data
                    if not data:
                        continue
                    if self.close_signal and data[0] == CLOSE_SIGNAL:
                        if len(data) != 2:
                            log.info("malformed close signal on a v5 WebSocket")
                            break
                        if (inbox := self._inboxes.get(data[1])) is not None:
                            inbox.close()
                        continue
                    channel, payload = data[0], data[1:]
                elif msg.type == WSMsgType.TEXT and self.base64:
                    text: str = msg.data
                    if not text:
                        continue
                    channel = ord(text[0]) - ord("0")
                    try:
                        payload = base64.b64decode(text[1:], validate=True)
                    except (binascii.Error, ValueError):
                        log.info("invalid base64 on WebSocket channel %d; dropped", channel)
                        continue
                else:
                    continue  # the wrong kind of message for the protocol: ignored
                inbox = self._inboxes.get(channel)
                if inbox is not None and payload:
                    await inbox.put(payload)
        except Exception as e:  # a broken socket ends the session, never the daemon
            log.debug("WebSocket read ended: %s", e)
        finally:
            for inbox in self._inboxes.values():
                inbox.close()
            self.closed.set()

    async def read(self, channel: int) -> bytes:
        inbox = self._inboxes.get(channel)
        return await inbox.get() if inbox is not None else b""

    async def write(self, channel: int, data: bytes) -> None:
        if self.ws.closed:
            raise ConnectionResetError("the WebSocket is closed")
        self.last_activity = asyncio.get_running_loop().time()
        if self.base64:
            await self.ws.send_str(chr(ord("0") + channel) + base64.b64encode(data).decode())
        else:
            await self.ws.send_bytes(bytes((channel,)) + data)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self.closed.set()
