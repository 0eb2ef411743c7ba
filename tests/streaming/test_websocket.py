"""Exec over WebSocket: binary and base64 framing, v4 statuses, v5 stdin close, tty."""

from __future__ import annotations

import json

import pytest

from pyctr.daemon.streaming.requests import ExecRequest
from pyctr.daemon.streaming.server import StreamingServer
from tests.streaming.conftest import ShimRuntime
from tests.streaming.kube import V4, V5, WsClient

pytestmark = pytest.mark.root

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4


def url(
    server: StreamingServer, cid: str, cmd: str, *, stdin: bool = True, tty: bool = False
) -> str:
    return server.url_for(ExecRequest(cid, ("sh", "-c", cmd), tty, stdin, True, not tty))


@pytest.mark.parametrize("protocol", [V4, "v4.base64.channel.k8s.io"])
async def test_v4_exec_with_stdin_and_exit_code(
    server: StreamingServer, runtime: ShimRuntime, protocol: str
) -> None:
    c = await runtime.run("ws4", ["sleep", "1000"])
    ws = await WsClient.connect(
        url(server, c.id, "read x; echo got $x; echo err >&2; exit 3"), ["v9.none", protocol]
    )
    try:
        assert ws.protocol == protocol
        await ws.send(STDIN, b"hello\n")
        channels = await ws.until_closed()
        assert ws.messages[0] == (STDOUT, b"")  # "connected"
        assert channels[STDOUT] == b"got hello\n" and channels[STDERR] == b"err\n"
        status = json.loads(channels[ERROR])
        assert status["reason"] == "NonZeroExitCode"
        assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    finally:
        await ws.close()


async def test_v5_close_signal_ends_stdin(server: StreamingServer, runtime: ShimRuntime) -> None:
    c = await runtime.run("ws5", ["sleep", "1000"])
    ws = await WsClient.connect(url(server, c.id, "wc -c"), [V5])
    try:
        data = b"y" * (3 << 20)
        for i in range(0, len(data), 1 << 16):
            await ws.send(STDIN, data[i : i + (1 << 16)])
        await ws.ws.send_bytes(bytes([255, STDIN]))  # v5: no more stdin
        channels = await ws.until_closed()
        assert channels[STDOUT].strip() == str(len(data)).encode()
        assert json.loads(channels[ERROR]) == {"metadata": {}, "status": "Success"}
    finally:
        await ws.close()


@pytest.mark.parametrize("protocol", ["channel.k8s.io", "base64.channel.k8s.io", None])
async def test_pre_v4_protocols_report_errors_as_text(
    server: StreamingServer, runtime: ShimRuntime, protocol: str | None
) -> None:
    c = await runtime.run("wsold", ["sleep", "1000"])
    ws = await WsClient.connect(url(server, c.id, "echo hi; exit 9", stdin=False),
                                [protocol] if protocol else [])  # fmt: skip
    try:
        channels = await ws.until_closed()
        assert channels[STDOUT] == b"hi\n"
        assert channels[ERROR].startswith(b"command terminated with non-zero exit code")
        assert channels[ERROR].endswith(b"9")
    finally:
        await ws.close()


async def test_tty_resize_over_websocket(server: StreamingServer, runtime: ShimRuntime) -> None:
    c = await runtime.run("wstty", ["sleep", "1000"])
    ws = await WsClient.connect(url(server, c.id, "sleep 0.3; stty size", tty=True), [V5])
    try:
        await ws.send(RESIZE, json.dumps({"Width": 77, "Height": 22}).encode())
        channels = await ws.until_closed()
        assert b"22 77" in channels[STDOUT]
        assert json.loads(channels[ERROR])["status"] == "Success"
    finally:
        await ws.close()
