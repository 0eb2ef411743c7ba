"""Pause/resume, stats, pids, update and the event stream."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from pyctr.daemon.runtime.shim_types import ShimEvent
from tests.shim.conftest import Harness
from tests.support import cgroups


async def test_pause_and_resume(harness: Harness) -> None:
    script = "i=0; while true; do i=$((i+1)); echo $i; usleep 20000; done"
    client = await harness.spawn("pause", ["sh", "-c", script])
    opts = harness.options[-1]
    await client.start()
    await asyncio.sleep(0.3)
    await client.pause()
    assert (await client.state()).status == "paused"
    assert cgroups.frozen(harness.cgroup_path("pause"))
    await asyncio.sleep(0.1)  # output written just before the freeze may still be in the pipe
    size = Path(opts.log_path or "").stat().st_size
    await asyncio.sleep(0.3)
    assert Path(opts.log_path or "").stat().st_size == size, "a paused container wrote"
    await client.resume()
    assert (await client.state()).status == "running"
    assert not cgroups.frozen(harness.cgroup_path("pause"))
    await asyncio.sleep(0.3)
    assert Path(opts.log_path or "").stat().st_size > size
    await client.delete(force=True)


async def test_stats_pids_and_update(harness: Harness) -> None:
    # Burn a little CPU and hold some memory so the numbers are not zero.
    script = (
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done;"
        " x=$(head -c 2000000 /dev/zero | tr '\\0' a); sleep 100 & wait"
    )
    client = await harness.spawn("stats", ["sh", "-c", script])
    await client.start()
    # Until the loop and $(...) are done and only sleep runs beside sh (seconds under TCG).
    for _ in range(100):
        stats = await client.stats()
        if stats.pids_current == 2 and len(await client.pids()) == 2:
            break
        await asyncio.sleep(0.2)
    assert stats.cpu_usage_ns and stats.cpu_usage_ns > 1_000_000
    assert stats.memory_usage and stats.memory_usage > 100_000
    assert stats.memory_working_set is not None and stats.memory_working_set > 0
    assert stats.memory_working_set <= stats.memory_usage
    assert stats.pids_current and stats.pids_current >= 2
    assert stats.memory_limit is None  # none set yet

    state = await client.state()
    pids = [p["pid"] for p in await client.pids()]
    assert state.pid in pids and len(pids) == stats.pids_current

    await client.update({"memory": {"limit": 256 << 20}, "pids": {"limit": 50}})
    stats = await client.stats()
    assert stats.memory_limit == 256 << 20
    assert stats.pids_limit == 50
    await client.delete(force=True)


async def test_events_stream(harness: Harness) -> None:
    client = await harness.spawn("events", ["sleep", "100"])
    await client.start()
    events: list[ShimEvent] = []
    got_exit = asyncio.Event()

    async def listen() -> None:
        async with contextlib.aclosing(client.events()) as stream:
            async for event in stream:
                events.append(event)
                if event.kind == "exit":
                    got_exit.set()

    task = asyncio.create_task(listen())
    await asyncio.sleep(0.2)
    await client.exec_sync(
        "ev1", {"args": ["sh", "-c", "exit 2"], "cwd": "/", "env": ["PATH=/bin"]}
    )
    await client.kill(signal.SIGKILL)
    await asyncio.wait_for(got_exit.wait(), 10)
    await client.delete()
    await asyncio.wait_for(task, 10)  # the stream ends when the shim goes
    kinds = [e.kind for e in events]
    assert kinds[0] == "state"
    assert kinds[1:] == ["exec_exit", "exit", "delete"]
    assert events[1].exec_id == "ev1" and events[1].exit and events[1].exit.exit_status == 2
    assert events[2].exit and events[2].exit.signal == 9
    assert all(e.container_id == harness.options[-1].id for e in events)


def _memory_limit(config: dict[str, Any]) -> None:
    config["linux"]["resources"]["memory"] = {"limit": 16 << 20}


async def test_oom_kill_is_reported(harness: Harness) -> None:
    # The shell (the container's init) grows a 64 MB string in a 16 MB cgroup.
    script = "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived"
    client = await harness.spawn("oom", ["sh", "-c", script], edit=_memory_limit)
    events: list[ShimEvent] = []

    async def listen() -> None:
        async with contextlib.aclosing(client.events()) as stream:
            async for event in stream:
                events.append(event)
                if event.kind == "exit":
                    return

    task = asyncio.create_task(listen())
    await asyncio.sleep(0.1)
    await client.start()
    exit = await asyncio.wait_for(client.wait(), 20)
    await asyncio.wait_for(task, 10)
    assert exit.oom_killed is True
    assert exit.signal == signal.SIGKILL
    assert "oom" in [e.kind for e in events]
    assert "survived" not in harness.log_of(harness.options[-1])
    await client.delete()


async def test_oom_of_a_child_is_an_event_while_running(harness: Harness) -> None:
    script = (
        "sh -c \"x=\\$(head -c 64000000 /dev/zero | tr '\\\\0' a)\"; echo child gone; sleep 100"
    )
    client = await harness.spawn("oomchild", ["sh", "-c", script], edit=_memory_limit)
    got_oom = asyncio.Event()

    async def listen() -> None:
        async with contextlib.aclosing(client.events()) as stream:
            async for event in stream:
                if event.kind == "oom":
                    got_oom.set()
                    return

    task = asyncio.create_task(listen())
    await asyncio.sleep(0.1)
    await client.start()
    await asyncio.wait_for(got_oom.wait(), 20)  # from the cgroup's eventfd, not an exit
    await task
    assert (await client.state()).status == "running"
    await client.kill(signal.SIGKILL)
    exit = await client.wait()
    # The container's init was killed by us, but an OOM kill happened in it.
    assert exit.oom_killed is True
    await client.delete()
