"""pyctr's SPDY/3.1 codec against frames built here from the spec (no sockets)."""

from __future__ import annotations

import struct
import zlib

import pytest

from pyctr.daemon.streaming import spdy, spdy_events
from tests.streaming.spdyclient import (
    GOAWAY,
    PING,
    RST_STREAM,
    SETTINGS,
    SPEC_DICTIONARY,
    SYN_REPLY,
    WINDOW_UPDATE,
    Decoder,
    Encoder,
)


def server() -> tuple[spdy.SpdyConnection, Decoder]:
    conn = spdy.SpdyConnection()
    return conn, Decoder()


def test_dictionary_is_the_specs() -> None:
    assert len(SPEC_DICTIONARY) == 1423
    assert spdy.DICTIONARY == SPEC_DICTIONARY


def test_syn_stream_reply_data_fin_in_one_byte_at_a_time() -> None:
    conn, dec = server()
    enc = Encoder()
    wire = enc.syn_stream(1, {"streamType": "stdin", "port": "80"})
    wire += enc.syn_stream(3, {"streamtype": "error"})  # second block: same deflate context
    wire += enc.data(1, b"hello ") + enc.data(1, b"world", flags=1)
    events = []
    for i in range(len(wire)):
        events += conn.receive_data(wire[i : i + 1])
    opened = [e for e in events if isinstance(e, spdy_events.StreamOpened)]
    assert [(e.stream_id, e.headers) for e in opened] == [
        (1, {"streamtype": ["stdin"], "port": ["80"]}),
        (3, {"streamtype": ["error"]}),
    ]
    data = b"".join(e.data for e in events if isinstance(e, spdy_events.DataReceived))
    assert data == b"hello world"
    assert [e.fin for e in events if isinstance(e, spdy_events.DataReceived)][-1] is True

    conn.reply(1, {})
    conn.send_data(1, b"x" * 100_000, fin=True)
    frames = dec.feed(conn.data_to_send())
    assert frames[0].type == SYN_REPLY and frames[0].stream_id == 1 and frames[0].headers == {}
    data_frames = [f for f in frames if not f.control]
    assert b"".join(f.payload for f in data_frames) == b"x" * 100_000
    assert all(len(f.payload) <= spdy.MAX_DATA_FRAME for f in data_frames)
    assert [f.flags for f in data_frames][-1] == 1 and not conn.stream_open(1)


def test_ping_is_answered_and_goaway_reported() -> None:
    conn, dec = server()
    enc = Encoder()
    events = conn.receive_data(enc.control(PING, 0, struct.pack(">I", 7)))
    assert events == [spdy_events.PingReceived(7, ours=False)]
    assert [(f.type, f.payload) for f in dec.feed(conn.data_to_send())] == [
        (PING, struct.pack(">I", 7))
    ]
    events = conn.receive_data(enc.control(GOAWAY, 0, struct.pack(">II", 0, 0)))
    assert events == [spdy_events.GoAwayReceived(0, 0)]


def test_windows_honoured_once_the_peer_shows_flow_control() -> None:
    conn, dec = server()
    enc = Encoder()
    conn.receive_data(enc.syn_stream(1, {"streamtype": "stdout"}))
    conn.reply(1, {})
    # A spdystream-like peer: no SETTINGS, no WINDOW_UPDATE. Not limited.
    assert conn.send_window(1) == spdy.MAX_WINDOW
    conn.receive_data(enc.control(SETTINGS, 0, struct.pack(">IBBHI", 1, 0, 0, 7, 1000)))
    assert conn.peer_flow_control and conn.send_window(1) == 1000
    conn.send_data(1, b"a" * 1000)
    assert conn.send_window(1) == 0
    with pytest.raises(ValueError):
        conn.send_data(1, b"b")
    conn.receive_data(enc.control(WINDOW_UPDATE, 0, struct.pack(">II", 1, 500)))
    assert conn.send_window(1) == 500
    # The session window (64 KiB, stream 0) bounds every stream together.
    conn.receive_data(enc.control(WINDOW_UPDATE, 0, struct.pack(">II", 1, 1 << 20)))
    assert conn.send_window(1) == 65536 - 1000


def test_receiving_reopens_windows_as_data_is_consumed() -> None:
    conn, dec = server()
    enc = Encoder()
    conn.initiate()
    frames = dec.feed(conn.data_to_send())
    assert frames[0].type == SETTINGS  # our initial window
    assert struct.unpack(">IBBHI", frames[0].payload) == (1, 0, 0, 7, conn.local_stream_window)
    conn.receive_data(enc.syn_stream(1, {"streamtype": "stdin"}))
    half = conn.local_stream_window // 2
    conn.receive_data(enc.data(1, b"z" * half))
    assert not [f for f in dec.feed(conn.data_to_send()) if f.type == WINDOW_UPDATE]
    conn.acknowledge(1, half)
    updates = [f for f in dec.feed(conn.data_to_send()) if f.type == WINDOW_UPDATE]
    assert [struct.unpack(">II", f.payload) for f in updates] == [(1, half)]


@pytest.mark.parametrize(
    "wire, reason",
    [
        (Encoder().control(PING, 0, b"\0\0\0\1", version=2), "unsupported SPDY version"),
        (Encoder().data(0, b"x"), "DATA frame on stream 0"),
        (Encoder().syn_stream(2, {"a": "b"}), "invalid stream id"),
        (Encoder().control(1, 0, struct.pack(">IIBB", 1, 0, 0, 0) + b"garbage"), "compression"),
        (Encoder().control(WINDOW_UPDATE, 0, struct.pack(">II", 0, 0)), "WINDOW_UPDATE of 0"),
        (Encoder().control(RST_STREAM, 0, b"\0"), "RST_STREAM must be 8 bytes"),
    ],
)
def test_session_errors_answer_goaway(wire: bytes, reason: str) -> None:
    conn, dec = server()
    with pytest.raises(spdy.ProtocolError, match=reason):
        conn.receive_data(wire)
    frames = dec.feed(conn.data_to_send())
    assert frames[-1].type == GOAWAY
    assert struct.unpack(">II", frames[-1].payload)[1] == spdy.GoAwayStatus.PROTOCOL_ERROR
    assert conn.receive_data(b"anything") == []  # the session is over


def test_header_bomb_is_refused() -> None:
    deflate = zlib.compressobj(9, zdict=SPEC_DICTIONARY)
    value = b"a" * (spdy.MAX_HEADER_BLOCK * 4)
    raw = struct.pack(">I", 1) + struct.pack(">I", 1) + b"x" + struct.pack(">I", len(value)) + value
    block = deflate.compress(raw) + deflate.flush(zlib.Z_SYNC_FLUSH)
    assert len(block) < 2000
    conn, _ = server()
    with pytest.raises(spdy.ProtocolError, match="inflates past"):
        conn.receive_data(Encoder().control(1, 0, struct.pack(">IIBB", 1, 0, 0, 0) + block))


def test_stream_ids_must_grow_and_unknown_streams_are_reset() -> None:
    conn, dec = server()
    enc = Encoder()
    conn.receive_data(enc.syn_stream(5, {"k": "v"}))
    conn.receive_data(enc.data(9, b"who?"))  # never opened
    frames = dec.feed(conn.data_to_send())
    assert [(f.type, struct.unpack(">II", f.payload)) for f in frames] == [
        (RST_STREAM, (9, spdy.RstStatus.INVALID_STREAM))
    ]
    with pytest.raises(spdy.ProtocolError, match="not above"):
        conn.receive_data(enc.syn_stream(3, {"k": "v"}))


def test_reset_stream_event_and_too_many_streams_refused() -> None:
    conn, dec = server()
    conn.max_concurrent_streams = 1
    enc = Encoder()
    conn.receive_data(enc.syn_stream(1, {"a": "1"}))
    conn.receive_data(enc.syn_stream(3, {"a": "2"}))
    frames = dec.feed(conn.data_to_send())
    assert [(f.type, struct.unpack(">II", f.payload)) for f in frames] == [
        (RST_STREAM, (3, spdy.RstStatus.REFUSED_STREAM))
    ]
    events = conn.receive_data(enc.control(RST_STREAM, 0, struct.pack(">II", 1, 5)))
    assert events == [spdy_events.StreamReset(1, 5)] and not conn.stream_open(1)
