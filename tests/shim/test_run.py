"""--start: the shim creates and starts in one `runc run --detach`."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from pyctr.daemon.runtime.shim_launch import read_shim_pid, spawn_shim
from pyctr.daemon.runtime.shim_rpc import ShimClient
from pyctr.daemon.runtime.shim_types import RuncError, ShimOptions
from tests.shim.conftest import Harness, alive, wait_until


async def _run(harness: Harness, name: str, args: list[str], **kw: Any) -> ShimClient:
    opts = harness.options_for(name, args, **kw)
    client = await spawn_shim(ShimOptions(**{**opts.__dict__, "start": True}))
    harness.clients.append(client)
    return client


async def test_spawn_returns_the_container_running(harness: Harness) -> None:
    client = await _run(harness, "run", ["sh", "-c", "echo hello; sleep 100"])
    opts = harness.options[-1]
    state = await client.state()
    assert state.status == "running" and state.pid == client.pid and alive(client.pid)
    shim_log = Path(opts.state_dir, "shim.log").read_text()
    assert f"container {opts.id} started, pid {client.pid}" in shim_log
    wait_until(lambda: " stdout F hello" in harness.log_of(opts), what="output in the log")
    # Already started: a start is refused, not re-run.
    with pytest.raises(Exception, match="running"):
        await client.start()
    stats = await client.stats()
    assert stats.pids_current and stats.pids_current >= 1
    await client.kill(signal.SIGKILL)
    assert (await asyncio.wait_for(client.wait(), 10)).signal == signal.SIGKILL
    await client.delete()


async def test_an_instant_exit_keeps_its_cgroup_and_status(harness: Harness) -> None:
    # The init may be a zombie before the shim looks at it: its cgroup comes
    # from config.json, not from /proc (which names the v1 roots for a zombie).
    client = await _run(harness, "instant", ["sh", "-c", "exit 3"])
    exit = await asyncio.wait_for(client.wait(), 10)
    assert exit.exit_status == 3 and exit.oom_killed is False
    stats = await client.stats()
    assert harness.cgroup_dirs("instant"), "the container's own cgroup, until delete"
    # Not the root cgroup's figures (the whole machine's memory).
    assert stats.memory_usage is not None and stats.memory_usage < 64 << 20, stats
    await client.delete()
    assert harness.cgroup_dirs("instant") == []


def _memory_limit(config: dict[str, Any]) -> None:
    config["linux"]["resources"]["memory"] = {"limit": 16 << 20}


async def test_oom_kill_right_at_start_is_reported(harness: Harness) -> None:
    script = "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived"
    client = await _run(harness, "oomrun", ["sh", "-c", script], edit=_memory_limit)
    exit = await asyncio.wait_for(client.wait(), 20)
    assert exit.oom_killed is True and exit.signal == signal.SIGKILL
    await client.delete()


async def test_without_an_absolute_cgroups_path_it_creates_then_starts(harness: Harness) -> None:
    def relative(config: dict[str, Any]) -> None:
        config["linux"]["cgroupsPath"] = config["linux"]["cgroupsPath"].lstrip("/")

    client = await _run(harness, "relcg", ["sleep", "100"], edit=relative)
    assert (await client.state()).status == "running"
    await client.delete(force=True)


async def test_a_failed_run_leaves_nothing(harness: Harness) -> None:
    with pytest.raises(RuncError, match="no-such-program"):
        await _run(harness, "badrun", ["/bin/no-such-program"])
    opts = harness.options[-1]
    assert read_shim_pid(opts.state_dir) is None
    assert not (harness.runc_root / opts.id).exists()
    wait_until(lambda: harness.cgroup_dirs("badrun") == [], what="cgroup removal")
    assert not Path(opts.state_dir, "shim.sock").exists()
