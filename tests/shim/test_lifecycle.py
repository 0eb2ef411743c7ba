"""Create, start, exit, kill, delete: the container's life through its shim."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
from pathlib import Path
from typing import Any

import pytest

from pyctr.daemon import errors
from pyctr.daemon.runtime.shim_launch import read_exit_record, read_shim_pid
from pyctr.daemon.runtime.shim_rpc import connect_shim
from pyctr.daemon.runtime.shim_types import RuncError, ShimOptions
from tests.shim.conftest import Harness, alive, runc, wait_until, zombies_of
from tests.support import cgroups

pytestmark = pytest.mark.root


def _no_pid_namespace(config: dict[str, Any]) -> None:
    # In its own pid namespace a process is init there, and init ignores
    # SIGTERM unless it installs a handler: share the host's to see the signal.
    config["linux"]["namespaces"] = [
        ns for ns in config["linux"]["namespaces"] if ns["type"] != "pid"
    ]


def _runc_state_gone(h: Harness, opts: ShimOptions) -> bool:
    return not (h.runc_root / opts.id).exists()


async def test_exit_code_propagates_and_delete_cleans_up(harness: Harness) -> None:
    client = await harness.spawn("exit7", ["sh", "-c", "echo started; exit 7"])
    opts = harness.options[-1]
    state = await client.state()
    assert state.status == "created"
    assert state.exit is None
    shim_pid = client.shim_pid
    assert read_shim_pid(opts.state_dir) == shim_pid
    # The socket is for root only.
    assert stat.S_IMODE(os.stat(client.socket_path).st_mode) == 0o600

    await client.start()
    exit = await asyncio.wait_for(client.wait(), 10)
    assert (exit.exit_status, exit.signal, exit.oom_killed) == (7, 0, False)
    assert exit.exited_at > 0
    state = await client.state()
    assert state.status == "stopped"
    assert state.exit == exit
    # The same record is on disk, written atomically.
    assert read_exit_record(opts.state_dir) == exit
    assert not (Path(opts.state_dir) / "exit.json.tmp").exists()
    assert harness.cgroup_dirs("exit7"), "cgroup exists until delete"

    result = await client.delete()
    assert result.exit == exit
    assert result.rootfs == str(Path(opts.bundle) / "rootfs")
    assert result.rootfs_unmounted is False
    # The shim exits after delete; runc's state and the cgroup are gone.
    wait_until(lambda: not alive(shim_pid), what="shim exit")
    assert _runc_state_gone(harness, opts)
    assert harness.cgroup_dirs("exit7") == []
    assert not Path(client.socket_path).exists()
    with pytest.raises(errors.Unavailable):
        await connect_shim(opts.state_dir)


async def test_create_failure_reports_runc_error(harness: Harness) -> None:
    with pytest.raises(RuncError) as info:
        await harness.spawn("badexe", ["/bin/no-such-program"])
    assert "no-such-program" in str(info.value)
    opts = harness.options[-1]
    # Nothing is left: no shim, no runc state, no cgroup.
    assert read_shim_pid(opts.state_dir) is None
    assert _runc_state_gone(harness, opts)
    wait_until(lambda: harness.cgroup_dirs("badexe") == [], what="cgroup removal")


async def test_bad_arguments_are_refused(harness: Harness) -> None:
    opts = harness.options_for("badid", ["true"])
    bad = ShimOptions(**{**opts.__dict__, "id": "../escape"})
    from pyctr.daemon.runtime.shim_launch import spawn_shim

    with pytest.raises(errors.InvalidArgument, match="invalid container id"):
        await spawn_shim(bad)
    bad = ShimOptions(**{**opts.__dict__, "bundle": str(harness.base / "nowhere")})
    with pytest.raises(errors.InvalidArgument, match="config.json"):
        await spawn_shim(bad)
    bad = ShimOptions(**{**opts.__dict__, "runc": "/nonexistent/runc"})
    with pytest.raises(errors.InvalidArgument, match="/nonexistent/runc"):
        await spawn_shim(bad)
    assert read_shim_pid(opts.state_dir) is None


async def test_sigterm_kill_leaves_signal_in_exit_record(harness: Harness) -> None:
    client = await harness.spawn("term", ["sleep", "100"], edit=_no_pid_namespace)
    await client.start()
    assert await client.kill(signal.SIGTERM) is True
    exit = await asyncio.wait_for(client.wait(), 10)
    assert (exit.signal, exit.exit_status) == (signal.SIGTERM, 128 + signal.SIGTERM)
    # Killing what already ended is not an error.
    assert await client.kill(signal.SIGKILL) is False
    await client.delete()


async def test_sigkill_all_in_pid_namespace(harness: Harness) -> None:
    client = await harness.spawn("kill9", ["sh", "-c", "sleep 100 & sleep 100"])
    await client.start()
    await client.kill(signal.SIGKILL, all=True)
    exit = await asyncio.wait_for(client.wait(), 10)
    assert (exit.signal, exit.exit_status) == (9, 137)
    await client.delete()


async def test_exit_while_no_client_is_connected(harness: Harness) -> None:
    client = await harness.spawn("noclient", ["sh", "-c", "sleep 0.3; exit 3"])
    opts = harness.options[-1]
    await client.start()
    await harness.close_clients()
    wait_until(lambda: read_exit_record(opts.state_dir) is not None, what="exit record")
    record = read_exit_record(opts.state_dir)
    assert record is not None and record.exit_status == 3
    raw = json.loads((Path(opts.state_dir) / "exit.json").read_text())
    assert raw["id"] == opts.id
    # A new client sees the same exit and can clean up.
    client = await harness.connect(opts)
    assert (await client.state()).exit == record
    await client.delete()


async def test_state_errors_are_clear(harness: Harness) -> None:
    client = await harness.spawn("errs", ["sleep", "100"])
    with pytest.raises(errors.FailedPrecondition, match="is created"):
        await client.pause()
    with pytest.raises(errors.NotFound):
        await client.wait(exec_id="nope")
    with pytest.raises(errors.Unimplemented):
        await client.call("frobnicate")
    with pytest.raises(errors.InvalidArgument):
        await client.call("kill", signal="TERM")
    with pytest.raises(errors.FailedPrecondition, match="protocol version"):
        await client.call("state", v=99)
    await client.start()
    with pytest.raises(errors.FailedPrecondition, match="is running"):
        await client.start()
    with pytest.raises(errors.FailedPrecondition, match="is running"):
        await client.delete()
    with pytest.raises(errors.FailedPrecondition):
        await client.shutdown()
    # The connection still works after errors; force delete kills it.
    result = await client.delete(force=True)
    assert result.exit is not None and result.exit.signal == signal.SIGKILL


async def test_malformed_requests_get_error_replies(harness: Harness) -> None:
    client = await harness.spawn("raw", ["sleep", "100"])
    reader, writer = await asyncio.open_unix_connection(client.socket_path)
    writer.write(b'{"id": 1, "op": \n[1,2]\n{"id": 3, "op": "hello"}\n')
    replies = [json.loads(await reader.readline()) for _ in range(3)]
    writer.close()
    await writer.wait_closed()
    assert replies[0]["error"]["code"] == "invalid_argument"
    assert replies[1]["error"]["code"] == "invalid_argument"
    assert replies[2]["result"]["version"] == 1
    await client.delete(force=True)


async def test_delete_created_container(harness: Harness) -> None:
    client = await harness.spawn("created", ["sleep", "100"])
    opts = harness.options[-1]
    state = await client.state()
    result = await client.delete()
    assert result.exit is not None and result.exit.signal == signal.SIGKILL
    wait_until(lambda: not alive(state.shim_pid), what="shim exit")
    assert _runc_state_gone(harness, opts)
    assert not alive(state.pid)


async def test_no_zombies_after_many_processes(harness: Harness) -> None:
    client = await harness.spawn("zombies", ["sleep", "100"], edit=_no_pid_namespace)
    await client.start()
    process = {"args": ["sh", "-c", "sleep 0.01 & exit 0"], "cwd": "/", "env": ["PATH=/bin"]}
    for i in range(10):
        result = await client.exec_sync(f"z{i}", process)
        assert result.exit_code == 0
    # Without a pid namespace the backgrounded sleeps are orphaned to the
    # shim (the subreaper) and must be reaped by it, too.
    await asyncio.sleep(0.3)
    assert zombies_of(client.shim_pid) == []
    await client.delete(force=True)


async def test_runc_state_dir_cleaned_after_delete(harness: Harness) -> None:
    client = await harness.spawn("runcstate", ["true"])
    opts = harness.options[-1]
    assert (harness.runc_root / opts.id).is_dir()
    assert opts.id in runc(harness.runc_root, "list", "-q").stdout
    await client.start()
    await client.wait()
    await client.delete()
    assert opts.id not in runc(harness.runc_root, "list", "-q").stdout
    assert _runc_state_gone(harness, opts)


@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "tty"])
async def test_exit_kills_what_init_left_behind(harness: Harness, tty: bool) -> None:
    # Without a pid namespace of its own (as in a pod that shares one) a
    # background child outlives init, holding its output open. The exit is
    # final only once that output ended, and the shim ends it: it kills the
    # rest of the container's cgroup. So by the time `wait` answers, before
    # any delete, the child is dead and every line is in the log.
    script = "sleep 1000 & echo child $!; i=0; while [ $i -lt 200 ]; do i=$((i+1)); echo l$i; done"
    client = await harness.spawn(
        f"leftover-{int(tty)}", ["sh", "-c", script + "; exit 7"], tty=tty, edit=_no_pid_namespace
    )
    opts = harness.options[-1]
    await client.start()
    exit = await asyncio.wait_for(client.wait(), 30)
    assert exit.exit_status == 7
    lines = [line.split(" ", 3)[3].rstrip("\r") for line in harness.log_of(opts).splitlines()]
    child = int(lines[0].removeprefix("child "))
    assert not alive(child)
    assert lines[1:] == [f"l{i}" for i in range(1, 201)]
    await client.delete()


async def test_leftover_kill_spares_other_cgroups(harness: Harness) -> None:
    # A process of the container's that moved to another cgroup is not the
    # container's to kill: it keeps running, and the exit is final after the
    # bounded wait for the output it still holds.
    script = "sleep 1000 & echo $!; read x; echo bye"
    client = await harness.spawn("spare", ["sh", "-c", script], stdin=True, edit=_no_pid_namespace)
    opts = harness.options[-1]
    await client.start()
    wait_until(lambda: harness.log_of(opts).strip(), what="the child's pid")
    child = int(harness.log_of(opts).split()[3])
    try:
        for hierarchy in cgroups.hierarchies():
            (hierarchy / "cgroup.procs").write_text(str(child))
        await client.close_stdin()
        exit = await asyncio.wait_for(client.wait(), 30)
        assert exit.exit_status == 0
        assert alive(child)
        assert harness.log_of(opts).split()[-1] == "bye"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
    await client.delete()
