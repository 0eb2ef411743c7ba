"""NRI's wire, without I/O: the multiplexer's frames and ttrpc's messages.

An NRI plugin talks to the runtime over one unix socket (the trunk). NRI's
multiplexer carries several logical connections on it, each frame being an
8-byte header (connection ID, payload length; big-endian uint32s) and the
payload. On connection PLUGIN_CONN the plugin serves its Plugin service and
the runtime is the ttrpc client; on RUNTIME_CONN the roles swap.

The payloads of one connection form a byte stream of ttrpc messages: a
10-byte header (data length and stream ID, big-endian uint32s; message type
and flags, uint8s) and the data, a protobuf ttrpc.Request or ttrpc.Response
for the unary calls NRI makes. A sender may cut a message across frames or
pack several in one, so ttrpc is decoded per connection from the joined
payloads, never per frame.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from pyctr.proto import ttrpc_pb2

FRAME_HEADER = struct.Struct(">II")  # connection ID, payload length
MESSAGE_HEADER = struct.Struct(">IIBB")  # data length, stream ID, type, flags

PLUGIN_CONN = 1  # the plugin's Plugin service; the runtime calls
RUNTIME_CONN = 2  # the runtime's Runtime service; the plugin calls

REQUEST, RESPONSE, DATA = 1, 2, 3  # ttrpc message types

MESSAGE_MAX = 4 << 20  # ttrpc's limit on a message's data
FRAME_PAYLOAD_MAX = MESSAGE_HEADER.size + MESSAGE_MAX  # the mux's: one whole ttrpc message
# Go's ttrpc reads through a 4096-byte bufio.Reader and the Go mux fails a read
# (ENOMEM) when a frame outgrows the reader's buffer: a message's first frame is
# at most this long and the rest goes in one frame, as Go's ttrpc frames its own.
FIRST_FRAME_MAX = 4096

_U32 = 0xFFFFFFFF


class WireError(Exception):
    """Bytes that are not NRI's mux or ttrpc: the connection cannot go on."""


def encode_frame(conn_id: int, payload: bytes) -> bytes:
    """One mux frame."""
    if not 0 < conn_id <= _U32:
        raise WireError(f"bad mux connection ID {conn_id}")
    if len(payload) > FRAME_PAYLOAD_MAX:
        raise WireError(f"mux payload of {len(payload)} bytes > {FRAME_PAYLOAD_MAX}")
    return FRAME_HEADER.pack(conn_id, len(payload)) + payload


def encode_frames(conn_id: int, message: bytes) -> bytes:
    """One encoded ttrpc message in the mux frames a Go peer can read (FIRST_FRAME_MAX)."""
    if len(message) <= FIRST_FRAME_MAX:
        return encode_frame(conn_id, message)
    return encode_frame(conn_id, message[:FIRST_FRAME_MAX]) + encode_frame(
        conn_id, message[FIRST_FRAME_MAX:]
    )


class MuxDecoder:
    """Trunk bytes in, (connection ID, payload) frames out; partial input is kept."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        frames: list[tuple[int, bytes]] = []
        while len(self._buf) >= FRAME_HEADER.size:
            conn_id, length = FRAME_HEADER.unpack_from(self._buf)
            if conn_id == 0:
                raise WireError("mux frame on reserved connection 0")
            if length > FRAME_PAYLOAD_MAX:  # checked before any of it is buffered
                raise WireError(f"mux frame of {length} bytes > {FRAME_PAYLOAD_MAX}")
            end = FRAME_HEADER.size + length
            if len(self._buf) < end:
                break
            frames.append((conn_id, bytes(self._buf[FRAME_HEADER.size : end])))
            del self._buf[:end]
        return frames


@dataclass(frozen=True, slots=True)
class Message:
    """One ttrpc message."""

    stream_id: int
    mtype: int
    flags: int
    data: bytes


def encode_message(stream_id: int, mtype: int, data: bytes, flags: int = 0) -> bytes:
    """One ttrpc message: header and data."""
    if len(data) > MESSAGE_MAX:
        raise WireError(f"ttrpc message of {len(data)} bytes > {MESSAGE_MAX}")
    if (
        not 0 <= stream_id <= _U32
        or mtype not in (REQUEST, RESPONSE, DATA)
        or not 0 <= flags <= 255
    ):
        raise WireError(f"bad ttrpc header: stream {stream_id} type {mtype} flags {flags}")
    return MESSAGE_HEADER.pack(len(data), stream_id, mtype, flags) + data


class MessageDecoder:
    """One connection's joined payloads in, ttrpc messages out; partial input is kept."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        messages: list[Message] = []
        while len(self._buf) >= MESSAGE_HEADER.size:
            length, stream_id, mtype, flags = MESSAGE_HEADER.unpack_from(self._buf)
            if length > MESSAGE_MAX:
                raise WireError(f"ttrpc message of {length} bytes > {MESSAGE_MAX}")
            # Only three types exist: anything else means the stream is misframed.
            if mtype not in (REQUEST, RESPONSE, DATA):
                raise WireError(f"unknown ttrpc message type {mtype}")
            end = MESSAGE_HEADER.size + length
            if len(self._buf) < end:
                break
            messages.append(
                Message(stream_id, mtype, flags, bytes(self._buf[MESSAGE_HEADER.size : end]))
            )
            del self._buf[:end]
        return messages


def request(
    service: str,
    method: str,
    payload: bytes,
    timeout_ns: int = 0,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """A serialized ttrpc.Request."""
    req = ttrpc_pb2.Request(
        service=service, method=method, payload=payload, timeout_nano=timeout_ns
    )
    for key, value in (metadata or {}).items():
        req.metadata.add(key=key, value=value)
    return req.SerializeToString()


def parse_request(data: bytes) -> ttrpc_pb2.Request:
    req = ttrpc_pb2.Request()
    try:
        req.ParseFromString(data)
    except DecodeError as e:
        raise WireError(f"undecodable ttrpc request: {e}") from None
    return req


def response(payload: bytes = b"", code: int = 0, message: str = "") -> bytes:
    """A serialized ttrpc.Response; the status is always present, as Go's server sends it."""
    resp = ttrpc_pb2.Response(payload=payload)
    resp.status.SetInParent()
    resp.status.code = code
    resp.status.message = message
    return resp.SerializeToString()


def parse_response(data: bytes) -> tuple[int, str, bytes]:
    """(status code, status message, payload) of a serialized ttrpc.Response."""
    resp = ttrpc_pb2.Response()
    try:
        resp.ParseFromString(data)
    except DecodeError as e:
        raise WireError(f"undecodable ttrpc response: {e}") from None
    return resp.status.code, resp.status.message, resp.payload
