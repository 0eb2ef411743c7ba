"""ttrpc over NRI's multiplexed socket, with asyncio: the runtime's end.

One Connection owns one trunk socket. On PLUGIN_CONN it is the ttrpc client
(call: the plugin's Plugin service); on RUNTIME_CONN it is the server (the
handler answers the plugin's calls to the Runtime service). Only unary calls
exist in NRI, so ttrpc streaming (data messages, stream flags) is not spoken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable

from pyctr.daemon.nri import wire

log = logging.getLogger("pyctr.nri")

Handler = Callable[[str, str, bytes], Awaitable[bytes]]

# gRPC status codes used here.
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INVALID_ARGUMENT, INTERNAL = 4, 8, 3, 13
_READ_SIZE = 1 << 16


class TtrpcError(Exception):
    """A call answered with a non-zero status (or one to answer with, from a handler)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"


class Connection:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._mux = wire.MuxDecoder()
        # Frames of other connection IDs are not ours to read: they are dropped.
        self._streams = {
            wire.PLUGIN_CONN: wire.MessageDecoder(),
            wire.RUNTIME_CONN: wire.MessageDecoder(),
        }
        self._next_stream = 1  # client-initiated streams are odd and increasing
        self._pending: dict[int, asyncio.Future[tuple[int, str, bytes]]] = {}
        self._serving: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._closed_event = asyncio.Event()
        self.peer_pid = _peer_pid(writer)

    def start(self) -> None:
        """Start the reader task (once)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @property
    def closed(self) -> bool:
        return self._closed

    async def call(self, service: str, method: str, payload: bytes, timeout: float) -> bytes:
        """Call the plugin on PLUGIN_CONN; the response's payload, or TtrpcError."""
        if self._closed:
            raise ConnectionError("ttrpc connection is closed")
        stream_id = self._next_stream
        if stream_id > 0xFFFFFFFF:
            raise ConnectionError("ttrpc stream IDs exhausted")
        self._next_stream += 2
        future: asyncio.Future[tuple[int, str, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = future
        try:
            async with asyncio.timeout(timeout):
                data = wire.request(service, method, payload, timeout_ns=int(timeout * 1e9))
                await self._send(wire.PLUGIN_CONN, stream_id, wire.REQUEST, data)
                code, message, reply = await future
        finally:
            self._pending.pop(stream_id, None)  # a late response finds nothing and is dropped
        if code:
            raise TtrpcError(code, message)
        return reply

    def close(self) -> None:
        """Close the socket and fail the calls in flight (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("ttrpc connection closed"))
        self._pending.clear()
        for task in self._serving:
            task.cancel()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._writer.close()
        self._closed_event.set()

    async def wait_closed(self) -> None:
        await self._closed_event.wait()
        with contextlib.suppress(Exception):  # how the socket went down is not news here
            await self._writer.wait_closed()

    async def _send(self, conn_id: int, stream_id: int, mtype: int, data: bytes) -> None:
        try:
            message = wire.encode_message(stream_id, mtype, data)
        except wire.WireError as e:
            raise TtrpcError(RESOURCE_EXHAUSTED, str(e)) from None
        if self._closed:
            raise ConnectionError("ttrpc connection is closed")
        # One synchronous write per message: frames of two messages never interleave.
        self._writer.write(wire.encode_frames(conn_id, message))
        await self._writer.drain()

    async def _read_loop(self) -> None:
        why = "closed by the peer"
        try:
            while data := await self._reader.read(_READ_SIZE):
                for conn_id, payload in self._mux.feed(data):
                    decoder = self._streams.get(conn_id)
                    if decoder is not None:
                        for message in decoder.feed(payload):
                            self._dispatch(conn_id, message)
        except asyncio.CancelledError:
            why = "closed"
        except wire.WireError as e:
            why = f"protocol error: {e}"
        except Exception as e:  # never out of this task: a broken peer only closes its connection
            why = f"{type(e).__name__}: {e}"
        finally:
            if not self._closed:
                log.debug("NRI connection (pid %s) %s", self.peer_pid, why)
            self.close()

    def _dispatch(self, conn_id: int, message: wire.Message) -> None:
        if conn_id == wire.PLUGIN_CONN and message.mtype == wire.RESPONSE:
            future = self._pending.get(message.stream_id)
            if future is not None and not future.done():
                future.set_result(wire.parse_response(message.data))
        elif conn_id == wire.RUNTIME_CONN and message.mtype == wire.REQUEST:
            task = asyncio.get_running_loop().create_task(self._serve(message))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)
        # Anything else (data messages, a request where we are the client) is not NRI's: dropped.

    async def _serve(self, message: wire.Message) -> None:
        """Answer one request from the plugin, whatever the handler does."""
        try:
            req = wire.parse_request(message.data)
        except wire.WireError as e:
            reply = wire.response(code=INVALID_ARGUMENT, message=str(e))
        else:
            reply = await self._answer(req.service, req.method, req.payload, req.timeout_nano)
        try:
            try:
                await self._send(wire.RUNTIME_CONN, message.stream_id, wire.RESPONSE, reply)
            except TtrpcError as e:  # our answer is too big: say so instead
                reply = wire.response(code=e.code, message=e.message)
                await self._send(wire.RUNTIME_CONN, message.stream_id, wire.RESPONSE, reply)
        except OSError:  # includes ConnectionError: the peer is gone, nobody to answer
            pass

    async def _answer(self, service: str, method: str, payload: bytes, timeout_ns: int) -> bytes:
        try:
            async with asyncio.timeout(timeout_ns / 1e9 if timeout_ns > 0 else None):
                return wire.response(await self._handler(service, method, payload))
        except TtrpcError as e:
            return wire.response(code=e.code, message=e.message)
        except TimeoutError:
            return wire.response(code=DEADLINE_EXCEEDED, message="deadline exceeded")
        except Exception:
            log.exception("NRI %s/%s handler failed", service, method)
            return wire.response(code=INTERNAL, message=f"internal error in {method}")


def _peer_pid(writer: asyncio.StreamWriter) -> int | None:
    """The peer's PID from SO_PEERCRED, or None when the socket has none."""
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (AttributeError, OSError):
        return None
    pid: int = struct.unpack("3i", creds)[0]
    return pid or None
