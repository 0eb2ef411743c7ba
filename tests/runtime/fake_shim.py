"""An in-memory runtime port (ShimPort) and the stores RuntimeManager.create needs.

Why a fake: the runtime manager's lifecycle rules (which state allows what,
stop and remove being idempotent, exits recorded with their timestamps,
what recovery does with a shim that outlived the daemon or died with it, how
failures surface) do not depend on what happens inside a shim. Against the
real port they can only run as root, through runc and the kernel, in
seconds per case. This fake keeps what the manager can observe of a shim
(its replies, its event stream, the exit record it leaves, that it survives
a daemon restart) in memory, so those rules are tested without root in
milliseconds. What pyctr-shim and runc really do stays covered by
tests/shim, tests/containers and tests/cri, which use the real port.

A FakeShim is the shim process (it outlives RuntimeManager instances, as a
real one outlives the daemon); a FakeConnection is one daemon's connection
to it. Tests drive the container from outside with FakeShim.exit, .die
and .oom, as its process or the kernel would.
"""

from __future__ import annotations

import asyncio
import itertools
import signal as signals
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyctr.daemon import errors
from pyctr.daemon.events import Event, EventBus
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
from pyctr.snapshotter.base import Info, Kind

_pids = itertools.count(4000)


class FakeShim:
    """One shim and its container: created -> running -> stopped -> deleted."""

    def __init__(self, opts: ShimOptions) -> None:
        self.opts = opts
        self.status = "created"
        self.pid = 0
        self.shim_pid = next(_pids)
        self.alive = True
        self.runc_state = True  # runc keeps state until `runc delete`
        self.exit_record: ExitRecord | None = None  # as written to the task dir
        self.ignores: set[int] = set()  # signals the process does not die of
        self.signals: list[tuple[int, bool]] = []  # (signal, all) as received
        self.resources: dict[str, Any] | None = None
        self.log_reopened = 0
        self._subscribers: list[asyncio.Queue[ShimEvent | None]] = []
        self._exited = asyncio.Event()

    # -- what the container's process, the kernel or a crash do -------------

    def run(self) -> int:
        self.status, self.pid = "running", next(_pids)
        return self.pid

    def exit(self, status: int, signal: int = 0, *, oom: bool = False) -> ExitRecord:
        """The process ends; the shim writes the exit record and sends the event."""
        assert self.status == "running", self.status
        record = ExitRecord(self.pid, status, signal, time.time_ns(), oom)
        self.status, self.exit_record = "stopped", record
        self._exited.set()
        self._send(ShimEvent("exit", self.opts.id, record.exited_at, exit=record))
        return record

    def oom(self) -> None:
        self._send(ShimEvent("oom", self.opts.id, time.time_ns()))

    def die(self) -> None:
        """The shim is killed (its container's processes would be re-parented)."""
        self.alive = False
        for q in self._subscribers:
            q.put_nowait(None)  # every event stream ends, as when its socket closes

    def _send(self, event: ShimEvent) -> None:
        for q in self._subscribers:
            q.put_nowait(event)


class FakeConnection:
    """One daemon's connection to a FakeShim (implements port.ShimConnection)."""

    def __init__(self, shim: FakeShim, pid: int = 0) -> None:
        self.shim = shim
        self.container_id = shim.opts.id
        self.pid = pid
        self.closed = False

    def _check(self) -> FakeShim:
        if self.closed or not self.shim.alive:
            raise errors.Unavailable(f"shim {self.container_id} closed the connection")
        return self.shim

    async def state(self) -> ShimState:
        s = self._check()
        return ShimState(
            id=s.opts.id, pid=s.pid, status=s.status, exit=s.exit_record, shim_pid=s.shim_pid,
            bundle=s.opts.bundle, tty=s.opts.tty, stdin=s.opts.stdin, log_path=s.opts.log_path,
            log_dropped=0, log_error="",
        )  # fmt: skip

    async def start(self) -> int:
        s = self._check()
        if s.status != "created":
            raise errors.FailedPrecondition(f"container {s.opts.id} is {s.status}")
        return s.run()

    async def kill(
        self, signal: int = signals.SIGTERM, *, all: bool = False, exec_id: str | None = None
    ) -> bool:
        s = self._check()
        s.signals.append((int(signal), all))
        if s.status != "running":
            return False
        if signal not in s.ignores:
            s.exit(128 + int(signal), int(signal))
        return True

    async def wait(self, exec_id: str | None = None) -> ExitRecord:
        s = self._check()
        await s._exited.wait()
        assert s.exit_record is not None
        return s.exit_record

    async def events(self) -> AsyncIterator[ShimEvent]:
        s = self._check()
        q: asyncio.Queue[ShimEvent | None] = asyncio.Queue()
        s._subscribers.append(q)
        try:
            # As the real shim: the state at subscription first, so an exit
            # that happened while nobody listened is not missed.
            yield ShimEvent("state", s.opts.id, time.time_ns(), exit=s.exit_record)
            while (event := await q.get()) is not None:
                yield event
        finally:
            s._subscribers.remove(q)

    async def exec_sync(
        self,
        exec_id: str,
        process: dict[str, Any],
        *,
        timeout: float | None = None,
        max_output: int | None = None,
        tty: bool = False,
    ) -> ExecResult:
        s = self._check()
        if s.status != "running":
            raise errors.FailedPrecondition(f"container {s.opts.id} is not running")
        out = " ".join(process.get("args") or []).encode()
        record = ExitRecord(next(_pids), 0, 0, time.time_ns())
        return ExecResult(exec_id, record, out, b"", truncated=False, timed_out=False)

    async def exec(
        self,
        exec_id: str,
        process: dict[str, Any],
        *,
        tty: bool = False,
        stdin: bool = False,
        timeout: float | None = None,
    ) -> AttachStream:
        raise errors.Unimplemented("the fake shim has no stdio streams")

    async def attach(self) -> AttachStream:
        raise errors.Unimplemented("the fake shim has no stdio streams")

    async def stats(self) -> ContainerStats:
        self._check()
        return ContainerStats(time.time_ns(), 1000, 4096, 4096, 2048, None, 1, 0, 1, None)

    async def update(self, resources: dict[str, Any]) -> None:
        self._check().resources = resources

    async def reopen_log(self) -> None:
        self._check().log_reopened += 1

    async def delete(self, *, force: bool = False) -> DeleteResult:
        s = self._check()
        if s.status == "running":
            if not force:
                raise errors.FailedPrecondition(f"container {s.opts.id} is running")
            s.exit(128 + signals.SIGKILL, signals.SIGKILL)
        s.status, s.runc_state = "deleted", False
        return DeleteResult(s.exit_record, str(Path(s.opts.bundle) / "rootfs"), False)

    async def shutdown(self, *, force: bool = False) -> None:
        s = self._check()
        if force and s.status != "deleted":
            await self.delete(force=True)
        s.die()  # the shim exits

    async def close(self) -> None:
        self.closed = True


class FakeShims:
    """The port (implements port.ShimPort): FakeShims by container id.

    One instance stands for the host: pass the same one to the RuntimeManager
    that replaces a closed one to model a daemon restart.
    """

    def __init__(self) -> None:
        self.shims: dict[str, FakeShim] = {}
        self.launched: list[ShimOptions] = []
        self.connects = 0
        self.cleanups: list[tuple[str, str | None]] = []  # (container id, runc root)
        self.launch_error: Exception | None = None  # the next launch fails with it
        self.started = self.closed = False

    def by_dir(self, state_dir: str | Path) -> FakeShim | None:
        return next((s for s in self.shims.values() if s.opts.state_dir == str(state_dir)), None)

    async def start(self) -> None:
        self.started = True

    async def launch(self, opts: ShimOptions) -> FakeConnection:
        self.launched.append(opts)
        if self.launch_error is not None:
            e, self.launch_error = self.launch_error, None
            raise e  # as spawn_shim: the shim cleaned up after runc and exited
        shim = self.shims[opts.id] = FakeShim(opts)
        return FakeConnection(shim, shim.run() if opts.start else 0)

    async def connect(self, state_dir: str | Path, *, timeout: float = 5.0) -> FakeConnection:
        shim = self.by_dir(state_dir)
        if shim is None or not shim.alive:
            raise errors.Unavailable(f"shim at {state_dir} is not running")
        self.connects += 1
        return FakeConnection(shim)

    async def cleanup_dead(
        self,
        state_dir: str | Path,
        container_id: str,
        *,
        runc: str = "runc",
        runc_root: str | None = None,
        systemd_cgroup: bool = False,
    ) -> ExitRecord:
        self.cleanups.append((container_id, runc_root))
        shim = self.shims.get(container_id)
        if shim is None:
            return ExitRecord(0, 255, 0, time.time_ns())
        shim.die()
        shim.runc_state = False
        if shim.exit_record is None:  # the status was lost with the shim
            shim.exit_record = ExitRecord(0, 255, 0, time.time_ns())
        return shim.exit_record

    def exit_record(self, state_dir: str | Path) -> ExitRecord | None:
        shim = self.by_dir(state_dir)
        return None if shim is None else shim.exit_record

    def shim_pid(self, state_dir: str | Path) -> int | None:
        shim = self.by_dir(state_dir)
        return shim.shim_pid if shim is not None and shim.alive else None

    def has_runc_state(self, container_id: str, runc_root: str) -> bool:
        shim = self.shims.get(container_id)
        return shim is not None and shim.runc_state

    async def close(self) -> None:
        self.closed = True


# -- what RuntimeManager.create uses besides the port ---------------------------


@dataclass
class FakeImage:
    id: str = "sha256:" + "c" * 64
    chain_id: str = "sha256:" + "d" * 64


class FakeImageStore:
    def __init__(self) -> None:
        self.image = FakeImage()

    def get(self, ref: str) -> FakeImage:
        if ref != "busybox":
            raise errors.NotFound(f"image {ref!r} not found")
        return self.image

    def config(self, image: FakeImage) -> dict[str, Any]:
        return {"config": {"Cmd": ["sh"]}}


@dataclass
class FakeImages:
    store: FakeImageStore = field(default_factory=FakeImageStore)


class FakeSnapshotter:
    """Active snapshots as names only: prepare returns no mounts, so the
    rootfs is the task dir's plain directory and nothing is mounted."""

    def __init__(self) -> None:
        self.active: dict[str, str | None] = {}

    def prepare(self, key: str, parent: str | None = None) -> list[Any]:
        if key in self.active:
            raise errors.AlreadyExists(f"snapshot {key} exists")
        self.active[key] = parent
        return []

    def remove(self, key: str) -> None:
        if self.active.pop(key, "missing") == "missing":
            raise errors.NotFound(f"snapshot {key} not found")

    def walk(self) -> list[Info]:
        return [Info(key, parent, Kind.ACTIVE) for key, parent in self.active.items()]


class Events(EventBus):
    """ctx.events, also keeping what the manager published, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[tuple[str, str, dict[str, Any]]] = []

    def publish(self, topic: str, subject: str, **data: Any) -> Event:
        self.published.append((topic, subject, data))
        return super().publish(topic, subject, **data)

    def topics(self, cid: str) -> list[str]:
        return [t for t, c, _ in self.published if c == cid]
