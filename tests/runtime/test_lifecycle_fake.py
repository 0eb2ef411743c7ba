"""RuntimeManager's lifecycle and recovery rules against the in-memory shim port
(tests/runtime/fake_shim.py), without root: states and their transitions,
idempotent stop and remove, exits with their timestamps, what a daemon
restart does with live and dead shims, and which errors reach the API.
The same paths against pyctr-shim and runc are in tests/containers and tests/cri."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from pyctr.daemon import errors
from pyctr.daemon.cgroups import Cgroups
from pyctr.daemon.config import Config
from pyctr.daemon.context import Context
from pyctr.daemon.images.volumes import ImageVolumes
from pyctr.daemon.metadata import Metadata
from pyctr.daemon.runtime.manager import START_ERROR_EXIT, RuntimeManager
from pyctr.daemon.runtime.records import Container, NativeContainer
from pyctr.daemon.runtime.shim_types import RuncError, shim_error
from pyctr.daemon.runtime.states import Status
from pyctr.daemon.spec.oci import SpecOptions
from pyctr.daemon.spec.rootfs import User
from tests.runtime.fake_shim import (
    Events,
    FakeImages,
    FakeShim,
    FakeShims,
    FakeSnapshotter,
)


class Host:
    """What outlives a daemon: the root (metadata), the shims, the snapshots."""

    def __init__(self, tmp: Path) -> None:
        self.config = Config(root=str(tmp / "root"), state=str(tmp / "state"))
        self.db = Metadata(tmp / "root" / "meta.db")
        self.shims = FakeShims()
        self.snapshotter = FakeSnapshotter()
        self.events = Events()
        self.runtimes: list[RuntimeManager] = []

    async def daemon(self) -> RuntimeManager:
        """A daemon start: a new RuntimeManager over this host, recovered."""
        cgroups = Cgroups("cgroupfs", "test", "v1", "/pyctr")
        ctx = Context(self.config, None, self.db, "/usr/bin/runc", cgroups, events=self.events)
        # Only what create asks of them (images.store.get/config, prepare/remove/walk).
        fakes: Any = ctx
        fakes.images, fakes.snapshotter = FakeImages(), self.snapshotter
        fakes.image_volumes = ImageVolumes(
            self.snapshotter, self.config.state_dir / "image-volumes"
        )
        rt = RuntimeManager(ctx, shims=self.shims)  # mypy: the fake is a ShimPort
        ctx.runtime = rt
        self.runtimes.append(rt)
        await rt.recover()
        return rt


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    h = Host(tmp_path)
    yield h
    for rt in h.runtimes:
        await rt.close()
    h.db.close()


@pytest.fixture
async def rt(host: Host) -> RuntimeManager:
    return await host.daemon()


def spec(rootfs: Path, image_config: dict[str, Any]) -> SpecOptions:
    return SpecOptions(args=["sleep", "1000"], env=[], user=User(0, 0))


async def create(
    rt: RuntimeManager, name: str = "app", image: str = "busybox", **fields: Any
) -> Container:
    return await rt.create(NativeContainer(id="", name=name, image=image, **fields), spec)


async def running(rt: RuntimeManager, host: Host, **fields: Any) -> tuple[Container, FakeShim]:
    c = await rt.start((await create(rt, **fields)).id)
    return c, host.shims.shims[c.id]


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


# -- create, start, exit ---------------------------------------------------


async def test_create_writes_bundle_and_record_without_a_shim(
    rt: RuntimeManager, host: Host
) -> None:
    c = await create(rt)
    assert c.status is Status.CREATED and len(c.id) == 64
    assert host.snapshotter.active == {c.id: FakeImages().store.image.chain_id}
    config = json.loads((rt.task_dir(c.id) / "config.json").read_text())
    assert config["process"]["args"] == ["sleep", "1000"]
    assert rt.rootfs(c.id).is_dir()
    assert host.shims.launched == []  # the shim comes with start (or attach)
    assert rt.store.get(c.id) == c
    assert host.events.topics(c.id) == ["/containers/create"]


async def test_start_runs_in_one_launch_and_exit_is_recorded_with_times(
    rt: RuntimeManager, host: Host
) -> None:
    before = time.time_ns()
    c, shim = await running(rt, host)
    (opts,) = host.shims.launched
    assert (
        opts.start
        and opts.runc_root == rt.handler(c).root
        and opts.state_dir == str(rt.task_dir(c.id))
    )
    assert c.status is Status.RUNNING and c.pid == shim.pid > 0
    assert before <= c.started_at <= time.time_ns()

    record = shim.exit(3)
    c = await rt.wait(c.id, timeout=5)
    assert (c.status, c.exit_code, c.reason) == (Status.EXITED, 3, "Error")
    assert c.finished_at == record.exited_at >= c.started_at
    # The task is torn down: runc delete through the shim, the shim exits.
    assert shim.status == "deleted" and not shim.alive
    assert host.events.topics(c.id)[-2:] == ["/tasks/start", "/tasks/exit"]


async def test_attach_first_creates_the_task_then_start_uses_it(
    rt: RuntimeManager, host: Host
) -> None:
    c = await create(rt)
    shim_conn = await rt.create_task(c.id)
    assert await rt.create_task(c.id) is shim_conn  # one task per container
    (opts,) = host.shims.launched
    assert not opts.start and host.shims.shims[c.id].status == "created"
    c = await rt.start(c.id)
    assert c.status is Status.RUNNING and len(host.shims.launched) == 1
    assert host.shims.shims[c.id].status == "running"


async def test_exit_codes_and_reasons(rt: RuntimeManager, host: Host) -> None:
    a, shim_a = await running(rt, host, name="a")
    b, shim_b = await running(rt, host, name="b")
    shim_a.exit(0)
    shim_b.exit(137, signal.SIGKILL, oom=True)
    a, b = await rt.wait(a.id, 5), await rt.wait(b.id, 5)
    assert (a.exit_code, a.reason) == (0, "Completed")
    assert (b.exit_code, b.reason) == (137, "OOMKilled")


async def test_oom_event_is_published(rt: RuntimeManager, host: Host) -> None:
    c, shim = await running(rt, host)
    await until(lambda: bool(shim._subscribers))
    shim.oom()
    await until(lambda: "/tasks/oom" in host.events.topics(c.id))
    assert rt.store.get(c.id).status is Status.RUNNING


# -- stop, kill, remove ----------------------------------------------------


async def test_stop_signals_then_is_idempotent(rt: RuntimeManager, host: Host) -> None:
    c, shim = await running(rt, host)
    c = await rt.stop(c.id, timeout=5)
    assert (c.status, c.exit_code) == (Status.EXITED, 128 + signal.SIGTERM)
    assert shim.signals == [(signal.SIGTERM, False)]
    again = await rt.stop(c.id, timeout=5)
    assert again == c and shim.signals == [(signal.SIGTERM, False)]  # nothing sent


async def test_stop_escalates_to_sigkill_for_all_processes(rt: RuntimeManager, host: Host) -> None:
    c, shim = await running(rt, host)
    shim.ignores.add(signal.SIGTERM)
    started = time.monotonic()
    c = await rt.stop(c.id, timeout=0.2)
    assert time.monotonic() - started >= 0.2
    assert shim.signals == [(signal.SIGTERM, False), (signal.SIGKILL, True)]
    assert c.exit_code == 128 + signal.SIGKILL


async def test_stop_of_a_created_container_changes_nothing(rt: RuntimeManager, host: Host) -> None:
    c = await create(rt)
    assert (await rt.stop(c.id, timeout=1)).status is Status.CREATED
    assert host.shims.launched == []


async def test_kill(rt: RuntimeManager, host: Host) -> None:
    c, shim = await running(rt, host)
    await rt.kill(c.id, signal.SIGKILL, all_processes=True)
    c = await rt.wait(c.id, 5)
    assert c.exit_code == 137 and shim.signals == [(signal.SIGKILL, True)]
    with pytest.raises(errors.FailedPrecondition, match="not running"):
        await rt.kill(c.id, signal.SIGTERM)


async def test_remove_needs_force_while_running_and_cleans_everything(
    rt: RuntimeManager, host: Host
) -> None:
    c, shim = await running(rt, host)
    with pytest.raises(errors.FailedPrecondition, match="stop it first"):
        await rt.remove(c.id)
    await rt.remove(c.id, force=True)
    with pytest.raises(errors.NotFound):
        rt.store.get(c.id)
    assert host.snapshotter.active == {}
    assert not rt.task_dir(c.id).exists()
    assert shim.status == "deleted" and not shim.alive and not shim.runc_state
    # A second remove finds nothing (the CRI answers that as success).
    with pytest.raises(errors.NotFound):
        await rt.remove(c.id)
    assert host.events.topics(c.id)[-1] == "/containers/delete"


async def test_remove_of_created_and_attached_containers(rt: RuntimeManager, host: Host) -> None:
    created = await create(rt, name="created")
    attached = await create(rt, name="attached")
    await rt.create_task(attached.id)
    for c in (created, attached):
        await rt.remove(c.id)
    assert rt.store.list() == [] and host.snapshotter.active == {}
    assert host.shims.shims[attached.id].status == "deleted"


async def test_remove_cleans_runc_state_a_failed_delete_left(
    rt: RuntimeManager, host: Host
) -> None:
    c, shim = await running(rt, host)
    shim.exit(0)
    await rt.wait(c.id, 5)
    shim.runc_state = True  # as if `runc delete` had failed at exit
    await rt.remove(c.id)
    assert host.shims.cleanups == [(c.id, rt.handler(c).root)]


async def test_auto_remove(rt: RuntimeManager, host: Host) -> None:
    c, shim = await running(rt, host, auto_remove=True)
    shim.exit(0)
    assert (await rt.wait(c.id, 5)).exit_code == 0
    # The record goes first, then the snapshot and the task directory (remove's order).
    await until(
        lambda: (
            not rt.store.list() and host.snapshotter.active == {} and not rt.task_dir(c.id).exists()
        )
    )


# -- failures --------------------------------------------------------------


async def test_runc_failure_at_start_is_a_start_error(rt: RuntimeManager, host: Host) -> None:
    c = await create(rt)
    host.shims.launch_error = RuncError('exec: "sleep": executable file not found')
    with pytest.raises(RuncError, match="executable file not found"):
        await rt.start(c.id)
    c = rt.store.get(c.id)
    assert (c.status, c.exit_code, c.reason) == (Status.EXITED, START_ERROR_EXIT, "StartError")
    assert "executable file not found" in c.message and c.finished_at > 0
    with pytest.raises(errors.FailedPrecondition, match="not created"):
        await rt.start(c.id)
    assert (await rt.wait(c.id, 1)) == c  # waiters are not left hanging


async def test_start_failure_after_attach_tears_the_task_down(
    rt: RuntimeManager, host: Host
) -> None:
    c = await create(rt)
    await rt.create_task(c.id)
    shim = host.shims.shims[c.id]
    shim.status = "paused"  # start is refused by the shim
    with pytest.raises(errors.FailedPrecondition):
        await rt.start(c.id)
    assert rt.store.get(c.id).reason == "StartError" and shim.status == "deleted"


async def test_a_dead_shim_gets_its_exit_synthesised(rt: RuntimeManager, host: Host) -> None:
    c, shim = await running(rt, host)
    await until(lambda: bool(shim._subscribers))
    shim.die()  # killed with its container: no exit record
    c = await rt.wait(c.id, 5)
    assert (c.status, c.exit_code, c.reason) == (Status.EXITED, 255, "Unknown")
    assert "shim died" in c.message
    assert set(host.shims.cleanups) == {(c.id, rt.handler(c).root)}


async def test_errors_reach_the_api_with_their_codes(rt: RuntimeManager, host: Host) -> None:
    c, shim = await running(rt, host)
    cases: list[tuple[Any, grpc.StatusCode]] = [
        (rt.start(c.id), grpc.StatusCode.FAILED_PRECONDITION),  # already running
        (rt.kill("f" * 64, signal.SIGTERM), grpc.StatusCode.NOT_FOUND),
        (create(rt, name="x", image="nope"), grpc.StatusCode.NOT_FOUND),
    ]
    for call, code in cases:
        with pytest.raises(errors.PyctrError) as e:
            await call
        assert e.value.code == code, e.value
    with pytest.raises(errors.FailedPrecondition):
        rt.shim((await create(rt, name="created")).id)  # no running task
    assert await rt.shim(c.id).exec_sync("e1", {"args": ["echo", "hi"]}) is not None
    shim.die()
    with pytest.raises(errors.Unavailable):
        await rt.shim(c.id).update({})
    # What a shim sends on the wire, as pyctr errors (and so gRPC codes).
    wire = {
        "not_found": errors.NotFound, "invalid_argument": errors.InvalidArgument,
        "failed_precondition": errors.FailedPrecondition, "unavailable": errors.Unavailable,
        "unsupported_version": errors.FailedPrecondition, "runc_failed": RuncError,
        "no_such_code": errors.Internal,
    }  # fmt: skip
    for code_name, cls in wire.items():
        err = shim_error({"code": code_name, "message": "m"})
        assert type(err) is cls and str(err) == "m"
    assert isinstance(shim_error("garbage"), errors.Internal)


# -- daemon restart --------------------------------------------------------


async def test_restart_reconnects_to_a_live_shim(host: Host) -> None:
    rt = await host.daemon()
    c, shim = await running(rt, host)
    await rt.close()
    assert shim.alive and host.shims.closed  # the shims outlive the daemon

    rt2 = await host.daemon()
    assert host.shims.connects == 1
    await until(lambda: host.shims.started)
    assert rt2.store.get(c.id).status is Status.RUNNING
    await until(lambda: bool(shim._subscribers))
    record = shim.exit(9)
    c = await rt2.wait(c.id, 5)
    assert (c.exit_code, c.finished_at) == (9, record.exited_at)


async def test_restart_takes_in_an_exit_that_happened_while_down(host: Host) -> None:
    rt = await host.daemon()
    c, shim = await running(rt, host)
    await rt.close()
    record = shim.exit(7)  # nobody listening: the shim keeps it

    rt2 = await host.daemon()
    c = await rt2.wait(c.id, 5)
    assert (c.status, c.exit_code, c.finished_at) == (Status.EXITED, 7, record.exited_at)
    assert shim.status == "deleted"


async def test_restart_after_the_shim_died_with_its_exit_record(host: Host) -> None:
    rt = await host.daemon()
    c, shim = await running(rt, host)
    await rt.close()
    record = shim.exit(5)
    shim.die()

    rt2 = await host.daemon()
    c = rt2.store.get(c.id)
    assert (c.status, c.exit_code, c.finished_at) == (Status.EXITED, 5, record.exited_at)
    assert c.reason == "Error" and host.shims.connects == 0


async def test_restart_after_the_shim_died_without_a_record(host: Host) -> None:
    rt = await host.daemon()
    c, shim = await running(rt, host)
    await rt.close()
    shim.die()

    before = time.time_ns()
    rt2 = await host.daemon()
    c = rt2.store.get(c.id)
    assert (c.status, c.exit_code, c.reason) == (Status.EXITED, 255, "Unknown")
    assert c.finished_at >= before
    assert host.shims.cleanups == [(c.id, rt2.handler(c).root)]


async def test_restart_records_a_start_the_crash_kept_from_the_record(host: Host) -> None:
    rt = await host.daemon()
    c = await create(rt)
    await rt.create_task(c.id)
    await rt.close()
    shim = host.shims.shims[c.id]
    shim.run()  # `runc start` happened, the record was not written

    rt2 = await host.daemon()
    c = rt2.store.get(c.id)
    assert (c.status, c.pid) == (Status.RUNNING, shim.pid)
    await rt2.stop(c.id, timeout=5)
    assert rt2.store.get(c.id).status is Status.EXITED


async def test_restart_with_a_created_container_and_no_shim(host: Host) -> None:
    rt = await host.daemon()
    c = await create(rt)
    await rt.close()
    rt2 = await host.daemon()
    assert rt2.store.get(c.id).status is Status.CREATED
    assert host.shims.cleanups == []
    assert (await rt2.start(c.id)).status is Status.RUNNING


async def test_restart_removes_orphans_through_the_port(host: Host) -> None:
    rt = await host.daemon()
    c, shim = await running(rt, host)
    await rt.close()
    rt.store.delete(c.id)  # the record was lost (its transaction never committed)

    await host.daemon()
    assert shim.status == "deleted" and not shim.alive  # told to delete and exit
    assert not rt.task_dir(c.id).exists()
    assert host.snapshotter.active == {}
