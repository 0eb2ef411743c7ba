"""The asyncio side of a SPDY session: one connection, many streams.

`SpdySession` owns an asyncio transport (taken over from aiohttp after the
101 response, see `server.py`) and a sans-I/O `SpdyConnection`. Streams the
peer opens are handed out by `accept()`; each `SpdyStream` reads and writes
like a socket:

    stream = await session.accept()
    stream.reply()                      # SYN_REPLY, as the kubelet does at once
    data = await stream.read()          # b"" at the peer's FIN
    await stream.write(b"...")          # waits for window and socket room
    await stream.close()                # our FIN

Memory is bounded both ways: bytes the application has not read yet are
counted, and reading from the socket pauses above a high-water mark (the
Kubernetes clients ignore SPDY windows, so TCP is the only brake on them);
writes wait for the peer's window, when it keeps one, and for the socket's
buffer to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from pyctr.daemon.streaming import spdy, spdy_events

log = logging.getLogger("pyctr.streaming")

READ_HIGH_WATER = 4 << 20  # unread bytes across the session before the socket pauses
READ_LOW_WATER = 1 << 20
WRITE_CHUNK = 256 << 10  # bytes handed to the codec per step of a write


class StreamResetError(ConnectionError):
    """The stream was reset (RST_STREAM) or its session ended."""


class SpdyStream:
    def __init__(self, session: SpdySession, event: spdy_events.StreamOpened) -> None:
        self.session = session
        self.id = event.stream_id
        self.headers = event.headers
        self._chunks: deque[bytes] = deque()
        self._eof = event.fin
        self._reset: int | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._local_closed = event.unidirectional

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    @property
    def was_reset(self) -> bool:
        return self._reset is not None

    # -- called by the session ---------------------------------------------------

    def _on_data(self, data: bytes, fin: bool) -> None:
        if data:
            self._chunks.append(data)
        if fin:
            self._eof = True
        self._readable.set()

    def _on_reset(self, status: int) -> None:
        self._reset = status
        self._readable.set()
        self._writable.set()

    def _on_window(self) -> None:
        self._writable.set()

    # -- the application's side -------------------------------------------------------

    def reply(self) -> None:
        """Accept the stream (SYN_REPLY with no headers)."""
        if self._reset is None and not self.session.dead:
            self.session.conn.reply(self.id, {})
            self.session.flush()

    def reset(self, status: int = spdy.RstStatus.CANCEL) -> None:
        if self._reset is None and not self.session.dead:
            self.session.conn.reset_stream(self.id, status)
            self.session.flush()
        self._on_reset(status)
        self.session.forget(self)

    async def read(self) -> bytes:
        """Next chunk the peer sent; b"" once it half-closed. Raises StreamResetError."""
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self.session.consumed(self, len(data))
                return data
            if self._reset is not None:
                raise StreamResetError(f"stream {self.id} was reset ({self._reset})")
            if self._eof:
                return b""
            if self.session.dead:
                raise StreamResetError("the connection is closed")
            self._readable.clear()
            await self._readable.wait()

    async def write(self, data: bytes) -> None:
        """Send all of `data`, in window-sized frames; raises StreamResetError."""
        view = memoryview(data)
        pos, total = 0, len(data)
        conn = self.session.conn
        while pos < total:
            if self._reset is not None or self.session.dead:
                raise StreamResetError(f"stream {self.id} is closed")
            if self._local_closed:
                raise StreamResetError(f"stream {self.id} is closed for writing")
            window = conn.send_window(self.id)
            if window <= 0:
                self._writable.clear()
                await self._writable.wait()
                continue
            n = min(window, total - pos, WRITE_CHUNK)
            conn.send_data(self.id, view[pos : pos + n])
            pos += n
            self.session.flush()
            await self.session.drain()

    async def close(self) -> None:
        """Half-close our side (FIN); harmless when already closed or reset."""
        if self._local_closed or self._reset is not None or self.session.dead:
            return
        self._local_closed = True
        self.session.conn.end_stream(self.id)
        self.session.flush()
        if not self.session.conn.stream_open(self.id):
            self.session.done_with(self)
        with contextlib.suppress(ConnectionError):
            await self.session.drain()


class SpdySession(asyncio.Protocol):
    """A SPDY server session on a transport; install with `transport.set_protocol`."""

    def __init__(self, transport: asyncio.Transport, *, on_lost: object = None) -> None:
        self.transport = transport
        self.conn = spdy.SpdyConnection()
        self._loop = asyncio.get_running_loop()
        self._streams: dict[int, SpdyStream] = {}
        self._incoming: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self._unread = 0
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.dead = False
        self.closed = asyncio.Event()  # the connection is gone or the session failed
        self.error: str = ""
        self.last_activity = self._loop.time()
        self._on_lost = on_lost
        self._eof_sent = False
        self.conn.initiate()
        self.flush()

    # -- asyncio.Protocol ------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.last_activity = self._loop.time()
        try:
            events = self.conn.receive_data(data)
        except spdy.ProtocolError as e:
            log.info("SPDY protocol error from peer: %s", e)
            self.error = str(e)
            self.flush()
            self.abort(graceful=True)
            return
        for event in events:
            self._dispatch(event)
        self.flush()

    def eof_received(self) -> bool:
        self._gone()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("connection lost"))
        self._drain_waiters.clear()
        if callable(self._on_lost):
            self._on_lost(exc)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # -- plumbing -----------------------------------------------------------------

    def _dispatch(self, event: spdy_events.Event) -> None:
        if isinstance(event, spdy_events.DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is None:
                self.conn.acknowledge(event.stream_id, len(event.data))
                return
            stream._on_data(event.data, event.fin)
            self._unread += len(event.data)
            if event.fin and not self.conn.stream_open(stream.id):
                del self._streams[stream.id]  # done both ways; the app may still read it
            if self._unread > READ_HIGH_WATER and not self._reading_paused:
                self._reading_paused = True
                self.transport.pause_reading()
        elif isinstance(event, spdy_events.StreamOpened):
            stream = SpdyStream(self, event)
            self._streams[event.stream_id] = stream
            self._incoming.put_nowait(stream)
        elif isinstance(event, spdy_events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                self._drop_unread(stream)
                stream._on_reset(event.status)
        elif isinstance(event, spdy_events.WindowUpdated):
            if event.stream_id == 0:
                for stream in self._streams.values():
                    stream._on_window()
            elif (stream := self._streams.get(event.stream_id)) is not None:
                stream._on_window()
        elif isinstance(event, spdy_events.GoAwayReceived):
            self._incoming.put_nowait(None)

    def _drop_unread(self, stream: SpdyStream) -> None:
        dropped = sum(len(c) for c in stream._chunks)
        stream._chunks.clear()
        if dropped:
            self._account_read(dropped)

    def _account_read(self, size: int) -> None:
        self._unread -= size
        if self._reading_paused and self._unread < READ_LOW_WATER and not self.dead:
            self._reading_paused = False
            self.transport.resume_reading()

    def consumed(self, stream: SpdyStream, size: int) -> None:
        self._account_read(size)
        if not self.dead:
            self.conn.acknowledge(stream.id, size)
            self.flush()

    def done_with(self, stream: SpdyStream) -> None:
        """Both sides closed: no more events for it (what is unread stays readable)."""
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]

    def forget(self, stream: SpdyStream) -> None:
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]
            self._drop_unread(stream)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self._eof_sent and not self.transport.is_closing():
            self.last_activity = self._loop.time()
            self.transport.write(data)

    async def drain(self) -> None:
        if self.dead:
            raise ConnectionResetError("connection lost")
        if not self._write_paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def _gone(self) -> None:
        if self.dead:
            return
        self.dead = True
        for stream in list(self._streams.values()):
            stream._on_reset(spdy.RstStatus.CANCEL)
        self._streams.clear()
        self._incoming.put_nowait(None)
        self.closed.set()

    # -- the application's side ----------------------------------------------------

    async def accept(self) -> SpdyStream | None:
        """The next stream the peer opens; None once the session is over."""
        if self.dead and self._incoming.empty():
            return None
        stream = await self._incoming.get()
        if stream is None:
            self._incoming.put_nowait(None)  # keep answering None
        return stream

    async def close(self, status: int = spdy.GoAwayStatus.OK, linger: float = 5.0) -> None:
        """GOAWAY, then half-close and wait (up to `linger`) for the peer to hang up.

        Closing outright while the peer may still be sending (stdin, say)
        would answer its data with a TCP reset, and a reset can destroy what
        the peer has received but not read yet: the end of stdout, the exit
        status. So we only stop sending, and let the peer close first.
        """
        if not self.dead:
            self.conn.goaway(status)
            self.flush()
            for stream in list(self._streams.values()):
                self._drop_unread(stream)  # nobody will read it now; keep reading the socket
            if self._reading_paused:
                self._reading_paused = False
                self.transport.resume_reading()
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self._eof_sent = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(linger):
                        await self.closed.wait()
        self.abort(graceful=True)

    def abort(self, graceful: bool = False) -> None:
        if graceful:
            self.transport.close()  # sends what is buffered first
        else:
            self.transport.abort()
        self._gone()
