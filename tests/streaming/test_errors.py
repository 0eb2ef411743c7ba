"""Bad tokens, bad upgrades, vanishing clients: clear answers, nothing left behind."""

from __future__ import annotations

import asyncio
import struct
from urllib.parse import urlsplit

import aiohttp
import pytest

from pyctr.daemon.config import Streaming
from pyctr.daemon.runtime.states import Status
from pyctr.daemon.streaming.backend import RuntimeBackend
from pyctr.daemon.streaming.requests import AttachRequest, ExecRequest
from pyctr.daemon.streaming.server import StreamingServer
from tests.streaming.conftest import ShimRuntime
from tests.streaming.kube import V4, V5, WsClient, open_command_streams, spdy_command
from tests.streaming.spdyclient import GOAWAY, HttpError, SpdyClient, http_upgrade

pytestmark = pytest.mark.root


def established(server: StreamingServer) -> int:
    """Server-side sockets still held open: ESTABLISHED, or CLOSE_WAIT (peer gone, we not)."""
    port = urlsplit(server.base_url).port
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] in ("01", "08"):
                count += 1
    return count


async def wait_until(predicate: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def running_execs(runtime: ShimRuntime, cid: str) -> list[str]:
    state = await runtime.shim(cid).state()
    return [e.exec_id for e in state.execs if e.running]


async def no_execs_left(runtime: ShimRuntime, cid: str) -> None:
    """Within a few seconds, no exec of the container is still running."""
    async with asyncio.timeout(5):
        while running := await running_execs(runtime, cid):
            await asyncio.sleep(0.05)
    assert not running


def exec_req(cid: str, cmd: list[str], stdin: bool = False) -> ExecRequest:
    return ExecRequest(cid, tuple(cmd), False, stdin, True, True)


async def test_tokens_are_single_use_scoped_and_expire(
    server: StreamingServer, runtime: ShimRuntime
) -> None:
    c = await runtime.run("tok", ["sleep", "1000"])
    url = server.url_for(exec_req(c.id, ["true"]))
    assert (await spdy_command(url)).status["status"] == "Success"
    with pytest.raises(HttpError) as e:  # used
        await spdy_command(url)
    assert e.value.status == 404 and b"token" in e.value.body
    for bad in (server.base_url + "/exec/nonsense", server.base_url + "/exec/"):
        with pytest.raises(HttpError) as e:
            await spdy_command(bad)
        assert e.value.status == 404
    # An exec token is no attach token.
    url = server.url_for(exec_req(c.id, ["true"])).replace("/exec/", "/attach/")
    with pytest.raises(HttpError) as e:
        await spdy_command(url)
    assert e.value.status == 404
    server.cache.ttl = 0.05
    url = server.url_for(exec_req(c.id, ["true"]))
    await asyncio.sleep(0.1)
    with pytest.raises(HttpError) as e:
        await spdy_command(url)
    assert e.value.status == 404


async def test_bad_upgrade_requests(server: StreamingServer, runtime: ShimRuntime) -> None:
    c = await runtime.run("upg", ["sleep", "1000"])

    async def attempt(headers: list[tuple[str, str]]) -> tuple[int, dict[str, list[str]]]:
        url = server.url_for(exec_req(c.id, ["true"]))
        reader, writer, status, got = await http_upgrade(url, headers)
        writer.close()
        out: dict[str, list[str]] = {}
        for k, v in got:
            out.setdefault(k.lower(), []).append(v)
        return status, out

    upgrade = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
    status, _ = await attempt(upgrade)  # no X-Stream-Protocol-Version
    assert status == 400
    status, headers = await attempt([*upgrade, ("X-Stream-Protocol-Version", "v9.nope")])
    assert status == 403
    assert headers["x-accepted-stream-protocol-versions"] == [
        V4,
        "v3.channel.k8s.io",
        "v2.channel.k8s.io",
        "channel.k8s.io",
    ]
    status, _ = await attempt([("X-Stream-Protocol-Version", V4)])  # no upgrade headers
    assert status == 400
    status, _ = await attempt([("Connection", "Upgrade"), ("Upgrade", "h2c"),
                               ("X-Stream-Protocol-Version", V4)])  # fmt: skip
    assert status == 400
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        await WsClient.connect(server.url_for(exec_req(c.id, ["true"])), ["v9.nope"])
    assert e.value.status == 403
    assert await running_execs(runtime, c.id) == []


async def test_client_vanishing_mid_exec_kills_the_process(
    server: StreamingServer, runtime: ShimRuntime
) -> None:
    c = await runtime.run("gone", ["sleep", "1000"])
    url = server.url_for(exec_req(c.id, ["sh", "-c", "echo ready; exec sleep 1000"], stdin=True))
    client, protocol = await SpdyClient.connect(url, [V4])
    ids = await open_command_streams(
        client, stdin=True, stdout=True, stderr=True, tty=False, protocol=protocol
    )
    await client.wait_for(ids["stdout"], lambda out: out == b"ready\n")
    assert len(await running_execs(runtime, c.id)) == 1
    client.writer.transport.abort()  # no FIN, no GOAWAY: the client is just gone
    await client.close()
    await wait_until(lambda: not server._active)
    await no_execs_left(runtime, c.id)
    await wait_until(lambda: established(server) == 0)


async def test_websocket_client_vanishing_kills_the_process(
    server: StreamingServer, runtime: ShimRuntime
) -> None:
    c = await runtime.run("wsgone", ["sleep", "1000"])
    url = server.url_for(exec_req(c.id, ["sh", "-c", "echo ready; exec sleep 1000"], stdin=True))
    ws = await WsClient.connect(url, [V5])
    async with asyncio.timeout(10):
        while b"ready" not in ws.channels.get(1, b""):
            await ws.receive()
    ws.ws._response.connection.transport.abort()  # type: ignore[union-attr]
    await ws.session.close()
    await wait_until(lambda: not server._active)
    await no_execs_left(runtime, c.id)
    await wait_until(lambda: established(server) == 0)


async def test_client_that_never_opens_its_streams_is_dropped(
    server: StreamingServer, runtime: ShimRuntime
) -> None:
    c = await runtime.run("slow", ["sleep", "1000"])
    client, _ = await SpdyClient.connect(server.url_for(exec_req(c.id, ["true"])), [V4])
    try:
        await client.open_stream({"streamType": "error"})  # and then nothing
        async with asyncio.timeout(server.config.stream_creation_timeout + 5):
            await client.closed.wait()
        assert client.goaway is not None
        assert (await runtime.shim(c.id).state()).execs == []  # nothing was started
    finally:
        await client.close()
    await wait_until(lambda: established(server) == 0)


async def test_garbage_after_the_upgrade_ends_with_goaway(
    server: StreamingServer, runtime: ShimRuntime
) -> None:
    c = await runtime.run("junk", ["sleep", "1000"])
    client, _ = await SpdyClient.connect(server.url_for(exec_req(c.id, ["true"])), [V4])
    try:
        client.writer.write(b"\xff" * 8 + b"garbage")  # a "control frame" of version 32767
        async with asyncio.timeout(10):
            await client.closed.wait()
        goaway = [f for f in client.frames if f.type == GOAWAY]
        assert goaway and struct.unpack(">II", goaway[0].payload)[1] == 1  # PROTOCOL_ERROR
    finally:
        await client.close()
    await wait_until(lambda: established(server) == 0)


async def test_stopping_the_server_ends_sessions_and_their_execs(
    server: StreamingServer, runtime: ShimRuntime
) -> None:
    c = await runtime.run("stop", ["sleep", "1000"])
    url = server.url_for(exec_req(c.id, ["sh", "-c", "echo ready; exec sleep 1000"]))
    client, protocol = await SpdyClient.connect(url, [V4])
    try:
        ids = await open_command_streams(
            client, stdin=False, stdout=True, stderr=True, tty=False, protocol=protocol
        )
        await client.wait_for(ids["stdout"], lambda out: out == b"ready\n")
        async with asyncio.timeout(10):
            await server.stop()
            await client.closed.wait()
        await no_execs_left(runtime, c.id)
    finally:
        await client.close()


async def test_container_gone_before_the_client_comes(
    server: StreamingServer, runtime: ShimRuntime
) -> None:
    c = await runtime.run("dead", ["sleep", "1000"])
    url = server.url_for(AttachRequest(c.id, tty=False, stdin=False, stdout=True, stderr=True))
    runtime.get(c.id).status = Status.EXITED
    result = await spdy_command(url)
    assert result.status["reason"] == "InternalError"
    assert "not running" in result.status["message"]


async def test_idle_connections_are_closed(runtime: ShimRuntime) -> None:
    c = await runtime.run("idle", ["sleep", "1000"])
    cfg = Streaming(address="127.0.0.1", port=0, token_ttl=5.0, idle_timeout=0.5)
    server = StreamingServer(cfg, RuntimeBackend(runtime))
    await server.start()
    try:
        url = server.url_for(exec_req(c.id, ["sh", "-c", "echo ready; exec sleep 1000"]))
        client, protocol = await SpdyClient.connect(url, [V4])
        try:
            ids = await open_command_streams(
                client, stdin=False, stdout=True, stderr=True, tty=False, protocol=protocol
            )
            await client.wait_for(ids["stdout"], lambda out: out == b"ready\n")
            async with asyncio.timeout(10):
                await client.closed.wait()  # nothing moved for 0.5 s
            await no_execs_left(runtime, c.id)
        finally:
            await client.close()
    finally:
        await server.stop()
