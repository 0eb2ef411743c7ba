"""Attach to a running container's stdio, several clients at once, SPDY and WebSocket."""

from __future__ import annotations

import asyncio
import signal

import pytest

from pyctr.daemon.streaming.requests import AttachRequest
from pyctr.daemon.streaming.server import StreamingServer
from tests.streaming.conftest import ShimRuntime
from tests.streaming.kube import V4, V5, WsClient, open_command_streams
from tests.streaming.spdyclient import SpdyClient

pytestmark = pytest.mark.root

ECHO_LOOP = ["sh", "-c", 'echo started; while read line; do echo "echo:$line"; done; echo bye']


async def test_attach_sees_output_after_attaching_and_sends_stdin(
    server: StreamingServer, runtime: ShimRuntime
) -> None:
    c = await runtime.run("att", ECHO_LOOP, stdin=True)
    await asyncio.sleep(0.3)  # "started" is printed before anyone attaches
    url = server.url_for(AttachRequest(c.id, tty=False, stdin=True, stdout=True, stderr=True))
    spdy, protocol = await SpdyClient.connect(url, [V4])
    ws = await WsClient.connect(
        server.url_for(AttachRequest(c.id, tty=False, stdin=False, stdout=True, stderr=True)),
        [V5],
    )
    try:
        ids = await open_command_streams(
            spdy, stdin=True, stdout=True, stderr=True, tty=False, protocol=protocol
        )
        assert await ws.receive() == (1, b"")  # the server's "connected" message
        await spdy.send(ids["stdin"], b"one\n")
        await spdy.wait_for(ids["stdout"], lambda out: out == b"echo:one\n")
        async with asyncio.timeout(10):
            while b"echo:one\n" not in ws.channels.get(1, b""):
                await ws.receive()
        # Closing the attach's stdin does not close the container's (no stdin_once).
        await spdy.close_stream(ids["stdin"])
        await asyncio.sleep(0.2)
        assert not spdy.streams[ids["stdout"]].fin
        # The container ends: both attaches get its last words and a success status.
        await runtime.shim(c.id).kill(signal.SIGTERM)
        await runtime.shim(c.id).kill(signal.SIGKILL)
        error = await spdy.read_until_fin(ids["error"])
        assert error == b'{"metadata":{},"status":"Success"}'
        channels = await ws.until_closed()
        assert channels[3] == b'{"metadata":{},"status":"Success"}'
        assert b"started" not in spdy.streams[ids["stdout"]].data
    finally:
        await spdy.close()
        await ws.close()


async def test_stdin_once_closes_the_containers_stdin(
    server: StreamingServer, runtime: ShimRuntime
) -> None:
    c = await runtime.run("once", ECHO_LOOP, stdin=True, stdin_once=True)
    url = server.url_for(AttachRequest(c.id, tty=False, stdin=True, stdout=True, stderr=False))
    spdy, protocol = await SpdyClient.connect(url, [V4])
    try:
        ids = await open_command_streams(
            spdy, stdin=True, stdout=True, stderr=False, tty=False, protocol=protocol
        )
        await spdy.send(ids["stdin"], b"last\n", fin=True)
        out = await spdy.read_until_fin(ids["stdout"])
        assert out.endswith(b"echo:last\nbye\n")
        assert await spdy.read_until_fin(ids["error"]) == b'{"metadata":{},"status":"Success"}'
    finally:
        await spdy.close()


async def test_attach_to_a_tty_container_resizes_it(
    server: StreamingServer, runtime: ShimRuntime
) -> None:
    c = await runtime.run("ttyatt", ["sh"], tty=True, stdin=True)
    url = server.url_for(AttachRequest(c.id, tty=True, stdin=True, stdout=True, stderr=False))
    spdy, protocol = await SpdyClient.connect(url, [V4])
    try:
        ids = await open_command_streams(
            spdy, stdin=True, stdout=True, stderr=False, tty=True, protocol=protocol
        )
        await spdy.send(ids["resize"], b'{"Width":99,"Height":33}')
        await asyncio.sleep(0.2)
        await spdy.send(ids["stdin"], b"stty size\n")
        await spdy.wait_for(ids["stdout"], lambda out: b"33 99" in out)
        await spdy.send(ids["stdin"], b"exit 4\n")
        # An attach reports the end, not the exit code.
        assert await spdy.read_until_fin(ids["error"]) == b'{"metadata":{},"status":"Success"}'
    finally:
        await spdy.close()
