"""runc failing at each step, shims dying under a client's feet, the OOM killer.

The daemon's runc is a script (`[runtime] runc = ...`) that hands every call
to the real runc, except the subcommand named in a file the test writes,
which it refuses with exit 1 and a message, as a broken or incompatible runc
would. Every failure must reach the client as a clear error naming runc's
complaint, leave the container in a state that tells the truth, and leave
nothing half-done (tests/faults/consistency.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from pyctr.proto import containers_pb2 as pb
from pyctr.proto import cri_pb2
from tests.faults.conftest import Client, FaultImages, Pods, rpc_error
from tests.faults.consistency import alive, problems
from tests.faults.netfaults import wait_until
from tests.support.leaks import LeakCheck

pytestmark = pytest.mark.root

FAKE_RUNC = r"""#!/bin/sh
# A runc that refuses the subcommand named in @FAULT@ and runs the real one otherwise.
fail=$(cat @FAULT@ 2>/dev/null)
log=""
prev=""
for a in "$@"; do
  [ "$prev" = "--log" ] && log=$a
  prev=$a
  case "$a" in
    run|create|start|kill|delete|exec|state|pause|resume|update|events|ps) cmd=$a; break;;
  esac
done
# `run` is `create` and `start` in one.
if [ "$cmd" = run ] && { [ "$fail" = create ] || [ "$fail" = start ]; }; then cmd=$fail; fi
if [ -n "$fail" ] && [ "$cmd" = "$fail" ]; then
  # As runc does: the error as JSON in its --log file, and on stderr.
  msg="fake runc: $cmd refused by the test"
  [ -n "$log" ] && echo "{\"level\":\"error\",\"msg\":\"$msg\"}" >> "$log"
  echo "$msg" >&2
  exit 1
fi
exec @RUNC@ "$@"
"""
# runc's own failures may be UNKNOWN (pyctr cannot tell why runc failed), but
# never INTERNAL (a pyctr bug), and their message must carry runc's words.
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.OK)


class FakeRunc:
    def __init__(self, base: Path) -> None:
        real = shutil.which("runc")
        assert real is not None, "runc is needed"
        self.path = base / "fake-runc"
        self.fault = base / "fault"
        self.path.write_text(FAKE_RUNC.replace("@FAULT@", str(self.fault)).replace("@RUNC@", real))
        self.path.chmod(0o755)

    def fail(self, subcommand: str) -> None:
        self.fault.write_text(subcommand)

    def heal(self) -> None:
        self.fault.unlink(missing_ok=True)


@pytest.fixture
def faulty(
    client_factory: Callable[..., Client], fault_images: FaultImages, tmp_path: Path
) -> Iterator[tuple[Client, FakeRunc, str]]:
    fake = FakeRunc(tmp_path)
    cl = client_factory(f'[runtime]\nrunc = "{fake.path}"\n')
    image = fault_images.ref("busybox")
    cl.native_pull(image)
    yield cl, fake, image
    fake.heal()


def _refused(call: Callable[[], object], says: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    code, details = rpc_error(err.value)
    assert code not in BAD_CODES, (code, details)
    assert says in details, details
    return code, details


def test_runc_refusing_create_or_start_is_a_start_error(
    faulty: tuple[Client, FakeRunc, str],
) -> None:
    cl, fake, image = faulty
    for step in ("create", "start"):
        fake.fail(step)
        _refused(lambda s=step: cl.run(image, ["sleep", "60"], name=s), f"{step} refused")
        info = cl.get(step)
        assert (info.status, info.reason) == ("exited", "StartError"), info
        assert f"{step} refused" in info.message
        assert problems(cl.d) == [], step
    fake.heal()
    # The runtime is not poisoned: the next container runs.
    assert cl.run(image, ["sleep", "60"], name="fine").status == "running"
    assert problems(cl.d) == []


def test_runc_refusing_kill_delete_and_exec(faulty: tuple[Client, FakeRunc, str]) -> None:
    cl, fake, image = faulty
    c = cl.run(image, ["sh", "-c", "trap 'exit 7' TERM; while :; do sleep 1; done"], name="k")

    fake.fail("kill")
    stop = pb.ContainerStopRequest(container="k", timeout=0.2)
    _refused(lambda: cl.ctr.Stop(stop, timeout=60), "kill refused")
    assert cl.get("k").status == "running" and alive(c.pid)
    assert problems(cl.d) == []

    fake.fail("exec")
    start = pb.ContainerExecStart(container="k", args=["true"])
    _refused(lambda: list(cl.ctr.Exec(iter([pb.ContainerExecRequest(start=start)]), timeout=30)),
             "exec refused")  # fmt: skip
    assert cl.get("k").status == "running"

    # The process exits, but runc cannot delete what is left of it.
    fake.fail("delete")
    os.kill(c.pid, signal.SIGTERM)
    assert wait_until(lambda: cl.get("k").status == "exited")
    info = cl.get("k")
    assert (info.exit_code, info.reason) == (7, "Error"), info
    # Removing it needs runc's state gone: refused while runc still fails...
    remove = pb.ContainerRemoveRequest(container="k")
    _refused(lambda: cl.ctr.Remove(remove, timeout=60), "delete refused")
    assert cl.get("k").status == "exited"
    fake.heal()
    # ... and done, with the shim and cgroup, once it works again.
    cl.ctr.Remove(remove, timeout=60)
    assert cl.list() == []
    assert problems(cl.d) == []
    assert not (cl.d.state / "runc" / c.id).exists()


class Init:
    """What init does for orphans in production: reap them as they exit.

    pytest is a child subreaper, so what a dead shim leaves (the container's
    processes) is re-parented to it, and nothing reaps them; a container's
    init then cannot finish exiting while an exec'd process of its PID
    namespace waits, a zombie, to be reaped. Only zombies are reaped: the
    daemon and registries (which stay alive) are never touched.
    """

    def __init__(self, leak_check: LeakCheck) -> None:
        self.leak_check = leak_check
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            self.leak_check.reap_zombies()

    def __enter__(self) -> Init:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def test_shim_killed_under_a_running_exec_and_a_stop(
    client_factory: Callable[..., Client], fault_images: FaultImages, leak_check: LeakCheck
) -> None:
    cl = client_factory()
    image = fault_images.ref("busybox")
    cl.native_pull(image)
    for what in ("exec", "stop"):
        c = cl.run(image, ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"], name=what)
        shim_pid = int((cl.d.state / "tasks" / c.id[:16] / "shim.pid").read_text())
        outcome: list[object] = []

        def client_call(what: str = what, outcome: list[object] = outcome) -> None:
            try:
                if what == "exec":
                    start = pb.ContainerExecStart(container=what, args=["sleep", "30"])
                    req = iter([pb.ContainerExecRequest(start=start)])
                    outcome.extend(cl.ctr.Exec(req, timeout=60))
                else:
                    stop = pb.ContainerStopRequest(container=what, timeout=30)
                    outcome.append(cl.ctr.Stop(stop, timeout=60))
            except grpc.RpcError as e:
                outcome.append(e)

        t = threading.Thread(target=client_call)
        t.start()
        time.sleep(0.5)
        started = time.monotonic()
        with Init(leak_check):
            os.kill(shim_pid, signal.SIGKILL)
            t.join(20)
            assert wait_until(lambda w=what: cl.get(w).status == "exited"), what
            assert wait_until(lambda c=c: not alive(c.pid)), "the container outlived its shim"
        assert not t.is_alive(), f"{what} hung after its shim died"
        assert time.monotonic() - started < 15, what
        last = outcome[-1]
        if isinstance(last, grpc.RpcError):
            assert rpc_error(last)[0] not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
        info = cl.get(what)
        assert info.reason == "Unknown" and "shim" in info.message, info
        # The exit is recorded first, the dead shim's leftovers cleaned just after.
        assert wait_until(lambda: problems(cl.d) == []), (what, problems(cl.d))


def test_oom_kill_inside_a_running_container(
    client_factory: Callable[..., Client],
    fault_images: FaultImages,
    pods_factory: Callable[[Client], Pods],
) -> None:
    """The OOM killer takes an exec'd process: the exec says so, the container
    (and its shim, and the daemon) carry on; then it takes the init."""
    cl = client_factory(f'[cri]\nsandbox_image = "{fault_images.ref("pause")}"\n')
    pods = pods_factory(cl)
    pod_id, pod = pods.run("oom")
    limits = cri_pb2.LinuxContainerResources(memory_limit_in_bytes=32 << 20)
    cid = pods.container(
        pod_id, pod, "oom", ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
        linux=cri_pb2.LinuxContainerConfig(resources=limits),
    )  # fmt: skip
    hog = ["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"]
    res = cl.rt.ExecSync(cri_pb2.ExecSyncRequest(container_id=cid, cmd=hog, timeout=20), timeout=40)
    assert res.exit_code == 137, res
    assert pods.status(cid).state == cri_pb2.CONTAINER_RUNNING
    ok = cl.rt.ExecSync(cri_pb2.ExecSyncRequest(container_id=cid, cmd=["echo", "ok"]), timeout=30)
    assert ok.stdout == b"ok\n"
    assert problems(cl.d) == []
    # Now the container's own process.
    hog_init = pods.container(
        pod_id, pod, "hog", hog, linux=cri_pb2.LinuxContainerConfig(resources=limits)
    )
    assert wait_until(lambda: pods.status(hog_init).state == cri_pb2.CONTAINER_EXITED, 30)
    st = pods.status(hog_init)
    assert (st.exit_code, st.reason) == (137, "OOMKilled"), st
    assert pods.status(cid).state == cri_pb2.CONTAINER_RUNNING
    # The exit is recorded first, its task torn down just after.
    assert wait_until(lambda: problems(cl.d) == []), problems(cl.d)
    pods.remove(pod_id)
