"""Execs, attach, stdin and ttys: the container's stdio as the shim owns it."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

from pyctr.daemon import errors
from pyctr.daemon.runtime.shim_attach import AttachStream
from tests.shim.conftest import Harness


def proc(*args: str, **extra: Any) -> dict[str, Any]:
    return {"args": list(args), "cwd": "/", "env": ["PATH=/bin", "TERM=xterm"], **extra}


async def read_until(stream: AttachStream, needle: bytes, timeout: float = 10.0) -> bytes:
    """Collect output until needle shows up (or the stream ends)."""
    seen = b""
    async with asyncio.timeout(timeout):
        while needle not in seen:
            item = await stream.read()
            if item is None:
                break
            seen += item[1]
    return seen


async def read_all(stream: AttachStream, timeout: float = 10.0) -> dict[str, bytes]:
    out = {"stdout": b"", "stderr": b""}
    async with asyncio.timeout(timeout):
        async for name, data in stream:
            out[name] += data
    return out


# -- exec -----------------------------------------------------------------------


async def test_exec_sync_output_and_exit_code(harness: Harness) -> None:
    client = await harness.spawn("execsync", ["sleep", "100"])
    await client.start()
    res = await client.exec_sync("e1", proc("sh", "-c", "echo out; echo err >&2; exit 3"))
    assert (res.exit_code, res.stdout, res.stderr) == (3, b"out\n", b"err\n")
    assert not res.timed_out and not res.truncated
    # Output beyond the cap is cut, and said so.
    res = await client.exec_sync("e2", proc("sh", "-c", "yes | head -c 10000"), max_output=100)
    assert res.stdout == b"y\n" * 50 and res.truncated
    # The exec shows in state and can be waited for after the fact.
    assert (await client.wait(exec_id="e1")).exit_status == 3
    execs = {e.exec_id: e for e in (await client.state()).execs}
    assert not execs["e1"].running and execs["e1"].exit is not None
    # A missing binary is runc's error, with its words.
    with pytest.raises(errors.PyctrError, match="no-such-tool"):
        await client.exec_sync("e3", proc("/bin/no-such-tool"))
    with pytest.raises(errors.InvalidArgument):
        await client.exec_sync("bad/id", proc("true"))
    await client.delete(force=True)


async def test_processes_get_default_signal_handling(harness: Harness) -> None:
    # Python ignores SIGPIPE; an ignored signal would be inherited through
    # runc into the container unless the shim resets it.
    client = await harness.spawn("sigign", ["grep", "SigIgn", "/proc/self/status"])
    opts = harness.options[-1]
    await client.start()
    await client.wait()
    assert "SigIgn:\t0000000000000000" in harness.log_of(opts)
    await client.delete()
    client = await harness.spawn("sigign2", ["sleep", "100"])
    await client.start()
    res = await client.exec_sync("s", proc("grep", "SigIgn", "/proc/self/status"))
    assert res.stdout == b"SigIgn:\t0000000000000000\n"
    await client.pause()
    with pytest.raises(errors.FailedPrecondition, match="paused"):
        await client.exec_sync("p", proc("true"))
    await client.delete(force=True)


async def test_exec_sync_timeout_kills_it(harness: Harness) -> None:
    client = await harness.spawn("exectimeout", ["sleep", "100"])
    await client.start()
    started = time.monotonic()
    res = await client.exec_sync("slow", proc("sh", "-c", "echo before; sleep 100"), timeout=0.5)
    assert time.monotonic() - started < 5
    assert res.timed_out
    assert res.exit.signal == signal.SIGKILL
    assert res.stdout == b"before\n"
    await client.delete(force=True)


async def test_exec_streams_stdin_and_output(harness: Harness) -> None:
    client = await harness.spawn("execio", ["sleep", "100"])
    await client.start()
    stream = await client.exec("cat", proc("sh", "-c", "cat; echo bye >&2; exit 4"), stdin=True)
    assert stream.pid > 0
    await stream.write(b"hello\n")
    assert await read_until(stream, b"hello\n") == b"hello\n"
    await stream.write(b"x" * 200_000)
    await stream.close_stdin()
    out = await read_all(stream)
    assert out == {"stdout": b"x" * 200_000, "stderr": b"bye\n"}
    assert stream.exit is not None and stream.exit.exit_status == 4
    await stream.close()
    await client.delete(force=True)


async def test_exec_client_that_stops_reading(harness: Harness) -> None:
    client = await harness.spawn("execslow", ["sleep", "100"])
    await client.start()
    stream = await client.exec("flood", proc("sh", "-c", "yes | head -c 20000000; exit 0"))
    await asyncio.sleep(0.5)
    # Not reading: the shim stops reading the process (it blocks, nothing is lost)...
    execs = {e.exec_id: e for e in (await client.state()).execs}
    assert execs["flood"].running
    first = await stream.read()
    assert first is not None and first[1].startswith(b"y\n")
    # ...and once the client is gone, its output no longer holds the process.
    await stream.close()
    exit = await asyncio.wait_for(client.wait(exec_id="flood"), 15)
    assert exit.exit_status == 0
    await client.delete(force=True)


async def test_exec_detached_and_kill(harness: Harness) -> None:
    client = await harness.spawn("execkill", ["sleep", "100"])
    await client.start()
    pid = await client.exec_detached("bg", proc("sleep", "100"))
    pids = {p["pid"]: p["exec_id"] for p in await client.pids()}
    assert pids[pid] == "bg"
    assert await client.kill(signal.SIGTERM, exec_id="bg") is True
    exit = await asyncio.wait_for(client.wait(exec_id="bg"), 10)
    assert exit.signal == signal.SIGTERM
    await client.delete(force=True)


async def test_exec_tty_resize(harness: Harness) -> None:
    client = await harness.spawn("exectty", ["sleep", "100"])
    await client.start()
    stream = await client.exec("tty", proc("sh"), tty=True, stdin=True)
    await client.resize(120, 33, exec_id="tty")
    await stream.write(b"stty size; tty; exit 6\n")
    out = await read_all(stream)
    assert b"33 120" in out["stdout"]
    assert b"/dev/pts/" in out["stdout"]
    assert out["stderr"] == b""  # a tty has one stream
    assert stream.exit is not None and stream.exit.exit_status == 6
    await client.delete(force=True)


# -- the container's own stdio --------------------------------------------------


async def test_tty_container_echo_and_resize(harness: Harness) -> None:
    client = await harness.spawn("ttyctr", ["sh"], tty=True, stdin=True)
    opts = harness.options[-1]
    await client.start()
    stream = await client.attach()
    await stream.resize(100, 40)
    await stream.write(b"echo hi-$((6*7))\n")
    seen = await read_until(stream, b"hi-42")
    assert b"echo hi-$((6*7))" in seen  # the tty echoes what was typed
    await stream.write(b"stty size\n")
    assert b"40 100" in await read_until(stream, b"40 100")
    await client.resize(90, 25)
    await stream.write(b"stty size\n")
    assert b"25 90" in await read_until(stream, b"25 90")
    await stream.write(b"exit 9\n")
    await read_all(stream)
    assert stream.exit is not None and stream.exit.exit_status == 9
    await stream.close()
    assert "hi-42" in harness.log_of(opts)
    await client.delete()


async def test_attach_sees_output_written_after_attaching(harness: Harness) -> None:
    script = "i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo tick $i; usleep 20000; done"
    client = await harness.spawn("attach", ["sh", "-c", script])
    await client.start()
    first = await client.attach()
    second = await client.attach()  # several clients at once
    seen1 = await read_until(first, b"tick 20\n")
    seen2 = await read_until(second, b"tick 20\n")
    assert b"tick 20\n" in seen1 and b"tick 20\n" in seen2
    await first.close()  # one leaving does not disturb the other
    rest = await read_all(second)
    assert b"tick 60\n" in rest["stdout"]
    assert second.exit is not None and second.exit.exit_status == 0
    await second.close()
    await client.delete()


async def test_stdin_delivered_to_container(harness: Harness) -> None:
    client = await harness.spawn(
        "stdin", ["sh", "-c", "read a; echo got $a; cat | wc -c"], stdin=True
    )
    opts = harness.options[-1]
    await client.start()
    stream = await client.attach()
    await stream.write(b"one\n")
    assert b"got one" in await read_until(stream, b"got one")
    await stream.write(b"z" * 100_000)
    # On the same connection as the data: a close_stdin request on another
    # connection is not ordered with frames still in flight.
    await stream.close_stdin()
    out = await read_all(stream)
    assert out["stdout"].strip() == b"100000"
    assert (await client.wait()).exit_status == 0
    await stream.close()
    log = harness.log_of(opts)
    assert " stdout F got one\n" in log and " stdout F 100000\n" in log
    await client.delete()


async def test_attach_to_stopped_container_is_refused(harness: Harness) -> None:
    client = await harness.spawn("attachdead", ["true"])
    await client.start()
    await client.wait()
    with pytest.raises(errors.FailedPrecondition):
        await client.attach()
    with pytest.raises(errors.FailedPrecondition):
        await client.resize(10, 10)
    await client.delete()
