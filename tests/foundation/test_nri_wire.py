"""NRI's wire: mux frames, ttrpc messages and envelopes, and the asyncio Connection.

The Connection is tested against a hand-written peer on a socketpair that
speaks through the sans-I/O codec only. No root, no daemon.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from pyctr.daemon.nri import wire
from pyctr.daemon.nri.ttrpc import Connection, Handler, TtrpcError
from pyctr.daemon.nri.wire import (
    DATA,
    FIRST_FRAME_MAX,
    FRAME_PAYLOAD_MAX,
    MESSAGE_MAX,
    PLUGIN_CONN,
    REQUEST,
    RESPONSE,
    RUNTIME_CONN,
    Message,
    MessageDecoder,
    MuxDecoder,
    WireError,
    encode_frame,
    encode_frames,
    encode_message,
)
from pyctr.proto import nri_pb2

PLUGIN = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME = "nri.pkg.api.v1alpha1.Runtime"

# --- the codec ---------------------------------------------------------------


def test_golden_headers() -> None:
    assert encode_frame(2, b"abc") == b"\x00\x00\x00\x02\x00\x00\x00\x03abc"
    assert encode_message(3, REQUEST, b"xy") == b"\x00\x00\x00\x02\x00\x00\x00\x03\x01\x00xy"
    assert encode_message(0x01020304, DATA, b"", flags=1) == bytes.fromhex("00000000010203040301")


def test_golden_envelopes() -> None:
    # Request: service=1, method=2 (strings), payload=3 (bytes), timeout_nano=4 (varint).
    assert wire.request("svc", "m", b"p", timeout_ns=5) == b"\x0a\x03svc\x12\x01m\x1a\x01p\x20\x05"
    with_md = wire.request("s", "m", b"", metadata={"k": "v"})
    assert with_md.endswith(b"\x2a\x06\x0a\x01k\x12\x01v")  # metadata=5: KeyValue{key=1, value=2}
    # Response: status=1 (always present, as Go's server sends it), payload=2.
    assert wire.response(b"ok") == b"\x0a\x00\x12\x02ok"
    assert wire.response(code=5, message="x") == b"\x0a\x05\x08\x05\x12\x01x"
    assert wire.parse_response(b"\x0a\x05\x08\x05\x12\x01x") == (5, "x", b"")
    assert wire.parse_response(b"\x12\x02ok") == (0, "", b"ok")  # no status: success
    req = wire.parse_request(wire.request("a", "b", b"c", 7, {"x": "y"}))
    assert (req.service, req.method, req.payload, req.timeout_nano) == ("a", "b", b"c", 7)
    assert [(kv.key, kv.value) for kv in req.metadata] == [("x", "y")]
    with pytest.raises(WireError):
        wire.parse_request(b"\xff\xff")
    with pytest.raises(WireError):
        wire.parse_response(b"\x0a\x09")


def test_nri_proto_paths_and_numbers() -> None:
    d = nri_pb2.DESCRIPTOR
    assert d.package == "nri.pkg.api.v1alpha1"
    assert [m.name for m in d.services_by_name["Runtime"].methods] == [
        "RegisterPlugin",
        "UpdateContainers",
    ]
    plugin = d.services_by_name["Plugin"].methods_by_name
    assert len(plugin) == 18
    assert plugin["CreateContainer"].input_type.name == "CreateContainerRequest"
    assert plugin["StateChange"].output_type.name == "Empty"
    fields = {
        ("Container", "CDI_devices"): 20,
        ("Container", "user"): 21,
        ("ConfigureResponse", "events"): 2,
        ("ContainerAdjustment", "annotations"): 2,
        ("LinuxContainerAdjustment", "memory_policy"): 12,
        ("RegisterPluginRequest", "NRI_version"): 3,
    }
    for (msg, field), number in fields.items():
        assert d.message_types_by_name[msg].fields_by_name[field].number == number


def _frames() -> bytes:
    return b"".join(
        [
            encode_frame(PLUGIN_CONN, b"one"),
            encode_frame(RUNTIME_CONN, b""),
            encode_frame(7, b"x" * 300),
            encode_frame(PLUGIN_CONN, b"two"),
        ]
    )


def test_mux_decoder_bytewise_equals_whole() -> None:
    stream = _frames()
    whole = MuxDecoder().feed(stream)
    assert whole == [(1, b"one"), (2, b""), (7, b"x" * 300), (1, b"two")]
    dec = MuxDecoder()
    bytewise = [f for i in range(len(stream)) for f in dec.feed(stream[i : i + 1])]
    assert bytewise == whole
    assert MuxDecoder().feed(stream[:-1]) == whole[:-1]  # a partial frame waits


def test_message_decoder_bytewise_equals_whole() -> None:
    stream = (
        encode_message(1, REQUEST, b"hello")
        + encode_message(1, RESPONSE, b"")
        + encode_message(3, DATA, b"z" * 5000, flags=1)
    )
    whole = MessageDecoder().feed(stream)
    assert whole == [
        Message(1, REQUEST, 0, b"hello"),
        Message(1, RESPONSE, 0, b""),
        Message(3, DATA, 1, b"z" * 5000),
    ]
    dec = MessageDecoder()
    assert [m for i in range(len(stream)) for m in dec.feed(stream[i : i + 1])] == whole


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x00\x00\x00\x00\x01x",  # reserved connection 0
        (1).to_bytes(4, "big") + (FRAME_PAYLOAD_MAX + 1).to_bytes(4, "big"),  # header alone
        b"\xff" * 16,
    ],
    ids=["conn-0", "oversized", "garbage"],
)
def test_mux_decoder_rejects(data: bytes) -> None:
    with pytest.raises(WireError):
        MuxDecoder().feed(data)


@pytest.mark.parametrize(
    "data",
    [
        (MESSAGE_MAX + 1).to_bytes(4, "big") + b"\x00\x00\x00\x01\x01\x00",  # header alone
        b"\x00\x00\x00\x00\x00\x00\x00\x01\x09\x00",  # unknown message type
        b"\xff" * 16,
    ],
    ids=["oversized", "unknown-type", "garbage"],
)
def test_message_decoder_rejects(data: bytes) -> None:
    with pytest.raises(WireError):
        MessageDecoder().feed(data)


def test_encoders_refuse_what_a_peer_would_reject() -> None:
    with pytest.raises(WireError):
        encode_frame(0, b"")
    with pytest.raises(WireError):
        encode_frame(1, b"x" * (FRAME_PAYLOAD_MAX + 1))
    with pytest.raises(WireError):
        encode_message(1, REQUEST, b"x" * (MESSAGE_MAX + 1))
    with pytest.raises(WireError):
        encode_message(1, 4, b"")
    assert len(encode_message(1, REQUEST, b"x" * MESSAGE_MAX)) == FRAME_PAYLOAD_MAX


@pytest.mark.parametrize(
    ("size", "frames"),
    [
        (10, [10]),
        (FIRST_FRAME_MAX, [FIRST_FRAME_MAX]),
        (FIRST_FRAME_MAX + 1, [FIRST_FRAME_MAX, 1]),
        (100_000, [FIRST_FRAME_MAX, 100_000 - FIRST_FRAME_MAX]),
        (FRAME_PAYLOAD_MAX, [FIRST_FRAME_MAX, FRAME_PAYLOAD_MAX - FIRST_FRAME_MAX]),
    ],
)
def test_outgoing_split(size: int, frames: list[int]) -> None:
    """At most FIRST_FRAME_MAX in the first frame, the rest in one: Go ttrpc's own framing."""
    message = (bytes(range(251)) * (size // 251 + 1))[:size]
    decoded = MuxDecoder().feed(encode_frames(RUNTIME_CONN, message))
    assert [len(p) for _, p in decoded] == frames
    assert {c for c, _ in decoded} == {RUNTIME_CONN}
    assert b"".join(p for _, p in decoded) == message


# --- the Connection, against a hand-written peer ------------------------------


class Peer:
    """The plugin's end, built from the codec alone."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.mux = MuxDecoder()
        self.streams: defaultdict[int, MessageDecoder] = defaultdict(MessageDecoder)
        self.queue: deque[tuple[int, Message]] = deque()
        self.frame_sizes: list[int] = []

    async def recv(self) -> tuple[int, Message]:
        async with asyncio.timeout(5):
            while not self.queue:
                data = await self.reader.read(1 << 16)
                assert data, "the runtime closed the connection"
                for conn_id, payload in self.mux.feed(data):
                    self.frame_sizes.append(len(payload))
                    self.queue.extend((conn_id, m) for m in self.streams[conn_id].feed(payload))
        return self.queue.popleft()

    async def send(
        self, conn_id: int, stream_id: int, mtype: int, data: bytes, chunk: int = 0
    ) -> None:
        """One message, in frames of `chunk` bytes if given (a byte stream, not frames)."""
        msg = encode_message(stream_id, mtype, data)
        step = chunk or len(msg)
        self.writer.write(
            b"".join(encode_frame(conn_id, msg[i : i + step]) for i in range(0, len(msg), step))
        )
        await self.writer.drain()

    async def answer(
        self, stream_id: int, payload: bytes = b"", code: int = 0, msg: str = ""
    ) -> None:
        await self.send(PLUGIN_CONN, stream_id, RESPONSE, wire.response(payload, code, msg))


async def _refuse(service: str, method: str, payload: bytes) -> bytes:
    raise TtrpcError(12, f"{service}/{method} not served here")


@asynccontextmanager
async def pair(handler: Handler = _refuse) -> AsyncIterator[tuple[Connection, Peer]]:
    a, b = socket.socketpair()
    conn = Connection(*await asyncio.open_unix_connection(sock=a), handler)
    peer = Peer(*await asyncio.open_unix_connection(sock=b))
    conn.start()
    try:
        yield conn, peer
    finally:
        conn.close()
        peer.writer.close()
        await conn.wait_closed()
        await peer.writer.wait_closed()


async def test_call_answered() -> None:
    async with pair() as (conn, peer):
        assert conn.peer_pid == os.getpid()  # a socketpair's peer is this process
        call = asyncio.create_task(conn.call(PLUGIN, "Configure", b"cfg", timeout=2.5))
        conn_id, msg = await peer.recv()
        assert (conn_id, msg.mtype, msg.stream_id, msg.flags) == (PLUGIN_CONN, REQUEST, 1, 0)
        req = wire.parse_request(msg.data)
        assert (req.service, req.method, req.payload) == (PLUGIN, "Configure", b"cfg")
        assert req.timeout_nano == 2_500_000_000
        # Cut the answer into 3-byte frames: the Connection reads a byte stream.
        await peer.send(PLUGIN_CONN, 1, RESPONSE, wire.response(b"pong" * 100), chunk=3)
        assert await call == b"pong" * 100


async def test_large_call_goes_in_two_frames() -> None:
    async with pair() as (conn, peer):
        payload = b"p" * 100_000
        call = asyncio.create_task(conn.call(PLUGIN, "Synchronize", payload, timeout=5))
        _, msg = await peer.recv()
        assert wire.parse_request(msg.data).payload == payload
        assert peer.frame_sizes == [FIRST_FRAME_MAX, len(msg.data) + 10 - FIRST_FRAME_MAX]
        await peer.answer(msg.stream_id)
        assert await call == b""


async def test_error_status_is_ttrpc_error() -> None:
    async with pair() as (conn, peer):
        call = asyncio.create_task(conn.call(PLUGIN, "CreateContainer", b"", timeout=5))
        _, msg = await peer.recv()
        await peer.answer(msg.stream_id, code=9, msg="not today")
        with pytest.raises(TtrpcError) as e:
            await call
        assert (e.value.code, e.value.message) == (9, "not today")
        assert not conn.closed


async def test_timeout_then_late_answer_is_dropped() -> None:
    async with pair() as (conn, peer):
        with pytest.raises(TimeoutError):
            await conn.call(PLUGIN, "StopContainer", b"", timeout=0.05)
        _, first = await peer.recv()
        await peer.answer(first.stream_id, b"late")
        call = asyncio.create_task(conn.call(PLUGIN, "StopContainer", b"", timeout=5))
        _, second = await peer.recv()
        assert (first.stream_id, second.stream_id) == (1, 3)
        await peer.answer(second.stream_id, b"on time")
        assert await call == b"on time"


async def test_peer_closing_mid_call() -> None:
    async with pair() as (conn, peer):
        call = asyncio.create_task(conn.call(PLUGIN, "Synchronize", b"", timeout=5))
        await peer.recv()
        peer.writer.close()
        with pytest.raises(ConnectionError):
            await call
        await asyncio.wait_for(conn.wait_closed(), 5)
        assert conn.closed
        with pytest.raises(ConnectionError):
            await conn.call(PLUGIN, "Shutdown", b"", timeout=1)
        conn.close()  # idempotent


async def test_concurrent_calls_answered_out_of_order() -> None:
    async with pair() as (conn, peer):
        methods = ["RunPodSandbox", "CreateContainer", "StartContainer"]
        calls = [asyncio.create_task(conn.call(PLUGIN, m, b"", timeout=5)) for m in methods]
        got = [(await peer.recv())[1] for _ in methods]
        assert sorted(m.stream_id for m in got) == [1, 3, 5]
        for msg in reversed(got):
            await peer.answer(msg.stream_id, wire.parse_request(msg.data).method.encode())
        assert await asyncio.gather(*calls) == [m.encode() for m in methods]


async def test_peer_requests_served_concurrently() -> None:
    release = asyncio.Event()
    seen: list[tuple[str, str, bytes]] = []

    async def handler(service: str, method: str, payload: bytes) -> bytes:
        seen.append((service, method, payload))
        if method == "UpdateContainers":
            await release.wait()
        return b"ok:" + payload

    async with pair(handler) as (conn, peer):
        await peer.send(RUNTIME_CONN, 1, REQUEST, wire.request(RUNTIME, "UpdateContainers", b"a"))
        await peer.send(RUNTIME_CONN, 3, REQUEST, wire.request(RUNTIME, "RegisterPlugin", b"b"))
        conn_id, msg = await peer.recv()  # the second, while the first still waits
        assert (conn_id, msg.mtype, msg.stream_id) == (RUNTIME_CONN, RESPONSE, 3)
        assert wire.parse_response(msg.data) == (0, "", b"ok:b")
        release.set()
        conn_id, msg = await peer.recv()
        assert (conn_id, msg.stream_id) == (RUNTIME_CONN, 1)
        assert wire.parse_response(msg.data) == (0, "", b"ok:a")
        assert seen == [(RUNTIME, "UpdateContainers", b"a"), (RUNTIME, "RegisterPlugin", b"b")]


async def test_handler_errors_are_answered_and_the_connection_stays() -> None:
    async def handler(service: str, method: str, payload: bytes) -> bytes:
        if method == "Boom":
            raise RuntimeError("secret internals")
        if method == "No":
            raise TtrpcError(3, "bad plugin name")
        return b"fine"

    async with pair(handler) as (conn, peer):
        await peer.send(RUNTIME_CONN, 1, REQUEST, wire.request(RUNTIME, "Boom", b""))
        code, message, _ = wire.parse_response((await peer.recv())[1].data)
        assert code == 13 and "secret" not in message
        await peer.send(RUNTIME_CONN, 3, REQUEST, wire.request(RUNTIME, "No", b""))
        assert wire.parse_response((await peer.recv())[1].data) == (3, "bad plugin name", b"")
        await peer.send(RUNTIME_CONN, 5, REQUEST, wire.request(RUNTIME, "RegisterPlugin", b""))
        assert wire.parse_response((await peer.recv())[1].data) == (0, "", b"fine")
        call = asyncio.create_task(conn.call(PLUGIN, "Configure", b"", timeout=5))
        _, msg = await peer.recv()
        await peer.answer(msg.stream_id, b"still here")
        assert await call == b"still here"


async def test_unknown_connections_ignored_garbage_closes() -> None:
    async with pair() as (conn, peer):
        call = asyncio.create_task(conn.call(PLUGIN, "Configure", b"", timeout=5))
        _, msg = await peer.recv()
        await peer.send(7, msg.stream_id, RESPONSE, wire.response(b"wrong conn"))
        await peer.answer(msg.stream_id, b"right conn")
        assert await call == b"right conn"

        call = asyncio.create_task(conn.call(PLUGIN, "Configure", b"", timeout=5))
        await peer.recv()
        peer.writer.write(b"\xff" * 64)
        with pytest.raises(ConnectionError):
            await call
        await asyncio.wait_for(conn.wait_closed(), 5)
        task = conn._task
        assert task is not None and task.done() and not task.cancelled()
        assert task.exception() is None  # the reader task ends cleanly, it never raises
