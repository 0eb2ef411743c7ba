"""Containers outlive the daemon; a dead shim is noticed and cleaned up.

The daemon is killed with SIGKILL (no shutdown code runs), containers exit
while it is down, and a new daemon on the same dirs must tell the exits
apart from the living, with the exit codes and times that really happened.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import grpc
import pytest

from pyctr.proto import containers_pb2 as pb
from tests.containers.conftest import Ctr, wait_for
from tests.support import cgroups

pytestmark = pytest.mark.root


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _task_dir(ctr: Ctr, cid: str) -> Path:
    return ctr.d.state / "tasks" / cid[:16]


def test_containers_survive_kill_9_of_the_daemon(ctr: Ctr, tmp_path: Path) -> None:
    trigger = tmp_path / "trigger"
    trigger.mkdir()
    # Three containers wait for a file the test creates while the daemon is down.
    waiter = "while [ ! -e /trigger/go ]; do sleep 0.05; done; exit {}"
    mount = pb.ContainerMount(source=str(trigger), destination="/trigger", readonly=True)
    short = {
        ctr.run(["sh", "-c", waiter.format(code)], name=f"short{code}", mounts=[mount]).id: code
        for code in (3, 4, 5)
    }
    long = [ctr.run(["sleep", "600"], name=f"long{i}").id for i in range(7)]
    pids = {c.id: c.pid for c in ctr.list()}
    assert len(pids) == 10 and all(_alive(p) for p in pids.values())

    ctr.d.kill()
    ctr.reconnect()
    exits_from = time.time_ns()
    (trigger / "go").touch()
    # Their shims record the exits (exit.json) without the daemon.
    wait_for(
        lambda: all((_task_dir(ctr, cid) / "exit.json").exists() for cid in short),
        what="the short ones' shims to record their exits",
    )
    exits_until = time.time_ns()
    time.sleep(0.3)  # so a restart-time stamp could not pass for an exit time
    ctr.d.start()

    listed = {c.id: c for c in ctr.list()}
    assert set(listed) == set(pids)
    for cid, code in short.items():
        c = listed[cid]
        assert (c.status, c.exit_code, c.reason) == ("exited", code, "Error")
        assert exits_from <= c.finished_at <= exits_until, (c.finished_at, exits_from, exits_until)
    for cid in long:
        assert listed[cid].status == "running" and listed[cid].pid == pids[cid]
        assert _alive(pids[cid])

    # The survivors are controllable: exec, stop, kill, logs.
    res = ctr.cli("exec", "long0", "sh", "-c", "echo $(hostname); exit 6")
    assert (res.returncode, res.stdout) == (6, long[0][:12] + "\n")
    stopped = ctr.api.Stop(pb.ContainerStopRequest(container="long1", timeout=0.5), timeout=30)
    assert stopped.container.status == "exited" and stopped.container.exit_code == 137
    assert not _alive(pids[long[1]])
    ctr.api.Kill(pb.ContainerKillRequest(container="long2", signal=9), timeout=10)
    assert ctr.wait("long2").exit_code == 137
    # The dead ones' tasks are gone (no shim, no runc state) and they can be removed.
    for cid in short:
        assert not (ctr.d.state / "runc" / cid).exists()
        assert not (_task_dir(ctr, cid) / "shim.sock").exists()
        ctr.remove(cid, force=False)
    # A second restart, graceful this time, changes nothing for the living.
    ctr.d.restart()
    ctr.reconnect()
    running = sorted(c.name for c in ctr.list(all=False))
    assert running == [f"long{i}" for i in (0, 3, 4, 5, 6)]
    ctr.remove_all()
    assert ctr.list() == []
    assert not list((ctr.d.state / "tasks").iterdir())
    assert not [p for p in (ctr.d.state / "runc").iterdir()]


def test_a_shim_killed_with_sigkill_is_reported_and_cleaned_up(ctr: Ctr) -> None:
    c = ctr.run(["sleep", "600"], name="victim")
    task = _task_dir(ctr, c.id)
    shim_pid = int((task / "shim.pid").read_text())
    token = ctr.d.base.parent.name
    cgroup = cgroups.dirs(cgroups.container_path(cgroups.session_parent(token), c.id))[-1]
    assert _alive(shim_pid) and _alive(c.pid) and cgroup.is_dir()
    os.kill(shim_pid, signal.SIGKILL)

    info = wait_for(
        lambda: (i := ctr.get("victim")).status == "exited" and i, what="the exit to be recorded"
    )
    assert info.reason == "Unknown" and "shim died" in info.message
    assert info.exit_code == 255 and info.finished_at >= c.started_at
    # The container's processes went with runc's state and cgroup.
    wait_for(lambda: not _alive(c.pid), what="the container's process to be killed")
    assert not (ctr.d.state / "runc" / c.id).exists()
    assert not cgroup.exists()
    wait_for(lambda: not os.path.ismount(task / "rootfs"), what="the rootfs to be unmounted")
    with pytest.raises(grpc.RpcError) as err:
        ctr.api.Exec(iter([pb.ContainerExecRequest(start=pb.ContainerExecStart(
            container="victim", args=["true"]))])).next()  # fmt: skip
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    res = ctr.cli("rm", "victim")
    assert res.returncode == 0, res.stderr
    assert not task.exists()
    assert not (ctr.d.root / "logs" / f"{c.id}.log").exists()


def test_a_shim_killed_while_the_daemon_is_down(ctr: Ctr) -> None:
    c = ctr.run(["sleep", "600"], name="orphan")
    shim_pid = int((_task_dir(ctr, c.id) / "shim.pid").read_text())
    ctr.d.kill()
    ctr.reconnect()
    os.kill(shim_pid, signal.SIGKILL)
    ctr.d.start()
    info = ctr.get("orphan")
    assert info.status == "exited" and info.reason == "Unknown"
    wait_for(lambda: not _alive(c.pid), what="the container's process to be killed")
    ctr.remove("orphan", force=False)


def test_restart_removes_what_no_record_owns(ctr: Ctr) -> None:
    running = ctr.run(["sleep", "600"], name="lost-running")
    created = ctr.create(["true"], name="lost-created")
    shim_pid = int((_task_dir(ctr, running.id) / "shim.pid").read_text())
    assert ctr.active_snapshots() == {running.id, created.id}
    ctr.d.kill()
    ctr.reconnect()
    # The records are lost, as after a crash before their transaction committed.
    db = sqlite3.connect(ctr.d.root / "meta.db")
    with db:
        db.execute("DELETE FROM containers")
    db.close()
    ctr.d.start()
    assert ctr.list() == []
    wait_for(lambda: not _alive(shim_pid) and not _alive(running.pid), what="the orphan to stop")
    assert not list((ctr.d.state / "tasks").iterdir())
    assert not list((ctr.d.state / "runc").iterdir())
    assert ctr.active_snapshots() == set()
    assert not list((ctr.d.root / "logs").iterdir())


def test_a_created_container_keeps_its_task_across_a_restart(ctr: Ctr) -> None:
    c = ctr.create(["sh", "-c", "echo started; exit 6"], name="pending")
    # Attaching creates the task (shim, `runc create`) without starting it.
    open_ = pb.ContainerAttachRequest(open=pb.ContainerAttachOpen(container="pending"))
    call = ctr.api.Attach(iter([open_]))
    assert next(call).WhichOneof("response") == "ready"
    call.cancel()
    shim_pid = int((_task_dir(ctr, c.id) / "shim.pid").read_text())
    ctr.d.kill()
    ctr.reconnect()
    ctr.d.start()
    assert ctr.get("pending").status == "created" and _alive(shim_pid)
    ctr.api.Start(pb.ContainerStartRequest(container="pending"), timeout=30)
    assert ctr.wait("pending").exit_code == 6
    assert ctr.cli("logs", "pending").stdout == "started\n"
    wait_for(lambda: not _alive(shim_pid), what="the shim to exit")
