"""The runtime manager: containers' lifecycles, from bundle to exit record.

    create  snapshot prepared on the image's chain, rootfs mounted in the
            task dir, config.json written, record stored (status created)
    task    a shim is spawned; it runs `runc create` and holds the stdio from
            then on (done by `start`, or earlier by `attach`, so a client can
            see all of the output)
    start   `runc start` through the shim
    exit    the shim's event (or, after a restart, its exit record) is
            recorded; the task is deleted, the shim exits, rootfs unmounted
    remove  snapshot, task dir and (native containers') log removed, record deleted

Each container has a task dir `<state>/tasks/<id[:16]>` holding the bundle
(config.json, rootfs) and the shim's files (socket, pid, log, exit record);
it is short so the shim's socket path fits the 107-byte limit. Containers
outlive the daemon: `recover` (recovery.py) reconnects to every live shim
at start, takes in exits that happened while the daemon was down, and
removes what an interrupted create or remove left behind.

Lifecycle calls on one container are serialised by a per-container lock;
all of the daemon's state changes go through `self.store` (a write-through
cache over the container table), which must be the only writer of it.
Shim processes and runc are reached only through `self.shims`, the runtime
port (port.py): the real shims by default, an in-memory fake in unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal as signals
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyctr.daemon import host
from pyctr.daemon.errors import (
    FailedPrecondition,
    NotFound,
    Unavailable,
    disk_full,
)
from pyctr.daemon.runtime import idmap, recovery
from pyctr.daemon.runtime.cache import CachedStore
from pyctr.daemon.runtime.cleanup import remove_task_dir, unmount
from pyctr.daemon.runtime.handlers import Handler
from pyctr.daemon.runtime.port import LocalShims, ShimConnection, ShimPort
from pyctr.daemon.runtime.records import Container, CriContainer
from pyctr.daemon.runtime.shim_attach import AttachStream
from pyctr.daemon.runtime.shim_types import ExitRecord, ShimOptions
from pyctr.daemon.runtime.states import Op, Status, require
from pyctr.daemon.runtime.store import new_id
from pyctr.daemon.runtime.zygote import ShimZygote
from pyctr.daemon.spec.oci import SpecOptions, build, set_console_size, write_bundle_config
from pyctr.snapshotter.mount import mount_all

log = logging.getLogger("pyctr.runtime")

# How long a stop waits for the process after SIGKILL before giving up.
KILL_GRACE = 10.0
# Exit code recorded when the process never ran (runc missing or failing).
START_ERROR_EXIT = 128

# Given the rootfs and the image config, return the spec options; the caller
# (native API or CRI) decides everything about the process and isolation.
# It runs after `record.id` is final and before the record is stored, so it
# may still fill in fields of the record that depend on the ID.
SpecBuilder = Callable[[Path, dict[str, Any]], SpecOptions]


class ExitEvent(asyncio.Event):
    """Set once a container has exited; keeps the final record for waiters
    that wake up after the container was removed (auto-remove)."""

    container: Container | None = None


@dataclass
class Task:
    shim: ShimConnection
    watcher: asyncio.Task[None] | None = None


def exit_reason(record: ExitRecord) -> str:
    if record.oom_killed:
        return "OOMKilled"
    return "Completed" if record.exit_status == 0 else "Error"


class RuntimeManager:
    def __init__(self, ctx: Any, shims: ShimPort | None = None) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.store = CachedStore(ctx.db)
        self.tasks_dir = ctx.config.state_dir / "tasks"
        self.logs_dir = ctx.config.root_dir / "logs"
        self._tasks: dict[str, Task] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._exited: dict[str, ExitEvent] = {}
        self._background: set[asyncio.Task[Any]] = set()
        # The loop holds tasks weakly: a watcher busy with an exit after its
        # Task entry is popped would be collected mid-teardown without this.
        self._watchers: set[asyncio.Task[None]] = set()
        if shims is None:
            # Shims are forked from one pre-loaded process (fast, pages shared);
            # without it (or while it is down) they are launched.
            zygote = ShimZygote(ctx.config.state_dir) if ctx.config.runtime.shim_zygote else None
            shims = LocalShims(zygote)
        # The only way to shim processes and runc (tests pass an in-memory fake).
        self.shims: ShimPort = shims
        # Called (synchronously) with each record once its exit is stored.
        self.exit_hooks: list[Callable[[Container], None]] = []

    # -- paths and helpers ---------------------------------------------------

    def task_dir(self, cid: str) -> Path:
        return self.tasks_dir / cid[:16]

    def rootfs(self, cid: str) -> Path:
        return self.task_dir(cid) / "rootfs"

    def idmap_dir(self, cid: str) -> Path:
        """Where ID-mapped clones of a user-namespaced container's layers and volumes live."""
        return self.task_dir(cid) / idmap.TASK_SUBDIR

    def lock(self, cid: str) -> asyncio.Lock:
        return self._locks.setdefault(cid, asyncio.Lock())

    def _exit_event(self, cid: str) -> ExitEvent:
        return self._exited.setdefault(cid, ExitEvent())

    def _publish(self, topic: str, c: Container, **data: Any) -> None:
        if self.ctx.events is not None:
            self.ctx.events.publish(topic, c.id, name=c.name, kind=c.kind, **data)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def handler(self, c: Container) -> Handler:
        """The runtime handler (binary, --root) container c runs with."""
        return self.ctx.handlers.of(c.runtime)

    # -- create ----------------------------------------------------------------

    async def create(
        self,
        record: Container,
        spec_builder: SpecBuilder,
        image_ref: str | None = None,
        adjust: Callable[[Container], Awaitable[None]] | None = None,
    ) -> Container:
        """Prepare the rootfs and bundle and store the record (status created).

        adjust: awaited with the record once its spec is built, before the
        bundle is written and the record stored (NRI plugins change it here).
        """
        images = self.ctx.images
        image = images.store.get(image_ref or record.image)
        image_config = images.store.config(image).get("config") or {}
        if not record.runtime:
            record.runtime = self.ctx.handlers.default
        if not record.id:
            record.id = new_id()
        while self.task_dir(record.id).exists():  # a 16-hex prefix collision
            record.id = new_id()
        record.image_id, record.snapshot = image.id, record.id
        task_dir = self.task_dir(record.id)
        task_dir.mkdir(parents=True)
        host.searchable_dir(task_dir)
        rootfs = self.rootfs(record.id)
        rootfs.mkdir(mode=0o755)
        snap = self.ctx.snapshotter
        mounted = prepared = False
        try:
            mounts = await asyncio.to_thread(snap.prepare, record.snapshot, image.chain_id)
            prepared = True
            userns = record.userns
            if userns is None:
                await asyncio.to_thread(mount_all, mounts, rootfs)
            else:
                await asyncio.to_thread(
                    idmap.mount_rootfs, mounts, rootfs, self.idmap_dir(record.id), userns
                )
            mounted = True
            opts = spec_builder(rootfs, image_config)
            opts.rootfs = str(rootfs)
            if userns is not None:
                await asyncio.to_thread(
                    idmap.map_volumes, opts.mounts, self.idmap_dir(record.id), userns
                )
            record.spec = build(opts)
            if adjust is not None:
                await adjust(record)
            set_console_size(record.spec["process"], record.console_size)
            write_bundle_config(task_dir, record.spec)
            record.status = Status.CREATED
            self.store.add(record)
        except BaseException:
            if mounted:
                await asyncio.to_thread(unmount, rootfs)
            await asyncio.to_thread(idmap.release, self.idmap_dir(record.id))
            if prepared:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(snap.remove, record.snapshot)
            remove_task_dir(task_dir)
            raise
        self._publish("/containers/create", record, image=record.image)
        return record

    # -- the task: shim and runc create ----------------------------------------

    async def create_task(self, cid: str) -> ShimConnection:
        """The shim of a created or running container, spawned now if need be.

        After this the container's stdio exists (attach works) but its
        process waits for `start`. Raises like `start` when runc cannot
        create the container, which is then recorded as a StartError.
        """
        async with self.lock(cid):
            c = self.store.get(cid)
            task = self._tasks.get(cid)
            if task is not None:
                return task.shim
            require(c.status, Op.CREATE_TASK, cid)
            return await self._create_task(c)

    async def _create_task(self, c: Container, start: bool = False) -> ShimConnection:
        """Spawn the shim for created container c; the caller holds its lock.

        start: the shim starts the container too (one `runc run`), and
        returns with it running (pid in `shim.pid`).
        """
        handler = self.handler(c)
        if handler.path is None:
            message = f"runtime {handler.binary!r} (handler {handler.name}) not found"
            await self._start_failed(c, message)
            raise FailedPrecondition(message)
        log_path = c.log_path
        if log_path:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        opts = ShimOptions(
            id=c.id,
            bundle=str(self.task_dir(c.id)),
            state_dir=str(self.task_dir(c.id)),
            runc=handler.path,
            runc_root=handler.root,
            log_path=log_path or None,
            tty=c.tty,
            stdin=c.stdin,
            debug=self.config.runtime.shim_debug,
            start=start,
            systemd_cgroup=self.ctx.cgroups.systemd,
        )
        try:
            shim = await self.shims.launch(opts)
        except Exception as e:
            # runc create failed (the shim cleaned up after it): say why.
            await self._start_failed(c, str(e))
            raise
        self._track(c, shim)
        return shim

    async def _start_failed(self, c: Container, message: str) -> None:
        c = self.store.update(
            c.id, status=c.status.after(Op.RECORD_EXIT), exit_code=START_ERROR_EXIT,
            finished_at=time.time_ns(), reason="StartError", message=message[:4096],
        )  # fmt: skip
        await self._release_rootfs(c)
        self._finish_exit(c)

    # -- start -----------------------------------------------------------------

    async def start(
        self, cid: str, finish: Callable[[int], Awaitable[dict[str, Any]]] | None = None
    ) -> Container:
        """Start a created container.

        finish: called with the running process's pid; it returns fields of
        the record to store in the same write as the start (one
        metadata commit, not two). If it raises, the error propagates with
        the container running but recorded as created: the caller removes it.
        """
        async with self.lock(cid):
            c = self.store.get(cid)
            require(c.status, Op.START, cid)
            task = self._tasks.get(cid)
            # Stamped before `runc start`: a process that exits at once must
            # not report finishing before it started.
            started_at = time.time_ns()
            if task is None:
                # Nobody attached before the start: create and start in one
                # `runc run` (one runc process less, no round trip to the shim).
                pid = (await self._create_task(c, start=True)).pid
            else:
                try:
                    pid = await task.shim.start()
                except Exception as e:
                    task = await self._drop_task(cid)
                    if task is not None:
                        await self._teardown_task(c, task.shim)
                    await self._start_failed(c, str(e))
                    raise
            fields: dict[str, Any] = {
                "status": c.status.after(Op.START), "pid": pid, "started_at": started_at,
            }  # fmt: skip
            if finish is not None:
                fields.update(await finish(pid))
            c = self.store.update(cid, **fields)
        self._publish("/tasks/start", c, pid=pid)
        return c

    def _track(self, c: Container, shim: ShimConnection) -> None:
        self._exit_event(c.id)
        task = Task(shim=shim)
        self._tasks[c.id] = task
        task.watcher = asyncio.create_task(self._watch(c.id, shim))
        self._watchers.add(task.watcher)
        task.watcher.add_done_callback(self._watchers.discard)

    async def _drop_task(self, cid: str) -> Task | None:
        """Forget a task without recording an exit (the caller tears it down)."""
        task = self._tasks.pop(cid, None)
        if task is not None and task.watcher is not None:
            task.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task.watcher
        return task

    async def _watch(self, cid: str, shim: ShimConnection) -> None:
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
            already = not c.status.may_exit
            message = ""
            if record is None:
                # The event stream ended without an exit: the shim died.
                record = self.shims.exit_record(self.task_dir(cid))
                if record is None:
                    message = "the container's shim died; its exit status is unknown"
                    try:
                        record = await self._cleanup_dead_shim(c)
                    except Exception as e:  # runc gone or failing: still record the exit
                        log.error("cleaning up after the shim of %s: %s", cid[:12], e)
                        record = ExitRecord(pid=0, exit_status=255, signal=0, exited_at=0)
                        message += f"; cleanup failed: {e}"
            if not already:
                c = await self._store_exit(cid, record, message)
            if task is not None:
                await self._teardown_task(c, task.shim)
            else:
                await self._release_rootfs(c)
            if not already:
                self._finish_exit(c)

    async def _store_exit(self, cid: str, record: ExitRecord, message: str) -> Container:
        """Record the exit; while the root's disk is full, keep trying.

        The shim keeps its exit record (and the task stays) until this
        succeeds, so nothing is lost in the meantime, and a restart would
        pick the exit up from the shim anyway.
        """
        delay = 0.25
        while True:
            try:
                c = self.store.get(cid)
                return self.store.update(
                    cid, status=c.status.after(Op.RECORD_EXIT), exit_code=record.exit_status,
                    finished_at=record.exited_at or time.time_ns(),
                    reason="Unknown" if message else exit_reason(record), message=message,
                )  # fmt: skip
            except Exception as e:
                if not disk_full(e):
                    raise
                log.warning("cannot record the exit of %s yet: %s; retrying", cid[:12], e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _finish_exit(self, c: Container) -> None:
        """Wake waiters, publish the exit, and remove an auto-remove container."""
        event = self._exit_event(c.id)
        event.container = c
        event.set()
        self._publish("/tasks/exit", c, exit_code=c.exit_code, reason=c.reason)
        for hook in self.exit_hooks:
            try:
                hook(c)
            except Exception:
                log.exception("exit hook for %s", c.id[:12])
        if c.auto_remove:
            self._spawn(self._auto_remove(c.id))

    async def _auto_remove(self, cid: str) -> None:
        try:
            await self.remove(cid, force=True)
        except NotFound:
            pass  # a client removed it first
        except Exception:
            log.exception("auto-removing %s", cid[:12])

    async def _cleanup_dead_shim(self, c: Container) -> ExitRecord:
        handler = self.handler(c)
        return await self.shims.cleanup_dead(
            self.task_dir(c.id),
            c.id,
            runc=handler.path or handler.binary,
            runc_root=handler.root,
            systemd_cgroup=self.ctx.cgroups.systemd,
        )

    async def _teardown_task(self, c: Container, shim: ShimConnection) -> None:
        """runc delete through the shim, let it exit, then free the rootfs."""
        try:
            await shim.delete(force=True)
            with contextlib.suppress(Unavailable):
                await shim.shutdown()
        except Unavailable:
            with contextlib.suppress(Exception):
                await self._cleanup_dead_shim(c)
        except Exception:
            log.exception("deleting task of %s", c.id[:12])
        finally:
            await shim.close()
        await self._release_rootfs(c)

    async def _release_rootfs(self, c: Container) -> None:
        rootfs = self.rootfs(c.id)
        if rootfs.exists():
            await asyncio.to_thread(unmount, rootfs)
        await asyncio.to_thread(idmap.release, self.idmap_dir(c.id))

    # -- signals, stop, remove ---------------------------------------------

    def _task(self, cid: str) -> Task:
        task = self._tasks.get(cid)
        if task is None:
            raise FailedPrecondition(f"container {cid[:12]} is not running")
        return task

    async def kill(self, cid: str, sig: int, all_processes: bool = False) -> None:
        c = self.store.get(cid)
        require(c.status, Op.SIGNAL, cid)
        await self._task(cid).shim.kill(sig, all=all_processes)

    async def wait(self, cid: str, timeout: float | None = None) -> Container:
        """The record once the container is not running (or after `timeout`).

        A container removed meanwhile (auto-remove) is answered with its
        last record.
        """
        c = self.store.get(cid)
        if not c.status.can(Op.WAIT):
            return c
        event = self._exit_event(cid)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
        try:
            return self.store.get(cid)
        except NotFound:
            if event.container is not None:
                return event.container
            raise

    async def stop(self, cid: str, timeout: float, sig: int = signals.SIGTERM) -> Container:
        """Signal, wait up to `timeout`, then SIGKILL everything. Idempotent."""
        c = self.store.get(cid)
        if not c.status.can_stop or cid not in self._tasks:
            return c
        shim = self._tasks[cid].shim
        if timeout > 0:
            with contextlib.suppress(Unavailable, FailedPrecondition):
                await shim.kill(sig)
            c = await self.wait(cid, timeout)
            if not c.status.can_stop:
                return c
        with contextlib.suppress(Unavailable, FailedPrecondition):
            await shim.kill(signals.SIGKILL, all=True)
        c = await self.wait(cid, KILL_GRACE)
        if c.status.can_stop:
            raise Unavailable(f"container {cid[:12]} did not exit after SIGKILL")
        return c

    async def remove(self, cid: str, force: bool = False) -> None:
        c = self.store.get(cid)
        if not c.status.can_remove:
            if not force:
                require(c.status, Op.REMOVE, cid)
            await self.stop(cid, 0)
        async with self.lock(cid):
            c = self.store.get(cid)
            require(c.status, Op.REMOVE, cid)  # started again while we waited for the lock
            task = await self._drop_task(cid)  # created, attached, never started
            if task is not None:
                await self._teardown_task(c, task.shim)
            await self._release_rootfs(c)
            # A failed `runc delete` (at exit, say) left runc's state, cgroup
            # and shim behind: clean them now, or fail and keep the record.
            task_dir = self.task_dir(cid)
            root = self.handler(c).root
            if self.shims.has_runc_state(cid, root) or self.shims.shim_pid(task_dir):
                await self._cleanup_dead_shim(c)
            # Record first: a crash from here on leaves only orphans, which
            # the next start sweeps (never a record without its snapshot).
            self.store.delete(cid)
            if c.snapshot:
                with contextlib.suppress(NotFound):
                    await asyncio.to_thread(self.ctx.snapshotter.remove, c.snapshot)
            remove_task_dir(self.task_dir(cid))
            self._remove_own_log(c)
        if isinstance(c, CriContainer) and any(m.image_ref for m in c.mounts):
            await self.release_image_volumes()
        self._locks.pop(cid, None)
        self._exited.pop(cid, None)
        self._publish("/containers/delete", c)

    def image_volumes_in_use(self) -> set[str]:
        """The image IDs that container records mount as image volumes."""
        return {
            m.image_ref
            for c in self.store.list(kind="container")
            if isinstance(c, CriContainer)
            for m in c.mounts
            if m.image_ref
        }

    async def release_image_volumes(self) -> None:
        """Unmount the image volumes no container record names any more."""
        in_use = self.image_volumes_in_use()
        await asyncio.to_thread(self.ctx.image_volumes.release, in_use)

    def _remove_own_log(self, c: Container) -> None:
        """The log file, if it is one of ours (a CRI log belongs to the kubelet)."""
        log_path = c.log_path
        if log_path and Path(log_path).parent == self.logs_dir:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(log_path)

    # -- exec, attach, and the rest ------------------------------------------

    def shim(self, cid: str) -> ShimConnection:
        c = self.store.get(cid)
        require(c.status, Op.SIGNAL, cid)
        return self._task(cid).shim

    async def attach(self, cid: str) -> AttachStream:
        """The container's live stdio; on a created container this creates its task."""
        c = self.store.get(cid)
        require(c.status, Op.ATTACH, cid)
        shim = await self.create_task(cid)
        try:
            return await shim.attach()
        except FailedPrecondition:
            raise FailedPrecondition(f"container {cid[:12]} has exited; cannot attach") from None

    # -- daemon start and stop -----------------------------------------------

    async def recover(self) -> None:
        """At daemon start: take over the containers the last daemon left (see recovery)."""
        await recovery.recover(self)

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
        await self.shims.close()
