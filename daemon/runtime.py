"""The runtime manager: containers' lifecycles, from bundle to exit record.

    create  snapshot prepared on the image's chain, rootfs mounted in the
            task dir, config.json written, record stored (status created)
    start   a shim is spawned (it runs `runc create`), then `runc start`
    exit    the shim's event (or, after a restart, its exit record) is
            recorded; the task is deleted, the shim exits, rootfs unmounted
    remove  snapshot and task dir removed, record deleted

Each container has a task dir `<state>/tasks/<id[:16]>` holding the bundle
(config.json, rootfs) and the shim's files (socket, pid, log, exit record);
it is short so the shim's socket path fits the 107-byte limit. Containers
outlive the daemon: `recover` reconnects to every live shim at start and
takes in exits that happened while the daemon was down.

Lifecycle calls on one container are serialised by a per-container lock;
all of the daemon's state changes go through `ContainerStore` transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal as signals
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyctr.daemon import shim_client
from pyctr.daemon.containers import (
    CREATED,
    EXITED,
    RUNNING,
    UNKNOWN,
    Container,
    ContainerStore,
    new_id,
)
from pyctr.daemon.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from pyctr.daemon.oci_spec import SpecOptions, build, write_bundle_config
from pyctr.daemon.shim_client import ExitRecord, ShimClient, ShimOptions
from pyctr.snapshotter.mount import mount_all, unmount_all

log = logging.getLogger("pyctr.runtime")

# How long a stop waits for the process after SIGKILL before giving up.
KILL_GRACE = 10.0

# Given the rootfs and the image config, return the spec options; the caller
# (native API or CRI) decides everything about the process and isolation.
SpecBuilder = Callable[[Path, dict[str, Any]], SpecOptions]


@dataclass
class Task:
    shim: ShimClient
    watcher: asyncio.Task[None] | None = None
    exited: asyncio.Event | None = None


def exit_reason(record: ExitRecord) -> str:
    if record.oom_killed:
        return "OOMKilled"
    return "Completed" if record.exit_status == 0 else "Error"


class RuntimeManager:
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.store = ContainerStore(ctx.db)
        self.tasks_dir = ctx.config.state_dir / "tasks"
        self.runc_root = str(ctx.config.state_dir / "runc")
        self.logs_dir = ctx.config.root_dir / "logs"
        self._tasks: dict[str, Task] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._exited: dict[str, asyncio.Event] = {}
        self._background: set[asyncio.Task[Any]] = set()

    # -- paths and helpers ---------------------------------------------------

    def task_dir(self, cid: str) -> Path:
        return self.tasks_dir / cid[:16]

    def rootfs(self, cid: str) -> Path:
        return self.task_dir(cid) / "rootfs"

    def lock(self, cid: str) -> asyncio.Lock:
        return self._locks.setdefault(cid, asyncio.Lock())

    def _publish(self, topic: str, c: Container, **data: Any) -> None:
        if self.ctx.events is not None:
            self.ctx.events.publish(topic, c.id, name=c.name, kind=c.kind, **data)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- create ----------------------------------------------------------------

    async def create(
        self, record: Container, spec_builder: SpecBuilder, image_ref: str | None = None
    ) -> Container:
        """Prepare the rootfs and bundle and store the record (status created)."""
        images = self.ctx.images
        image = images.store.get(image_ref or record.image)
        image_config = images.store.config(image).get("config") or {}
        if not record.id:
            record.id = new_id()
        while self.task_dir(record.id).exists():  # a 16-hex prefix collision
            record.id = new_id()
        record.image_id, record.snapshot = image.id, record.id
        task_dir = self.task_dir(record.id)
        task_dir.mkdir(parents=True, mode=0o711)
        rootfs = self.rootfs(record.id)
        rootfs.mkdir(mode=0o755)
        snap = self.ctx.snapshotter
        mounted = prepared = False
        try:
            mounts = await asyncio.to_thread(snap.prepare, record.snapshot, image.chain_id)
            prepared = True
            await asyncio.to_thread(mount_all, mounts, rootfs)
            mounted = True
            opts = spec_builder(rootfs, image_config)
            opts.rootfs = str(rootfs)
            record.spec = build(opts)
            write_bundle_config(task_dir, record.spec)
            record.status = CREATED
            self.store.add(record)
        except BaseException:
            if mounted:
                await asyncio.to_thread(_unmount, rootfs)
            if prepared:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(snap.remove, record.snapshot)
            _remove_task_dir(task_dir)
            raise
        self._publish("/containers/create", record, image=record.image)
        return record

    # -- start -----------------------------------------------------------------

    async def start(self, cid: str) -> Container:
        async with self.lock(cid):
            c = self.store.get(cid)
            if c.status != CREATED:
                raise FailedPrecondition(f"container {cid[:12]} is {c.status}, not created")
            if self.ctx.runc_path is None:
                raise FailedPrecondition(f"runc {self.config.runtime.runc!r} not found")
            log_path = c.extra.get("log_path") or ""
            if log_path:
                Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            opts = ShimOptions(
                id=c.id,
                bundle=str(self.task_dir(c.id)),
                state_dir=str(self.task_dir(c.id)),
                runc=self.ctx.runc_path,
                runc_root=self.runc_root,
                log_path=log_path or None,
                tty=bool(c.extra.get("tty")),
                stdin=bool(c.extra.get("stdin")),
                debug=self.config.runtime.shim_debug,
            )
            try:
                shim = await shim_client.spawn_shim(opts)
            except Exception as e:
                # runc create failed: the container can never start; say why.
                c = self.store.update(
                    cid, status=EXITED, exit_code=128, finished_at=time.time_ns(),
                    reason="StartError", message=str(e)[:4096],
                )  # fmt: skip
                await self._release_rootfs(c)
                raise
            try:
                pid = await shim.start()
            except Exception as e:
                await self._teardown_task(c, shim)
                self.store.update(
                    cid, status=EXITED, exit_code=128, finished_at=time.time_ns(),
                    reason="StartError", message=str(e)[:4096],
                )  # fmt: skip
                raise
            c = self.store.update(cid, status=RUNNING, pid=pid, started_at=time.time_ns())
            self._track(c, shim)
        self._publish("/tasks/start", c, pid=pid)
        return c

    def _track(self, c: Container, shim: ShimClient) -> None:
        task = Task(shim=shim, exited=self._exited.setdefault(c.id, asyncio.Event()))
        self._tasks[c.id] = task
        task.watcher = asyncio.create_task(self._watch(c.id, shim))

    async def _watch(self, cid: str, shim: ShimClient) -> None:
        """Follow one shim's events until its container exits or it dies."""
        record: ExitRecord | None = None
        try:
            async for event in shim.events():
                if event.kind in ("state", "exit") and event.exit is not None:
                    record = event.exit
                    break
                if event.kind == "oom":
                    with contextlib.suppress(NotFound):
                        self._publish("/tasks/oom", self.store.get(cid))
        except Unavailable:
            pass
        except Exception:
            log.exception("watching shim of %s", cid[:12])
        await self._on_exit(cid, record)

    async def _on_exit(self, cid: str, record: ExitRecord | None) -> None:
        async with self.lock(cid):
            task = self._tasks.pop(cid, None)
            try:
                c = self.store.get(cid)
            except NotFound:
                return
            message = ""
            if record is None:
                # The event stream ended without an exit: the shim died.
                record = shim_client.read_exit_record(self.task_dir(cid))
                if record is None:
                    record = await shim_client.cleanup_dead_shim(
                        self.task_dir(cid), cid, runc=self.ctx.runc_path or "runc",
                        runc_root=self.runc_root,
                    )  # fmt: skip
                    message = "the container's shim died; its exit status is unknown"
            if c.status != EXITED:
                reason = "Unknown" if message else exit_reason(record)
                c = self.store.update(
                    cid, status=EXITED, exit_code=record.exit_status,
                    finished_at=record.exited_at or time.time_ns(),
                    reason=reason, message=message,
                )  # fmt: skip
            if task is not None:
                await self._teardown_task(c, task.shim)
            else:
                await self._release_rootfs(c)
            if task is not None and task.exited is not None:
                task.exited.set()
            self._exited.setdefault(cid, asyncio.Event()).set()
        self._publish("/tasks/exit", c, exit_code=c.exit_code, reason=c.reason)

    async def _teardown_task(self, c: Container, shim: ShimClient) -> None:
        """runc delete through the shim, let it exit, then free the rootfs."""
        try:
            await shim.delete(force=True)
            with contextlib.suppress(Unavailable):
                await shim.shutdown()
        except Unavailable:
            await shim_client.cleanup_dead_shim(
                self.task_dir(c.id), c.id, runc=self.ctx.runc_path or "runc",
                runc_root=self.runc_root,
            )  # fmt: skip
        except Exception:
            log.exception("deleting task of %s", c.id[:12])
        finally:
            await shim.close()
        await self._release_rootfs(c)

    async def _release_rootfs(self, c: Container) -> None:
        rootfs = self.rootfs(c.id)
        if rootfs.exists():
            await asyncio.to_thread(_unmount, rootfs)

    # -- signals, stop, remove ---------------------------------------------

    def _task(self, cid: str) -> Task:
        task = self._tasks.get(cid)
        if task is None:
            raise FailedPrecondition(f"container {cid[:12]} is not running")
        return task

    async def kill(self, cid: str, sig: int, all_processes: bool = False) -> None:
        c = self.store.get(cid)
        if c.status != RUNNING:
            raise FailedPrecondition(f"container {cid[:12]} is {c.status}, not running")
        await self._task(cid).shim.kill(sig, all=all_processes)

    async def wait(self, cid: str, timeout: float | None = None) -> Container:
        c = self.store.get(cid)
        if c.status == RUNNING:
            event = self._exited.setdefault(cid, asyncio.Event())
            try:
                async with asyncio.timeout(timeout):
                    await event.wait()
            except TimeoutError:
                pass
        return self.store.get(cid)

    async def stop(self, cid: str, timeout: float, sig: int = signals.SIGTERM) -> Container:
        """Signal, wait up to `timeout`, then SIGKILL everything. Idempotent."""
        c = self.store.get(cid)
        if c.status != RUNNING or cid not in self._tasks:
            return c
        shim = self._tasks[cid].shim
        if timeout > 0:
            with contextlib.suppress(Unavailable, FailedPrecondition):
                await shim.kill(sig)
            c = await self.wait(cid, timeout)
            if c.status != RUNNING:
                return c
        with contextlib.suppress(Unavailable, FailedPrecondition):
            await shim.kill(signals.SIGKILL, all=True)
        c = await self.wait(cid, KILL_GRACE)
        if c.status == RUNNING:
            raise Unavailable(f"container {cid[:12]} did not exit after SIGKILL")
        return c

    async def remove(self, cid: str, force: bool = False) -> None:
        c = self.store.get(cid)
        if c.status == RUNNING:
            if not force:
                raise FailedPrecondition(f"container {cid[:12]} is running; stop it first")
            await self.stop(cid, 0)
        async with self.lock(cid):
            c = self.store.get(cid)
            await self._release_rootfs(c)
            if c.snapshot:
                with contextlib.suppress(NotFound):
                    await asyncio.to_thread(self.ctx.snapshotter.remove, c.snapshot)
            _remove_task_dir(self.task_dir(cid))
            self.store.delete(cid)
        self._locks.pop(cid, None)
        self._exited.pop(cid, None)
        self._publish("/containers/delete", c)

    # -- exec, stats, and the rest -------------------------------------------

    def exec_process(
        self, c: Container, args: list[str], tty: bool = False, env: list[str] | None = None
    ) -> dict[str, Any]:
        """An exec's OCI process: the container's, with other args."""
        if not args:
            raise InvalidArgument("exec needs a command")
        process = dict(c.spec.get("process") or {})
        process.update(args=list(args), terminal=tty)
        if env:
            process["env"] = list(process.get("env") or []) + env
        return process

    def shim(self, cid: str) -> ShimClient:
        c = self.store.get(cid)
        if c.status != RUNNING:
            raise FailedPrecondition(f"container {cid[:12]} is {c.status}, not running")
        return self._task(cid).shim

    # -- daemon start and stop -----------------------------------------------

    async def recover(self) -> None:
        """Reconnect to live shims; take in exits that happened while we were down."""
        self.tasks_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        known = set()
        for c in self.store.list():
            known.add(c.id[:16])
            if c.status != RUNNING:
                if c.status in (EXITED, UNKNOWN):
                    await self._release_rootfs(c)
                continue
            try:
                shim = await shim_client.connect_shim(self.task_dir(c.id))
            except Unavailable:
                log.warning("shim of %s is gone; marking it exited", c.id[:12])
                self._exited.setdefault(c.id, asyncio.Event())
                await self._on_exit(c.id, None)
                continue
            self._track(c, shim)
            log.info("reconnected to the shim of %s", c.id[:12])
        # Task dirs no record owns: a create interrupted by a crash.
        for entry in self.tasks_dir.iterdir():
            if entry.name not in known:
                log.warning("removing orphaned task dir %s", entry)
                rootfs = entry / "rootfs"
                if rootfs.exists():
                    await asyncio.to_thread(_unmount, rootfs)
                _remove_task_dir(entry)

    async def close(self) -> None:
        """Let go of the shims (they and their containers keep running)."""
        for task in list(self._tasks.values()):
            if task.watcher is not None:
                task.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task.watcher
            await task.shim.close()
        self._tasks.clear()
        for bg in list(self._background):
            bg.cancel()


def _unmount(target: Path) -> None:
    if os.path.ismount(target):
        unmount_all(target)


def _remove_task_dir(path: Path) -> None:
    """rmtree, but never through a mount still in place."""
    if not path.exists():
        return
    with open("/proc/self/mountinfo") as f:
        prefix = str(path) + "/"
        if any(line.split()[4].startswith(prefix) for line in f):
            log.error("not removing %s: something is still mounted below it", path)
            return
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(path)
