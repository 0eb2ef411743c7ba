"""A process's live stdio from its shim (CRI Attach and Exec).

    stream = await shim.attach()                # or shim.exec(exec_id, process, tty=...)
    async for kind, data in stream: ...         # ("stdout" | "stderr", bytes)
    await stream.write(b"input"); await stream.resize(80, 24)

Frames are one kind byte, a 4-byte big-endian length and the payload
(proto/shim_api.md); each stream has a connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
from typing import Any

from pyctr.daemon import errors
from pyctr.daemon.runtime.shim_types import ExitRecord, shim_error
from pyctr.shim import protocol
from pyctr.shim.protocol import (
    FRAME_CLOSE_STDIN,
    FRAME_EXIT,
    FRAME_RESIZE,
    FRAME_STDERR,
    FRAME_STDIN,
    FRAME_STDOUT,
)

STREAM_LIMIT = 256 << 10


async def open_shim_socket(
    path: str, limit: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_unix_connection(path, limit=limit)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise errors.Unavailable(f"shim at {path} is not running") from None
        raise errors.Unavailable(f"cannot reach shim at {path}: {exc}") from None


class AttachStream:
    """A process's live stdio over a connection of its own.

    read() returns ("stdout" | "stderr", data) until the process ends (then
    None, with .exit set) or the shim goes away (None, .exit stays None).
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: dict[str, Any]
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.pid: int = int(reply.get("pid", 0))
        self.exec_id: str | None = reply.get("exec_id")
        self.exit: ExitRecord | None = None

    @classmethod
    async def open(cls, path: str, op: str, **args: Any) -> AttachStream:
        # A small buffer, so a reader that falls behind slows the process
        # (exec) instead of piling its output up in the daemon.
        reader, writer = await open_shim_socket(path, STREAM_LIMIT)
        try:
            writer.write(protocol.encode_request(0, op, args))
            await writer.drain()
            line = await reader.readline()
            if not line:
                raise errors.Unavailable("shim closed the connection")
            reply = json.loads(line)
            if "error" in reply:
                raise shim_error(reply["error"])
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, reply.get("result") or {})

    async def read(self) -> tuple[str, bytes] | None:
        while True:
            try:
                head = await self._reader.readexactly(5)
                payload = await self._reader.readexactly(int.from_bytes(head[1:], "big"))
            except (asyncio.IncompleteReadError, OSError):
                self._writer.close()  # the shim hung up: nothing more to send either
                return None
            kind = head[0]
            if kind == FRAME_STDOUT:
                return "stdout", payload
            if kind == FRAME_STDERR:
                return "stderr", payload
            if kind == FRAME_EXIT:
                self.exit = ExitRecord.from_dict(json.loads(payload))
                self._writer.close()
                return None

    def __aiter__(self) -> AttachStream:
        return self

    async def __anext__(self) -> tuple[str, bytes]:
        item = await self.read()
        if item is None:
            raise StopAsyncIteration
        return item

    async def _send(self, kind: int, payload: bytes) -> None:
        try:
            self._writer.write(bytes((kind,)) + len(payload).to_bytes(4, "big") + payload)
            await self._writer.drain()
        except OSError as exc:
            raise errors.Unavailable(f"attach stream closed: {exc}") from None

    async def write(self, data: bytes) -> None:
        """Send data to the process's stdin (in frames of at most 64 KiB)."""
        for i in range(0, len(data), 65536):
            await self._send(FRAME_STDIN, data[i : i + 65536])

    async def close_stdin(self) -> None:
        await self._send(FRAME_CLOSE_STDIN, b"")

    async def resize(self, width: int, height: int) -> None:
        await self._send(FRAME_RESIZE, json.dumps({"width": width, "height": height}).encode())

    async def close(self) -> None:
        """Detach; for an exec this closes its stdin."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
