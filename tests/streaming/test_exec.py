"""Exec over SPDY, as client-go and crictl speak it, into real runc containers."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from pyctr.daemon.streaming.requests import ExecRequest
from pyctr.daemon.streaming.server import StreamingServer
from tests.streaming.conftest import ShimRuntime
from tests.streaming.kube import V4, open_command_streams, spdy_command
from tests.streaming.spdyclient import SYN_REPLY, SpdyClient

pytestmark = pytest.mark.root


def plain(terminal_output: bytes) -> bytes:
    """What a terminal shows, without its escape sequences and carriage returns."""
    return re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]|\r", b"", terminal_output)


def exec_url(
    server: StreamingServer,
    cid: str,
    cmd: list[str],
    *,
    tty: bool = False,
    stdin: bool = False,
    stdout: bool = True,
    stderr: bool = True,
) -> str:
    return server.url_for(ExecRequest(cid, tuple(cmd), tty, stdin, stdout, stderr))


async def test_exec_reads_stdin_prints_and_reports_exit_code(
    server: StreamingServer, runtime: ShimRuntime
) -> None:
    c = await runtime.run("ex", ["sleep", "1000"])
    url = exec_url(server, c.id, ["sh", "-c", "read x; echo got $x; echo oops >&2; exit 3"],
                   stdin=True)  # fmt: skip
    result = await spdy_command(url, stdin=b"hello\n")
    assert result.protocol == V4
    assert result.stdout == b"got hello\n"
    assert result.stderr == b"oops\n"
    # What client-go's v4 error decoder reads: a metav1.Status with the code as a cause.
    status = result.status
    assert status["status"] == "Failure"
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    # Every stream the client opened was replied to, with no headers.
    replies = [f for f in result.frames if f.type == SYN_REPLY]
    assert len(replies) == 4 and all(f.headers == {} for f in replies)


async def test_exec_success_and_no_stdin(server: StreamingServer, runtime: ShimRuntime) -> None:
    c = await runtime.run("ok", ["sleep", "1000"])
    # Without stdin the process reads EOF at once.
    url = exec_url(server, c.id, ["sh", "-c", "cat; echo done"])
    result = await spdy_command(url)
    assert result.stdout == b"done\n"
    assert result.status == {"metadata": {}, "status": "Success"}


async def test_negotiation_and_older_protocols(
    server: StreamingServer, runtime: ShimRuntime
) -> None:
    c = await runtime.run("old", ["sleep", "1000"])
    cmd = ["sh", "-c", "echo hi; exit 7"]
    # The client's order wins among what the server has; v5 is WebSocket-only.
    result = await spdy_command(
        exec_url(server, c.id, cmd), protocols=["v5.channel.k8s.io", V4, "v3.channel.k8s.io"]
    )
    assert result.protocol == V4 and result.status["details"]["causes"][0]["message"] == "7"
    for old in ("v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"):
        result = await spdy_command(exec_url(server, c.id, cmd), protocols=[old])
        assert result.protocol == old and result.stdout == b"hi\n"
        # Before v4 the error stream carries the message as text.
        assert b"non-zero exit code" in result.error and b"7" in result.error
    result = await spdy_command(exec_url(server, c.id, ["true"]), protocols=["v3.channel.k8s.io"])
    assert result.error == b""  # success: nothing at all


async def test_tty_exec_echoes_and_resizes(server: StreamingServer, runtime: ShimRuntime) -> None:
    c = await runtime.run("tty", ["sleep", "1000"])
    url = exec_url(server, c.id, ["sh"], tty=True, stdin=True, stderr=False)
    client, protocol = await SpdyClient.connect(url, [V4])
    try:
        ids = await open_command_streams(
            client, stdin=True, stdout=True, stderr=False, tty=True, protocol=protocol
        )
        assert set(ids) == {"error", "stdin", "stdout", "resize"}
        # kubectl sends the terminal's size first, as JSON TerminalSize objects.
        await client.send(ids["resize"], json.dumps({"Width": 123, "Height": 45}).encode())
        await client.send(ids["stdin"], b"stty size\n")
        await client.wait_for(ids["stdout"], lambda out: b"45 123" in out)
        # Typed only once the resize is applied: busybox redraws the line being edited on
        # SIGWINCH, which would split the echo this checks.
        await client.send(ids["stdin"], b"echo mark$((6*7))\n")
        await client.wait_for(ids["stdout"], lambda out: b"mark42" in out)
        # The line discipline echoed what we typed: the command itself is there.
        await client.wait_for(ids["stdout"], lambda out: b"echo mark$((6*7))" in plain(out))
        await client.send(ids["resize"], b'{"Width":80,"Height":24}\n')
        await asyncio.sleep(0.2)
        await client.send(ids["stdin"], b"stty size; exit 5\n")
        out = await client.read_until_fin(ids["stdout"])
        assert b"24 80" in out
        status = json.loads(await client.read_until_fin(ids["error"]))
        assert status["details"]["causes"][0]["message"] == "5"
        assert b"\r\n" in out  # a terminal's output, not a pipe's
    finally:
        await client.close()


async def test_large_output_within_the_clients_windows(
    server: StreamingServer, runtime: ShimRuntime
) -> None:
    """A client that does flow control is never sent more than its window."""
    c = await runtime.run("big", ["sleep", "1000"])
    size = 8 << 20
    url = exec_url(server, c.id, ["sh", "-c", f"head -c {size} /dev/zero | tr '\\0' x"])
    result = await spdy_command(url, flow_control=32768)  # asserts no window violation
    assert result.stdout == b"x" * size
    assert result.status["status"] == "Success"


async def test_large_stdin_and_output_without_flow_control(
    server: StreamingServer, runtime: ShimRuntime
) -> None:
    """spdystream ignores windows: stdin is pushed as fast as TCP takes it."""
    c = await runtime.run("pipe", ["sleep", "1000"])
    data = bytes(range(256)) * (40 * 1024)  # 10 MiB
    url = exec_url(server, c.id, ["sh", "-c", "cat; echo end >&2"], stdin=True)
    result = await spdy_command(url, stdin=data)
    assert len(result.stdout) == len(data) and result.stdout == data
    assert result.stderr == b"end\n"


async def test_exec_of_a_missing_binary_reports_an_internal_error(
    server: StreamingServer, runtime: ShimRuntime
) -> None:
    c = await runtime.run("nobin", ["sleep", "1000"])
    result = await spdy_command(exec_url(server, c.id, ["/no/such/binary"]))
    status = result.status
    assert status["status"] == "Failure" and status["reason"] == "InternalError"
    assert "error executing command in container" in status["message"]


async def test_several_execs_at_once(server: StreamingServer, runtime: ShimRuntime) -> None:
    c = await runtime.run("many", ["sleep", "1000"])
    urls = [exec_url(server, c.id, ["sh", "-c", f"sleep 0.3; echo n{i}; exit {i}"])
            for i in range(5)]  # fmt: skip
    results = await asyncio.gather(*(spdy_command(u) for u in urls))
    for i, result in enumerate(results):
        assert result.stdout == f"n{i}\n".encode()
        if i:
            assert result.status["details"]["causes"][0]["message"] == str(i)
