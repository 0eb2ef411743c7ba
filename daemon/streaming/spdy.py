"""SPDY/3.1 framing, header compression and flow control, with no I/O.

Written from the SPDY/3.1 draft, in the style of aioquic and h2: bytes go in
through `receive_data`, events come out; what to send piles up for
`data_to_send`. Both ends of a session are supported (`client=True` for the
side that opens odd-numbered streams), though pyctr uses it as the server the
kubelet's clients (client-go, crictl) talk to.

    conn = SpdyConnection()
    for event in conn.receive_data(bytes_from_socket):
        if isinstance(event, StreamOpened):
            conn.reply(event.stream_id, {})
        elif isinstance(event, DataReceived):
            ...; conn.acknowledge(event.stream_id, len(event.data))
    sock.sendall(conn.data_to_send())

Header blocks are zlib-compressed with the dictionary the spec fixes, one
compression context per direction for the whole session: every header block
must be inflated in order, even the block of a frame that is then refused,
or the two ends fall out of step.

Flow control. SPDY/3.1 has per-stream windows (initially 64 KiB, changed by
SETTINGS_INITIAL_WINDOW_SIZE) and one session window (64 KiB, grown only by
WINDOW_UPDATE on stream 0). The Kubernetes clients are built on moby's
spdystream, which neither sends WINDOW_UPDATE nor honours it: a sender that
waited for window updates from it would stall after 64 KiB. So:

- as a receiver we send WINDOW_UPDATE as the application consumes data
  (`acknowledge`), so senders that do honour windows keep going; a peer that
  overruns our window is tolerated unless `strict_receive` is set, and the
  I/O layer bounds memory by pausing the socket instead;
- as a sender we honour the peer's windows once the peer has shown it does
  flow control (it sent SETTINGS_INITIAL_WINDOW_SIZE or any WINDOW_UPDATE);
  until then `send_window` is unbounded and TCP's own backpressure is what
  limits us, as it does for every spdystream peer.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from pyctr.daemon.streaming.spdy_dictionary import DICTIONARY
from pyctr.daemon.streaming.spdy_events import (
    DataReceived,
    Event,
    GoAwayReceived,
    Headers,
    HeadersReceived,
    PingReceived,
    SettingsReceived,
    StreamOpened,
    StreamReplied,
    StreamReset,
    WindowUpdated,
)

VERSION = 3


class FrameType(IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    FRAME_TOO_LARGE = 11


class GoAwayStatus(IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_SETTINGS_CLEAR = 0x01

SETTINGS_MAX_CONCURRENT_STREAMS = 4
SETTINGS_INITIAL_WINDOW_SIZE = 7

DEFAULT_WINDOW = 65536
MAX_WINDOW = (1 << 31) - 1
MAX_FRAME_LENGTH = (1 << 24) - 1
MAX_CONTROL_FRAME = 1 << 20  # nothing legitimate comes near this
MAX_HEADER_BLOCK = 1 << 16  # inflated size of one header block
MAX_DATA_FRAME = 1 << 16  # what we put in one DATA frame


class ProtocolError(Exception):
    """The peer broke the protocol; a GOAWAY is queued and the session is over."""

    def __init__(self, message: str, status: GoAwayStatus = GoAwayStatus.PROTOCOL_ERROR):
        super().__init__(message)
        self.status = status


class StreamClosedError(Exception):
    """Sending on a stream that is closed for sending (or unknown)."""


# -- state ------------------------------------------------------------------------


@dataclass
class _Stream:
    send_window: int
    recv_window: int
    local_closed: bool = False  # we sent FIN (or may not send: unidirectional)
    remote_closed: bool = False  # the peer sent FIN
    replied: bool = False  # SYN_REPLY sent (peer's streams) or received (ours)
    unacked: int = 0  # bytes consumed by the app and not yet announced


def _u32(data: bytes | memoryview, pos: int) -> int:
    return int.from_bytes(data[pos : pos + 4], "big")


@dataclass
class SpdyConnection:
    client: bool = False
    strict_receive: bool = False
    max_concurrent_streams: int = 1000
    # What we announce: per-stream window for the peer's data, and the session window.
    local_stream_window: int = 1 << 20
    local_session_window: int = 4 << 20

    _in: bytearray = field(default_factory=bytearray, repr=False)
    _out: list[bytes] = field(default_factory=list, repr=False)
    _data_left: int = 0  # payload bytes still to come of the DATA frame being read
    _data_stream: int = 0
    _data_flags: int = 0
    _streams: dict[int, _Stream] = field(default_factory=dict, repr=False)
    _last_peer_stream: int = 0
    _next_stream_id: int = 0
    _next_ping_id: int = 0
    _peer_initial_window: int = DEFAULT_WINDOW
    _session_send_window: int = DEFAULT_WINDOW
    _session_recv_window: int = DEFAULT_WINDOW
    _session_unacked: int = 0
    peer_flow_control: bool = False  # the peer has shown it does flow control
    goaway_sent: bool = False
    goaway_received: bool = False
    closed: bool = False

    def __post_init__(self) -> None:
        self._deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zdict=DICTIONARY)
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._next_stream_id = 1 if self.client else 2
        self._next_ping_id = 1 if self.client else 2

    # -- setup -----------------------------------------------------------------

    def initiate(self) -> None:
        """Announce our receive windows (call once, first thing)."""
        self.send_settings({SETTINGS_INITIAL_WINDOW_SIZE: self.local_stream_window})
        grow = self.local_session_window - DEFAULT_WINDOW
        if grow > 0:
            self._window_update(0, grow)
            self._session_recv_window += grow

    # -- output ----------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _control(self, ftype: FrameType, flags: int, payload: bytes) -> None:
        head = struct.pack(">HHI", 0x8000 | VERSION, ftype, (flags << 24) | len(payload))
        self._out.append(head + payload)

    def _header_block(self, headers: Mapping[str, str | Iterable[str]]) -> bytes:
        parts = [len(headers).to_bytes(4, "big")]
        for name, value in headers.items():
            raw_name = name.lower().encode()
            if not raw_name:
                raise ValueError("empty header name")
            raw_value = (value if isinstance(value, str) else "\0".join(value)).encode()
            parts += [len(raw_name).to_bytes(4, "big"), raw_name]
            parts += [len(raw_value).to_bytes(4, "big"), raw_value]
        block = b"".join(parts)
        return self._deflate.compress(block) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def open_stream(
        self, headers: Mapping[str, str | Iterable[str]], *, fin: bool = False, priority: int = 0
    ) -> int:
        """Send SYN_STREAM; returns the new stream's id."""
        if self.goaway_received or self.goaway_sent:
            raise StreamClosedError("the session is going away")
        sid = self._next_stream_id
        self._next_stream_id += 2
        payload = struct.pack(">IIBB", sid, 0, (priority & 7) << 5, 0)
        self._control(
            FrameType.SYN_STREAM, FLAG_FIN if fin else 0, payload + self._header_block(headers)
        )
        self._streams[sid] = _Stream(
            self._peer_initial_window, self.local_stream_window, local_closed=fin
        )
        return sid

    def reply(
        self, stream_id: int, headers: Mapping[str, str | Iterable[str]], *, fin: bool = False
    ) -> None:
        """Accept a stream the peer opened (SYN_REPLY)."""
        st = self._streams.get(stream_id)
        if st is None or st.replied:
            raise StreamClosedError(f"stream {stream_id} cannot be replied to")
        st.replied = True
        payload = stream_id.to_bytes(4, "big") + self._header_block(headers)
        self._control(FrameType.SYN_REPLY, FLAG_FIN if fin else 0, payload)
        if fin:
            self._close_local(stream_id, st)

    def send_headers(
        self, stream_id: int, headers: Mapping[str, str | Iterable[str]], *, fin: bool = False
    ) -> None:
        st = self._sendable(stream_id)
        payload = stream_id.to_bytes(4, "big") + self._header_block(headers)
        self._control(FrameType.HEADERS, FLAG_FIN if fin else 0, payload)
        if fin:
            self._close_local(stream_id, st)

    def send_window(self, stream_id: int) -> int:
        """How many bytes may be sent on the stream now (see the module doc)."""
        st = self._streams.get(stream_id)
        if st is None or st.local_closed:
            return 0
        if not self.peer_flow_control:
            return MAX_WINDOW
        return max(0, min(st.send_window, self._session_send_window))

    def send_data(self, stream_id: int, data: bytes | memoryview, *, fin: bool = False) -> None:
        """DATA frames for `data` (split at MAX_DATA_FRAME); must fit send_window."""
        st = self._sendable(stream_id)
        if len(data) > self.send_window(stream_id):
            raise ValueError(f"{len(data)} bytes exceed the window of stream {stream_id}")
        view = memoryview(data)
        total = len(data)
        pos = 0
        while True:
            chunk = view[pos : pos + MAX_DATA_FRAME]
            pos += len(chunk)
            last = pos >= total
            flags = FLAG_FIN if fin and last else 0
            self._out.append(struct.pack(">II", stream_id, (flags << 24) | len(chunk)))
            if chunk:
                self._out.append(bytes(chunk))
            if last:
                break
        st.send_window -= total
        self._session_send_window -= total
        if fin:
            self._close_local(stream_id, st)

    def end_stream(self, stream_id: int) -> None:
        """Half-close: an empty DATA frame with FIN (a no-op if already closed)."""
        st = self._streams.get(stream_id)
        if st is None or st.local_closed:
            return
        self.send_data(stream_id, b"", fin=True)

    def reset_stream(self, stream_id: int, status: int = RstStatus.CANCEL) -> None:
        self._control(FrameType.RST_STREAM, 0, struct.pack(">II", stream_id, status))
        self._streams.pop(stream_id, None)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The application consumed `size` bytes of the stream: re-open the windows."""
        if size <= 0:
            return
        self._session_unacked += size
        if self._session_unacked >= self.local_session_window // 2:
            self._window_update(0, self._session_unacked)
            self._session_recv_window += self._session_unacked
            self._session_unacked = 0
        st = self._streams.get(stream_id)
        if st is None or st.remote_closed:
            return
        st.unacked += size
        if st.unacked >= self.local_stream_window // 2:
            self._window_update(stream_id, st.unacked)
            st.recv_window += st.unacked
            st.unacked = 0

    def _window_update(self, stream_id: int, delta: int) -> None:
        self._control(FrameType.WINDOW_UPDATE, 0, struct.pack(">II", stream_id, delta))

    def send_settings(self, settings: Mapping[int, int]) -> None:
        payload = len(settings).to_bytes(4, "big")
        payload += b"".join(
            struct.pack(">II", key & 0xFFFFFF, value) for key, value in settings.items()
        )
        self._control(FrameType.SETTINGS, 0, payload)

    def ping(self) -> int:
        ping_id = self._next_ping_id
        self._next_ping_id = (self._next_ping_id + 2) & 0xFFFFFFFF
        self._control(FrameType.PING, 0, ping_id.to_bytes(4, "big"))
        return ping_id

    def goaway(self, status: int = GoAwayStatus.OK) -> None:
        if self.goaway_sent:
            return
        self.goaway_sent = True
        self._control(FrameType.GOAWAY, 0, struct.pack(">II", self._last_peer_stream, status))

    def stream_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def _sendable(self, stream_id: int) -> _Stream:
        st = self._streams.get(stream_id)
        if st is None or st.local_closed:
            raise StreamClosedError(f"stream {stream_id} is closed for sending")
        return st

    def _close_local(self, stream_id: int, st: _Stream) -> None:
        st.local_closed = True
        if st.remote_closed:
            del self._streams[stream_id]

    def _close_remote(self, stream_id: int, st: _Stream) -> None:
        st.remote_closed = True
        if st.local_closed:
            del self._streams[stream_id]

    # -- input -----------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse what arrived; raises ProtocolError (GOAWAY queued) on a session error."""
        if self.closed:
            return []
        self._in += data
        events: list[Event] = []
        try:
            self._parse(events)
        except ProtocolError as e:
            self.goaway(e.status)
            self.closed = True
            raise
        return events

    def _parse(self, events: list[Event]) -> None:
        buf = self._in
        view = memoryview(buf)
        pos = 0
        try:
            while True:
                if self._data_left:
                    n = min(self._data_left, len(buf) - pos)
                    if n == 0:
                        break
                    self._data_left -= n
                    chunk = bytes(view[pos : pos + n])
                    pos += n
                    self._on_data(events, chunk, self._data_left == 0)
                    continue
                if len(buf) - pos < 8:
                    break
                first, second = struct.unpack_from(">II", buf, pos)
                flags, length = second >> 24, second & 0xFFFFFF
                if not first & 0x80000000:  # DATA frame
                    pos += 8
                    self._data_stream, self._data_flags = first & 0x7FFFFFFF, flags
                    if self._data_stream == 0:
                        raise ProtocolError("DATA frame on stream 0")
                    if length == 0:
                        self._on_data(events, b"", True)
                    else:
                        self._data_left = length
                    continue
                version, ftype = (first >> 16) & 0x7FFF, first & 0xFFFF
                if version != VERSION:
                    raise ProtocolError(f"unsupported SPDY version {version}")
                if length > MAX_CONTROL_FRAME:
                    raise ProtocolError(f"control frame of {length} bytes is too large")
                if len(buf) - pos < 8 + length:
                    break
                payload = bytes(view[pos + 8 : pos + 8 + length])
                pos += 8 + length
                self._on_control(events, ftype, flags, payload)
        finally:
            view.release()
            del buf[:pos]

    def _on_data(self, events: list[Event], data: bytes, last: bool) -> None:
        sid = self._data_stream
        fin = last and bool(self._data_flags & FLAG_FIN)
        size = len(data)
        self._session_recv_window -= size
        st = self._streams.get(sid)
        if st is None or st.remote_closed:
            # Discarded: give the session window back at once.
            self.acknowledge(sid, size)
            if last:
                if st is not None:
                    self.reset_stream(sid, RstStatus.STREAM_ALREADY_CLOSED)
                elif sid % 2 == self._peer_parity and sid > self._last_peer_stream:
                    self.reset_stream(sid, RstStatus.INVALID_STREAM)
                # else: data in flight on a stream that was reset; drop it.
            return
        st.recv_window -= size
        if self.strict_receive and (st.recv_window < 0 or self._session_recv_window < 0):
            self.reset_stream(sid, RstStatus.FLOW_CONTROL_ERROR)
            events.append(StreamReset(sid, RstStatus.FLOW_CONTROL_ERROR))
            return
        if fin:
            self._close_remote(sid, st)
        if data or fin:
            events.append(DataReceived(sid, data, fin))

    @property
    def _peer_parity(self) -> int:
        return 0 if self.client else 1

    def _headers(self, block: bytes) -> Headers:
        """Inflate (always, to keep the zlib context in step) and parse a header block."""
        try:
            raw = self._inflate.decompress(block, MAX_HEADER_BLOCK + 1)
        except zlib.error as e:
            raise ProtocolError(f"bad header compression: {e}") from None
        if len(raw) > MAX_HEADER_BLOCK or self._inflate.unconsumed_tail:
            raise ProtocolError(f"header block inflates past {MAX_HEADER_BLOCK} bytes")
        data = memoryview(raw)
        try:
            count = _u32(data, 0)
            pos = 4
            headers: Headers = {}
            for _ in range(count):
                n = _u32(data, pos)
                name = bytes(data[pos + 4 : pos + 4 + n]).decode("latin-1").lower()
                pos += 4 + n
                m = _u32(data, pos)
                value = bytes(data[pos + 4 : pos + 4 + m]).decode("latin-1")
                pos += 4 + m
                if not name or pos > len(data):
                    raise ValueError
                headers.setdefault(name, []).extend(value.split("\0"))
        except (ValueError, IndexError):
            raise ProtocolError("malformed header block") from None
        if pos != len(data) and len(data) >= 4:
            raise ProtocolError("trailing bytes after the header block")
        return headers

    def _on_control(self, events: list[Event], ftype: int, flags: int, p: bytes) -> None:
        if ftype == FrameType.SYN_STREAM:
            if len(p) < 10:
                raise ProtocolError("short SYN_STREAM")
            sid, assoc = _u32(p, 0) & 0x7FFFFFFF, _u32(p, 4) & 0x7FFFFFFF
            priority = p[8] >> 5
            headers = self._headers(p[10:])
            if sid == 0 or sid % 2 != self._peer_parity:
                raise ProtocolError(f"SYN_STREAM with invalid stream id {sid}")
            if sid in self._streams:
                self.reset_stream(sid, RstStatus.PROTOCOL_ERROR)
                events.append(StreamReset(sid, RstStatus.PROTOCOL_ERROR))
                return
            if sid <= self._last_peer_stream:
                raise ProtocolError(f"stream id {sid} is not above {self._last_peer_stream}")
            self._last_peer_stream = sid
            if self.goaway_sent:
                self.reset_stream(sid, RstStatus.REFUSED_STREAM)
                return
            if len(self._streams) >= self.max_concurrent_streams:
                self.reset_stream(sid, RstStatus.REFUSED_STREAM)
                return
            fin, uni = bool(flags & FLAG_FIN), bool(flags & FLAG_UNIDIRECTIONAL)
            self._streams[sid] = _Stream(
                self._peer_initial_window,
                self.local_stream_window,
                local_closed=uni,
                remote_closed=fin,
            )
            events.append(StreamOpened(sid, headers, fin, uni, assoc, priority))
        elif ftype in (FrameType.SYN_REPLY, FrameType.HEADERS):
            if len(p) < 4:
                raise ProtocolError("short SYN_REPLY/HEADERS")
            sid = _u32(p, 0) & 0x7FFFFFFF
            headers = self._headers(p[4:])
            st = self._streams.get(sid)
            fin = bool(flags & FLAG_FIN)
            if st is None or st.remote_closed:
                self.reset_stream(sid, RstStatus.INVALID_STREAM)
                return
            if ftype == FrameType.SYN_REPLY:
                if st.replied or sid % 2 == self._peer_parity:
                    self.reset_stream(sid, RstStatus.STREAM_IN_USE)
                    events.append(StreamReset(sid, RstStatus.STREAM_IN_USE))
                    return
                st.replied = True
                if fin:
                    self._close_remote(sid, st)
                events.append(StreamReplied(sid, headers, fin))
            else:
                if fin:
                    self._close_remote(sid, st)
                events.append(HeadersReceived(sid, headers, fin))
        elif ftype == FrameType.RST_STREAM:
            if len(p) != 8:
                raise ProtocolError("RST_STREAM must be 8 bytes")
            sid, status = _u32(p, 0) & 0x7FFFFFFF, _u32(p, 4)
            if self._streams.pop(sid, None) is not None:
                events.append(StreamReset(sid, status))
        elif ftype == FrameType.SETTINGS:
            if len(p) < 4 or len(p) != 4 + 8 * _u32(p, 0):
                raise ProtocolError("malformed SETTINGS")
            settings = {}
            for i in range(_u32(p, 0)):
                key, value = _u32(p, 4 + 8 * i) & 0xFFFFFF, _u32(p, 8 + 8 * i)
                settings[key] = value
            if SETTINGS_INITIAL_WINDOW_SIZE in settings:
                new = settings[SETTINGS_INITIAL_WINDOW_SIZE]
                if new > MAX_WINDOW:
                    raise ProtocolError("initial window above 2^31-1")
                delta = new - self._peer_initial_window
                self._peer_initial_window = new
                self.peer_flow_control = True
                for st in self._streams.values():
                    st.send_window += delta
            events.append(SettingsReceived(settings))
        elif ftype == FrameType.PING:
            if len(p) != 4:
                raise ProtocolError("PING must be 4 bytes")
            ping_id = _u32(p, 0)
            ours = ping_id % 2 == (1 if self.client else 0)
            if not ours:
                self._control(FrameType.PING, 0, bytes(p))
            events.append(PingReceived(ping_id, ours))
        elif ftype == FrameType.GOAWAY:
            if len(p) not in (4, 8):
                raise ProtocolError("malformed GOAWAY")
            last = _u32(p, 0) & 0x7FFFFFFF
            status = _u32(p, 4) if len(p) == 8 else 0
            self.goaway_received = True
            events.append(GoAwayReceived(last, status))
        elif ftype == FrameType.WINDOW_UPDATE:
            if len(p) != 8:
                raise ProtocolError("WINDOW_UPDATE must be 8 bytes")
            sid, delta = _u32(p, 0) & 0x7FFFFFFF, _u32(p, 4) & 0x7FFFFFFF
            if delta == 0:
                raise ProtocolError("WINDOW_UPDATE of 0")
            self.peer_flow_control = True
            if sid == 0:
                self._session_send_window += delta
                if self._session_send_window > MAX_WINDOW:
                    raise ProtocolError("session window above 2^31-1")
            else:
                st = self._streams.get(sid)
                if st is None:
                    return
                st.send_window += delta
                if st.send_window > MAX_WINDOW:
                    self.reset_stream(sid, RstStatus.FLOW_CONTROL_ERROR)
                    events.append(StreamReset(sid, RstStatus.FLOW_CONTROL_ERROR))
                    return
            events.append(WindowUpdated(sid, delta))
        # Unknown control frame types are ignored, as the spec asks.
