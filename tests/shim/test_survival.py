"""The shim outlives its starter, a dead shim is detected and cleaned, and it stays small."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pyctr.daemon import errors
from pyctr.daemon.runtime.shim_launch import cleanup_dead_shim, read_exit_record, read_shim_pid
from pyctr.daemon.runtime.shim_rpc import connect_shim
from tests.shim.conftest import RUNC, Harness, alive, runc, wait_until

PSS_LIMIT_KB = 20 * 1024


def pss_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        out[key] = int(value.split()[0])
    return out


async def test_shim_survives_the_death_of_its_starter(harness: Harness) -> None:
    opts = harness.options_for("orphan", ["sleep", "100"])
    # A stand-in for a daemon that starts the shim and then dies by kill -9,
    # with its whole process group.
    starter = textwrap.dedent(
        f"""
        import asyncio, json, sys, time
        from pyctr.daemon.runtime.shim_launch import spawn_shim
        from pyctr.daemon.runtime.shim_types import ShimOptions
        async def main():
            client = await spawn_shim(ShimOptions(**{opts.__dict__!r}))
            await client.start()
            print(json.dumps({{"shim_pid": client.shim_pid}}), flush=True)
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
        shim_pid = json.loads(line)["shim_pid"]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert os.getsid(shim_pid) != proc.pid, "the shim left the starter's session"
    await asyncio.sleep(0.2)
    assert alive(shim_pid)
    client = await harness.connect(opts)
    state = await client.state()
    assert state.status == "running" and alive(state.pid)
    res = await client.exec_sync(
        "after", {"args": ["echo", "still here"], "cwd": "/", "env": ["PATH=/bin"]}
    )
    assert res.stdout == b"still here\n"
    await client.kill(signal.SIGKILL)
    assert (await client.wait()).signal == signal.SIGKILL
    await client.delete()
    wait_until(lambda: not alive(shim_pid), what="shim exit")


async def test_killed_shim_is_unavailable_and_cleaned_up(harness: Harness) -> None:
    client = await harness.spawn("shimkill", ["sleep", "100"])
    opts = harness.options[-1]
    await client.start()
    state = await client.state()
    waiting = asyncio.create_task(client.wait())
    await asyncio.sleep(0.1)

    os.kill(state.shim_pid, signal.SIGKILL)
    with pytest.raises(errors.Unavailable):
        await asyncio.wait_for(waiting, 10)
    with pytest.raises(errors.Unavailable):
        await client.state()
    wait_until(lambda: not alive(state.shim_pid), what="shim death")
    with pytest.raises(errors.Unavailable):
        await connect_shim(opts.state_dir)
    assert read_shim_pid(opts.state_dir) is None  # a stale pid file is not trusted
    # The container outlived its shim; the cleanup helper takes it all down.
    assert alive(state.pid)
    record = await cleanup_dead_shim(opts.state_dir, opts.id, runc=RUNC, runc_root=opts.runc_root)
    assert record.exit_status == 255  # the real status died with the shim
    assert read_exit_record(opts.state_dir) == record
    wait_until(lambda: not alive(state.pid), what="container death")
    assert opts.id not in runc(harness.runc_root, "list", "-q").stdout
    assert not (harness.runc_root / opts.id).exists()
    assert harness.cgroup_dirs("shimkill") == []
    assert not Path(opts.state_dir, "shim.sock").exists()
    # Cleaning twice is harmless.
    again = await cleanup_dead_shim(opts.state_dir, opts.id, runc=RUNC, runc_root=opts.runc_root)
    assert again == record


async def test_shim_memory_stays_small(harness: Harness) -> None:
    clients = []
    for i in range(3):
        client = await harness.spawn(f"pss{i}", ["sleep", "100"])
        await client.start()
        # Exercise the paths a real shim takes, so lazily loaded code counts.
        await client.exec_sync("probe", {"args": ["true"], "cwd": "/", "env": ["PATH=/bin"]})
        await client.stats()
        clients.append(client)
    await asyncio.sleep(0.2)
    numbers = [pss_kb(c.shim_pid) for c in clients]
    for n in numbers:
        assert n["Pss"] < PSS_LIMIT_KB, numbers
    pid = clients[0].shim_pid
    maps = Path(f"/proc/{pid}/maps").read_text()
    # The launcher's ctypes must not be in the serving process.
    assert "_ctypes" not in maps and "libffi" not in maps
    sys.stdout.write(
        "\nshim PSS kB (3 shims): "
        + ", ".join(f"{n['Pss']} (anon {n['Pss_Anon']}, file {n['Pss_File']})" for n in numbers)
        + "\n"
    )
    for client in clients:
        await client.delete(force=True)
