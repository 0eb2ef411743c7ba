"""Shims forked from the zygote: same behaviour as launched ones, shared memory, no dependency."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyctr.daemon import errors
from pyctr.daemon.runtime.shim_launch import read_shim_pid, spawn_shim
from pyctr.daemon.runtime.shim_rpc import ShimClient
from pyctr.daemon.runtime.shim_types import RuncError
from pyctr.daemon.runtime.zygote import ZYGOTE_MAIN, ShimZygote
from tests.shim.conftest import Harness, alive, wait_until
from tests.shim.test_survival import pss_kb

SLEEP = ["sleep", "100"]


@pytest.fixture
async def zygote(harness: Harness) -> AsyncIterator[ShimZygote]:
    z = ShimZygote(harness.base / "zygote")
    try:
        yield z
    finally:
        await z.close()


async def _spawn(harness: Harness, zygote: ShimZygote | None, name: str) -> ShimClient:
    client = await spawn_shim(harness.options_for(name, SLEEP), zygote=zygote)
    harness.clients.append(client)
    return client


def _stat(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def _ppid(pid: int) -> int:
    return int(_stat(pid)[1])


def _fd_targets(pid: int) -> dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return out


async def test_forked_shim_is_a_detached_subreaper_like_a_launched_one(
    harness: Harness, zygote: ShimZygote
) -> None:
    client = await _spawn(harness, zygote, "forked")
    opts = harness.options[-1]
    assert zygote.running and zygote.starts == 1
    shim_pid = client.shim_pid
    cmdline = Path(f"/proc/{shim_pid}/cmdline").read_bytes().split(b"\0")
    assert ZYGOTE_MAIN.encode() in cmdline and b"--serve" not in cmdline, "forked, not launched"
    assert Path(f"/proc/{shim_pid}/comm").read_text().strip() == "pyctr-shim"
    # Not the zygote's child (it exits with the daemon), in a session of its own.
    assert _ppid(shim_pid) != zygote.pid
    assert os.getsid(shim_pid) == shim_pid
    assert read_shim_pid(opts.state_dir) == shim_pid
    await client.start()
    state = await client.state()
    # A subreaper: runc's container process was re-parented to the shim.
    assert _ppid(state.pid) == shim_pid
    # Only stdio (the shim log), the loop's fds and the shim's own sockets:
    # nothing of the zygote's (its control socket) and no readiness pipe.
    fds = _fd_targets(shim_pid)
    assert fds[1] == fds[2] == str(Path(opts.state_dir) / "shim.log")
    zygote_sockets = {t for t in _fd_targets(zygote.pid).values() if t.startswith("socket:")}
    assert not zygote_sockets & set(fds.values())
    assert not any(t.startswith("pipe:") and fd < 3 for fd, t in fds.items())
    res = await client.exec_sync("e1", {"args": ["echo", "hi"], "cwd": "/", "env": ["PATH=/bin"]})
    assert res.stdout == b"hi\n"
    await client.kill(signal.SIGKILL)
    assert (await asyncio.wait_for(client.wait(), 10)).signal == signal.SIGKILL
    await client.delete()
    wait_until(lambda: not alive(shim_pid), what="shim exit")


async def test_errors_arrive_as_from_a_launched_shim(harness: Harness, zygote: ShimZygote) -> None:
    with pytest.raises(RuncError, match="no-such-program"):
        await spawn_shim(harness.options_for("badexe", ["/bin/no-such-program"]), zygote=zygote)
    assert read_shim_pid(harness.options[-1].state_dir) is None
    opts = harness.options_for("badid", SLEEP)
    bad = type(opts)(**{**opts.__dict__, "id": "../escape"})
    with pytest.raises(errors.InvalidArgument, match="invalid container id"):
        await spawn_shim(bad, zygote=zygote)
    assert zygote.starts == 1 and zygote.running  # the zygote is unharmed


async def test_shims_outlive_the_zygote_which_is_restarted(
    harness: Harness, zygote: ShimZygote
) -> None:
    first = await _spawn(harness, zygote, "before")
    await first.start()
    old = zygote.pid
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: not alive(old), what="zygote death")
    assert alive(first.shim_pid)
    assert (await first.state()).status == "running"
    second = await _spawn(harness, zygote, "after")
    assert zygote.starts == 2 and zygote.pid != old
    await second.start()
    for client in (first, second):
        await client.delete(force=True)


async def test_without_a_zygote_shims_are_launched(harness: Harness) -> None:
    broken = ShimZygote(harness.base / "broken", python="/nonexistent/python3")
    client = await _spawn(harness, broken, "fallback")
    cmdline = Path(f"/proc/{client.shim_pid}/cmdline").read_bytes().split(b"\0")
    assert b"--serve" in cmdline and not broken.running
    await client.start()
    await client.delete(force=True)
    await broken.close()


async def test_zygote_exits_with_its_daemon_and_its_shims_stay(harness: Harness) -> None:
    opts = harness.options_for("orphaned", SLEEP)
    # A stand-in daemon: starts a zygote, forks a shim through it, dies by kill -9.
    starter = textwrap.dedent(
        f"""
        import asyncio, json, time
        from pyctr.daemon.runtime.shim_launch import spawn_shim
        from pyctr.daemon.runtime.shim_types import ShimOptions
        from pyctr.daemon.runtime.zygote import ShimZygote
        async def main():
            z = ShimZygote({str(harness.base / "z2")!r})
            client = await spawn_shim(ShimOptions(**{opts.__dict__!r}), zygote=z)
            await client.start()
            print(json.dumps({{"shim": client.shim_pid, "zygote": z.pid}}), flush=True)
            time.sleep(100)
        asyncio.run(main())
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", starter], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        pids = json.loads(line)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    wait_until(lambda: not alive(pids["zygote"]), what="the zygote to exit")
    assert alive(pids["shim"])
    client = await harness.connect(opts)
    assert (await client.state()).status == "running"
    await client.delete(force=True)
    wait_until(lambda: not alive(pids["shim"]), what="shim exit")


async def test_forked_shims_share_the_interpreter(harness: Harness, zygote: ShimZygote) -> None:
    launched = await _spawn(harness, None, "launched")
    forked = [await _spawn(harness, zygote, f"forked{i}") for i in range(4)]
    for client in (launched, *forked):
        await client.start()
        await client.exec_sync("probe", {"args": ["true"], "cwd": "/", "env": ["PATH=/bin"]})
        await client.stats()
    await asyncio.sleep(0.2)
    mine = [pss_kb(c.shim_pid) for c in forked]
    theirs = pss_kb(launched.shim_pid)
    sys.stdout.write(f"\nPSS kB: launched {theirs['Pss']}, forked {[m['Pss'] for m in mine]}\n")
    # The heap built by the zygote's imports is shared, not copied.
    for m in mine:
        assert m["Pss_Anon"] < theirs["Pss_Anon"], (m, theirs)
    for client in (launched, *forked):
        await client.delete(force=True)
