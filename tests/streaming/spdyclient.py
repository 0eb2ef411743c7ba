"""A SPDY/3.1 client for the tests, written from the spec and from what
Kubernetes' client-go (over moby/spdystream) puts on the wire.

Independent of pyctr's own codec on purpose: frames are packed here with
struct, header blocks deflated here with the dictionary as the spec prints it.
Like spdystream it never sends WINDOW_UPDATE and ignores the server's windows,
unless `flow_control` is given: then it announces that initial window, checks
the server never sends past the window, and opens it as it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import zlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pyctr.daemon.pods import netns

# SPDY/3 section 2.6.10.1, the dictionary as the spec prints it.
SPEC_DICTIONARY = (
    b"\x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\x00\x00\x00\x06de"
    b"lete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-charse"
    b"t\x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\x00"
    b"\x00\x00\raccept-ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\x00\x00\x00\rauth"
    b"orization\x00\x00\x00\rcache-control\x00\x00\x00\nconnection"
    b"\x00\x00\x00\x0ccontent-base\x00\x00\x00\x10content-encoding\x00\x00\x00\x10"
    b"content-language\x00\x00\x00\x0econtent-length\x00\x00\x00\x10co"
    b"ntent-location\x00\x00\x00\x0bcontent-md5\x00\x00\x00\rcontent"
    b"-range\x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00"
    b"\x00\x06expect\x00\x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\x00\x00\x08i"
    b"f-match\x00\x00\x00\x11if-modified-since\x00\x00\x00\rif-none-"
    b"match\x00\x00\x00\x08if-range\x00\x00\x00\x13if-unmodified-since"
    b"\x00\x00\x00\rlast-modified\x00\x00\x00\x08location\x00\x00\x00\x0cmax-for"
    b"wards\x00\x00\x00\x06pragma\x00\x00\x00\x12proxy-authenticate\x00\x00\x00"
    b"\x13proxy-authorization\x00\x00\x00\x05range\x00\x00\x00\x07referer"
    b"\x00\x00\x00\x0bretry-after\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trail"
    b"er\x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\nus"
    b"er-agent\x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10ww"
    b"w-authenticate\x00\x00\x00\x06method\x00\x00\x00\x03get\x00\x00\x00\x06statu"
    b"s\x00\x00\x00\x06200 OK\x00\x00\x00\x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03ur"
    b"l\x00\x00\x00\x06public\x00\x00\x00\nset-cookie\x00\x00\x00\nkeep-alive\x00"
    b"\x00\x00\x06origin1001012012022052063003023033043"
    b"0530630740240540640740840941041141241341"
    b"4415416417502504505203 Non-Authoritative"
    b" Information204 No Content301 Moved Perm"
    b"anently400 Bad Request401 Unauthorized40"
    b"3 Forbidden404 Not Found500 Internal Ser"
    b"ver Error501 Not Implemented503 Service "
    b"UnavailableJan Feb Mar Apr May Jun Jul A"
    b"ug Sept Oct Nov Dec 00:00:00 Mon, Tue, W"
    b"ed, Thu, Fri, Sat, Sun, GMTchunked,text/"
    b"html,image/png,image/jpg,image/gif,appli"
    b"cation/xml,application/xhtml+xml,text/pl"
    b"ain,text/javascript,publicprivatemax-age"
    b"=gzip,deflate,sdchcharset=utf-8charset=i"
    b"so-8859-1,utf-,*,enq=0."
)

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = (
    1, 2, 3, 4, 6, 7, 8, 9,
)  # fmt: skip
FIN = 0x01


@dataclass
class Frame:
    control: bool
    type: int  # control frame type; 0 for DATA
    flags: int
    stream_id: int
    payload: bytes
    headers: dict[str, str] | None = None


@dataclass
class StreamState:
    data: bytearray = field(default_factory=bytearray)
    fin: bool = False
    reset: int | None = None
    replied: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    recv_window: int = 65536


class Encoder:
    """Frames as the spec lays them out; one deflate context for the session."""

    def __init__(self) -> None:
        self.deflate = zlib.compressobj(9, zdict=SPEC_DICTIONARY)

    def control(self, ftype: int, flags: int, payload: bytes, version: int = 3) -> bytes:
        return struct.pack(">HHI", 0x8000 | version, ftype, flags << 24 | len(payload)) + payload

    def block(self, headers: dict[str, str]) -> bytes:
        raw = struct.pack(">I", len(headers))
        for name, value in headers.items():
            n, v = name.lower().encode(), value.encode()
            raw += struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v
        return self.deflate.compress(raw) + self.deflate.flush(zlib.Z_SYNC_FLUSH)

    def syn_stream(self, sid: int, headers: dict[str, str], flags: int = 0) -> bytes:
        payload = struct.pack(">IIBB", sid, 0, 0, 0) + self.block(headers)
        return self.control(SYN_STREAM, flags, payload)

    def data(self, sid: int, payload: bytes, flags: int = 0) -> bytes:
        return struct.pack(">II", sid, flags << 24 | len(payload)) + payload


class Decoder:
    """Frames out of a byte stream; one inflate context for the session."""

    def __init__(self) -> None:
        self.inflate = zlib.decompressobj(zdict=SPEC_DICTIONARY)
        self.buf = b""

    def headers(self, block: bytes) -> dict[str, str]:
        raw = self.inflate.decompress(block)
        (count,) = struct.unpack_from(">I", raw)
        pos, out = 4, {}
        for _ in range(count):
            (n,) = struct.unpack_from(">I", raw, pos)
            name = raw[pos + 4 : pos + 4 + n].decode()
            pos += 4 + n
            (m,) = struct.unpack_from(">I", raw, pos)
            out[name] = raw[pos + 4 : pos + 4 + m].decode()
            pos += 4 + m
        return out

    def frame(self, first: int, flags: int, payload: bytes) -> Frame:
        if not first & 0x80000000:
            return Frame(False, 0, flags, first & 0x7FFFFFFF, payload)
        assert first >> 16 == 0x8003, f"bad control frame version {first >> 16:#x}"
        ftype, sid, headers = first & 0xFFFF, 0, None
        if ftype in (SYN_STREAM, SYN_REPLY, HEADERS, RST_STREAM, WINDOW_UPDATE):
            sid = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
        if ftype in (SYN_REPLY, HEADERS):
            headers = self.headers(payload[4:])
        elif ftype == SYN_STREAM:
            headers = self.headers(payload[10:])
        return Frame(True, ftype, flags, sid, payload, headers)

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        frames = []
        while len(self.buf) >= 8:
            first, second = struct.unpack_from(">II", self.buf)
            length = second & 0xFFFFFF
            if len(self.buf) < 8 + length:
                break
            frames.append(self.frame(first, second >> 24, self.buf[8 : 8 + length]))
            self.buf = self.buf[8 + length :]
        return frames


class HttpError(Exception):
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes):
        super().__init__(f"HTTP {status}: {body.decode(errors='replace')}")
        self.status, self.headers, self.body = status, headers, body


async def http_upgrade(
    url: str, headers: list[tuple[str, str]], method: str = "POST", netns_path: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, list[tuple[str, str]]]:
    """Send an upgrade request; returns the connection and the response head.

    With netns_path the connection is made from inside that network namespace.
    """
    u = urlsplit(url)
    if netns_path is None:
        reader, writer = await asyncio.open_connection(u.hostname, u.port, limit=1 << 20)
    else:
        sock = await asyncio.to_thread(netns.run_in, netns_path, socket.socket)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (u.hostname, u.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    lines = [f"{method} {u.path}{'?' + u.query if u.query else ''} HTTP/1.1", f"Host: {u.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *rest = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    got = [tuple(x.strip() for x in line.split(":", 1)) for line in rest if line]
    return reader, writer, status, got  # type: ignore[return-value]


class SpdyClient:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flow_control: int = 0
    ):
        self.reader, self.writer = reader, writer
        self.enc, self.dec = Encoder(), Decoder()
        self.next_id = 1
        self.streams: dict[int, StreamState] = {}
        self.frames: list[Frame] = []  # everything the server sent, in order
        self.goaway: Frame | None = None
        self.closed = asyncio.Event()
        self.flow_control = flow_control
        self.window_violations: list[str] = []
        self.session_recv_window = 65536
        self._task = asyncio.create_task(self._read_loop())
        if flow_control:
            payload = struct.pack(">IBBHI", 1, 0, 0, 7, flow_control)  # INITIAL_WINDOW_SIZE
            self._control(SETTINGS, 0, payload)
            for st in self.streams.values():
                st.recv_window = flow_control

    @classmethod
    async def connect(
        cls,
        url: str,
        protocols: list[str],
        *,
        method: str = "POST",
        flow_control: int = 0,
        netns_path: str | None = None,
    ) -> tuple[SpdyClient, str]:
        headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
        headers += [("X-Stream-Protocol-Version", p) for p in protocols]
        reader, writer, status, got = await http_upgrade(url, headers, method, netns_path)
        if status != 101:
            length = int(dict((k.lower(), v) for k, v in got).get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            writer.close()
            raise HttpError(status, got, body)
        chosen = dict((k.lower(), v) for k, v in got)["x-stream-protocol-version"]
        return cls(reader, writer, flow_control), chosen

    # -- writing ---------------------------------------------------------------

    def _control(self, ftype: int, flags: int, payload: bytes) -> None:
        self.writer.write(self.enc.control(ftype, flags, payload))

    async def open_stream(self, headers: dict[str, str], *, wait_reply: bool = True) -> int:
        sid = self.next_id
        self.next_id += 2
        self.streams[sid] = StreamState(recv_window=self.flow_control or 65536)
        self.writer.write(self.enc.syn_stream(sid, headers))
        await self.writer.drain()
        if wait_reply:  # client-go waits for each SYN_REPLY
            st = self.streams[sid]
            await asyncio.wait_for(st.replied.wait(), 10)
            if st.reset is not None:
                raise ConnectionError(f"stream {sid} refused with status {st.reset}")
        return sid

    async def send(self, sid: int, data: bytes, fin: bool = False) -> None:
        for i in range(0, max(len(data), 1), 16384):  # spdystream writes what it is given
            chunk = data[i : i + 16384]
            last = i + 16384 >= len(data)
            flags = FIN if fin and last else 0
            self.writer.write(self.enc.data(sid, chunk, flags))
            await self.writer.drain()

    async def close_stream(self, sid: int) -> None:
        await self.send(sid, b"", fin=True)

    def reset(self, sid: int, status: int = 5) -> None:
        self._control(RST_STREAM, 0, struct.pack(">II", sid, status))

    async def close(self) -> None:
        self.writer.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    # -- reading ----------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(8)
                first, second = struct.unpack(">II", head)
                payload = await self.reader.readexactly(second & 0xFFFFFF)
                frame = self.dec.frame(first, second >> 24, payload)
                if frame.control:
                    self._on_control(frame)
                else:
                    self._on_data(frame.stream_id, frame.flags, payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            for st in self.streams.values():
                st.changed.set()
                st.replied.set()

    def _on_control(self, frame: Frame) -> None:
        self.frames.append(frame)
        st = self.streams.get(frame.stream_id)
        if frame.type == SYN_REPLY and st is not None:
            st.replied.set()
            if frame.flags & FIN:
                st.fin = True
        elif frame.type == RST_STREAM and st is not None:
            st.reset = struct.unpack_from(">I", frame.payload, 4)[0]
            st.replied.set()
            st.changed.set()
        elif frame.type == PING:
            self._control(PING, 0, frame.payload)  # answer the server's pings
        elif frame.type == GOAWAY:
            self.goaway = frame

    def _on_data(self, sid: int, flags: int, payload: bytes) -> None:
        self.frames.append(Frame(False, 0, flags, sid, payload))
        st = self.streams.get(sid)
        if st is None:
            return
        if self.flow_control:
            st.recv_window -= len(payload)
            self.session_recv_window -= len(payload)
            if st.recv_window < 0 or self.session_recv_window < 0:
                self.window_violations.append(f"stream {sid}: {st.recv_window}")
            # Consume at once and re-open both windows, as a reader would.
            if payload:
                self._control(WINDOW_UPDATE, 0, struct.pack(">II", sid, len(payload)))
                self._control(WINDOW_UPDATE, 0, struct.pack(">II", 0, len(payload)))
                st.recv_window += len(payload)
                self.session_recv_window += len(payload)
        st.data += payload
        if flags & FIN:
            st.fin = True
        st.changed.set()

    async def read_until_fin(self, sid: int, timeout: float = 30) -> bytes:
        st = self.streams[sid]
        async with asyncio.timeout(timeout):
            while not (st.fin or st.reset is not None or self.closed.is_set()):
                st.changed.clear()
                await st.changed.wait()
        return bytes(st.data)

    async def wait_for(self, sid: int, predicate, timeout: float = 30) -> bytes:
        st = self.streams[sid]
        async with asyncio.timeout(timeout):
            while not predicate(bytes(st.data)):
                if st.fin or st.reset is not None or self.closed.is_set():
                    raise AssertionError(f"stream {sid} ended with {bytes(st.data)!r}")
                st.changed.clear()
                await st.changed.wait()
        return bytes(st.data)
