"""Daemon start: the runtime manager takes over the containers the last daemon left.

Containers outlive the daemon, so at start every record is checked against
what is on the host, through the shim port:

    created/running, shim alive   reconnect and watch it; its first event
                                  says if it exited while nobody listened;
                                  a start the crash kept from the record is
                                  recorded now
    created/running, shim gone    the exit is taken from the shim's exit
                                  record, or synthesised (status 255)
    exited                        a task a crash left (shim, runc state,
                                  mounted rootfs) is torn down; an
                                  auto-remove container is removed

Then `cleanup.remove_orphans` sweeps what no record owns. This is part of
RuntimeManager (its `recover`), kept apart for length; it uses the
manager's task and exit helpers.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from pyctr.daemon import host
from pyctr.daemon.errors import Unavailable
from pyctr.daemon.runtime.cleanup import remove_orphans
from pyctr.daemon.runtime.port import ShimConnection
from pyctr.daemon.runtime.records import Container
from pyctr.daemon.runtime.states import Op

if TYPE_CHECKING:
    from pyctr.daemon.runtime.manager import RuntimeManager

log = logging.getLogger("pyctr.runtime")


async def recover(rt: RuntimeManager) -> None:
    """Reconnect to live shims; take in exits that happened while we were down;
    remove what interrupted creates and removes left behind."""
    host.searchable_dir(rt.tasks_dir)
    rt._spawn(rt.shims.start())  # ready before the first container starts
    records = rt.store.list()
    for c in records:
        try:
            await _recover_one(rt, c)
        except Exception:
            log.exception("recovering container %s", c.id[:12])
    await remove_orphans(
        records, rt.tasks_dir, rt.ctx.handlers.by_name.values(), rt.logs_dir, rt.ctx.snapshotter,
        rt.shims, rt.ctx.cgroups.systemd,
    )  # fmt: skip
    # Views a crash left mounted after their last container's removal.
    await rt.release_image_volumes()


async def _recover_one(rt: RuntimeManager, c: Container) -> None:
    task_dir = rt.task_dir(c.id)
    has_runc_state = rt.shims.has_runc_state(c.id, rt.handler(c).root)
    if c.status.may_have_shim:
        try:
            shim = await rt.shims.connect(task_dir)
        except Unavailable:
            shim = None
        if shim is not None:
            if c.status.can_start:
                c = await _catch_up_start(rt, c, shim)
            rt._track(c, shim)  # its first event says if it exited meanwhile
            log.info("reconnected to the shim of %s", c.id[:12])
            return
        left = rt.shims.exit_record(task_dir) is not None or has_runc_state
        if c.status.is_running or left:
            log.warning("shim of %s is gone; marking it exited", c.id[:12])
            rt._exit_event(c.id)
            await rt._on_exit(c.id, None)
        return
    # Exited: a crash between recording the exit and deleting the task
    # may have left the shim and runc's state behind.
    try:
        shim = await rt.shims.connect(task_dir, timeout=2.0)
    except Exception:
        shim = None
    if shim is not None:
        await rt._teardown_task(c, shim)
    elif has_runc_state:
        await rt._cleanup_dead_shim(c)
    await rt._release_rootfs(c)
    if c.auto_remove:
        rt._spawn(rt._auto_remove(c.id))


async def _catch_up_start(rt: RuntimeManager, c: Container, shim: ShimConnection) -> Container:
    """A crash between `runc start` and recording it: record it now."""
    try:
        state = await shim.state()
    except Exception:
        return c
    if state.status in ("running", "paused", "stopped"):
        status = c.status.after(Op.START)
        return rt.store.update(c.id, status=status, pid=state.pid, started_at=time.time_ns())
    return c
