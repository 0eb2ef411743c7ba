"""The runtime port: everything the runtime manager asks of shims, and nothing more.

RuntimeManager owns the lifecycle rules (states, locks, records, exits,
recovery); it reaches shim processes and runc only through a `ShimPort`
and the `ShimConnection`s it hands out. The real port, `LocalShims`, is
pyctr-shim driven by shim_launch and shim_rpc; tests pass an in-memory one
(tests/runtime/fake_shim.py) to run the lifecycle logic without root.

    port = LocalShims(zygote)                    # RuntimeManager's default
    await port.start()                           # at daemon start (the zygote)
    shim = await port.launch(opts)               # `runc create` (`runc run` with opts.start)
    pid = await shim.start()
    async for event in shim.events(): ...        # a "state" event first, then exit / oom ...
    await shim.delete(force=True); await shim.shutdown(); await shim.close()
    shim = await port.connect(state_dir)         # after a restart; Unavailable if it is dead
    record = await port.cleanup_dead(state_dir, cid, runc=..., runc_root=...)
    await port.close()                           # at daemon stop: the shims keep running

Errors are pyctr.daemon.errors classes (runc's failures RuncError), from
the real port and the fake alike.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from pyctr.daemon.runtime import shim_launch, shim_rpc
from pyctr.daemon.runtime.shim_attach import AttachStream
from pyctr.daemon.runtime.shim_types import (
    ContainerStats,
    DeleteResult,
    ExecResult,
    ExitRecord,
    ShimEvent,
    ShimOptions,
    ShimState,
)
from pyctr.daemon.runtime.zygote import ShimZygote


class ShimConnection(Protocol):
    """One connected shim (the real one: shim_rpc.ShimClient)."""

    container_id: str
    pid: int  # the container's init as reported at launch (0 after a reconnect)

    async def state(self) -> ShimState: ...

    async def start(self) -> int: ...

    async def kill(
        self, signal: int = signal.SIGTERM, *, all: bool = False, exec_id: str | None = None
    ) -> bool: ...

    async def wait(self, exec_id: str | None = None) -> ExitRecord: ...

    def events(self) -> AsyncIterator[ShimEvent]: ...

    async def exec_sync(
        self,
        exec_id: str,
        process: dict[str, Any],
        *,
        timeout: float | None = None,
        max_output: int | None = None,
        tty: bool = False,
    ) -> ExecResult: ...

    async def exec(
        self,
        exec_id: str,
        process: dict[str, Any],
        *,
        tty: bool = False,
        stdin: bool = False,
        timeout: float | None = None,
    ) -> AttachStream: ...

    async def attach(self) -> AttachStream: ...

    async def stats(self) -> ContainerStats: ...

    async def update(self, resources: dict[str, Any]) -> None: ...

    async def reopen_log(self) -> None: ...

    async def delete(self, *, force: bool = False) -> DeleteResult: ...

    async def shutdown(self, *, force: bool = False) -> None: ...

    async def close(self) -> None: ...


class ShimPort(Protocol):
    """Starting, finding and cleaning up after shims."""

    async def start(self) -> None:
        """Get ready for the first launch (the real port starts its zygote)."""
        ...

    async def launch(self, opts: ShimOptions) -> ShimConnection:
        """A shim for a written bundle, connected, its container created
        (running, pid in `.pid`, with opts.start)."""
        ...

    async def connect(self, state_dir: str | Path, *, timeout: float = 5.0) -> ShimConnection:
        """The shim serving state_dir; Unavailable if none is."""
        ...

    async def cleanup_dead(
        self,
        state_dir: str | Path,
        container_id: str,
        *,
        runc: str = "runc",
        runc_root: str | None = None,
        systemd_cgroup: bool = False,
    ) -> ExitRecord:
        """After a shim died: kill what is left, remove runc's state, and
        return its exit record (one with status 255 if it wrote none)."""
        ...

    def exit_record(self, state_dir: str | Path) -> ExitRecord | None:
        """The exit record the shim of state_dir left, if any."""
        ...

    def shim_pid(self, state_dir: str | Path) -> int | None:
        """The pid of a live shim serving state_dir, if there is one."""
        ...

    def has_runc_state(self, container_id: str, runc_root: str) -> bool:
        """Whether runc still keeps state for the container (it was not deleted)."""
        ...

    async def close(self) -> None:
        """Let go (the shims and their containers keep running)."""
        ...


class LocalShims:
    """The real port: pyctr-shim processes on this host, forked from the
    zygote when there is one (see shim_launch.spawn_shim)."""

    def __init__(self, zygote: ShimZygote | None = None) -> None:
        self.zygote = zygote

    async def start(self) -> None:
        if self.zygote is not None:
            await self.zygote.start()

    async def launch(self, opts: ShimOptions) -> ShimConnection:
        return await shim_launch.spawn_shim(opts, zygote=self.zygote)

    async def connect(self, state_dir: str | Path, *, timeout: float = 5.0) -> ShimConnection:
        return await shim_rpc.connect_shim(state_dir, timeout=timeout)

    async def cleanup_dead(
        self,
        state_dir: str | Path,
        container_id: str,
        *,
        runc: str = "runc",
        runc_root: str | None = None,
        systemd_cgroup: bool = False,
    ) -> ExitRecord:
        return await shim_launch.cleanup_dead_shim(
            state_dir, container_id, runc=runc, runc_root=runc_root, systemd_cgroup=systemd_cgroup
        )

    def exit_record(self, state_dir: str | Path) -> ExitRecord | None:
        return shim_launch.read_exit_record(state_dir)

    def shim_pid(self, state_dir: str | Path) -> int | None:
        return shim_launch.read_shim_pid(state_dir)

    def has_runc_state(self, container_id: str, runc_root: str) -> bool:
        return (Path(runc_root) / container_id).exists()

    async def close(self) -> None:
        if self.zygote is not None:
            await self.zygote.close()
