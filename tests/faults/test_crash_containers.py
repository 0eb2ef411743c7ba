"""kill -9 of pyctrd at seeded random moments of create, start, stop and remove.

One daemon runs a sentinel container the whole time. Then container after
container goes through create → start → stop → remove, and during each of
those four calls the daemon is killed at a random moment (the delay drawn from
the seed in the test id, relative to how long that call took uninterrupted)
and restarted on the same dirs. After every restart:

- metadata, snapshots, mounts, shims and runc states agree
  (tests/faults/consistency.py), and the container is in a state the call
  could have left it in: not yet done, or done;
- the interrupted call, retried, brings it where the call should have;
- the sentinel is still running, with the same process, and answers an exec.

At the end, everything removed leaves nothing behind.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import grpc
import pytest

from pyctr.proto import containers_pb2 as pb
from tests.faults.conftest import Client, FaultImages, rpc_error, seeds
from tests.faults.consistency import alive, containers, problems, snapshots

pytestmark = pytest.mark.root

CONTAINERS = 3  # per seed, each giving four kill points
# Ignores SIGTERM, so a stop waits for its timeout and then kills: a stop
# lasts long enough to be interrupted anywhere.
STUBBORN = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
STOP_TIMEOUT = 0.4


def _call(cl: Client, op: str, name: str, image: str) -> Future[Any]:
    if op == "create":
        req = pb.ContainerCreateRequest(image=image, args=STUBBORN, name=name)
        return cl.ctr.Create.future(req, timeout=60)  # type: ignore[no-any-return]
    if op == "start":
        return cl.ctr.Start.future(pb.ContainerStartRequest(container=name), timeout=60)  # type: ignore[no-any-return]
    if op == "stop":
        req_stop = pb.ContainerStopRequest(container=name, timeout=STOP_TIMEOUT)
        return cl.ctr.Stop.future(req_stop, timeout=60)  # type: ignore[no-any-return]
    req_rm = pb.ContainerRemoveRequest(container=name)
    return cl.ctr.Remove.future(req_rm, timeout=60)  # type: ignore[no-any-return]


def _status(cl: Client, name: str) -> str:
    try:
        return cl.get(name).status
    except grpc.RpcError as e:
        assert rpc_error(e)[0] == grpc.StatusCode.NOT_FOUND, e
        return "absent"


# What each call may leave behind when interrupted, and where it must end.
BEFORE_AFTER = {
    "create": ({"absent", "created"}, "created"),
    "start": ({"created", "running"}, "running"),
    "stop": ({"running", "exited"}, "exited"),
    "remove": ({"exited", "absent"}, "absent"),
}


# How a call that was done already answers its retry (stop is idempotent).
ALREADY_DONE = {
    "create": grpc.StatusCode.ALREADY_EXISTS,
    "start": grpc.StatusCode.FAILED_PRECONDITION,
    "stop": grpc.StatusCode.OK,
    "remove": grpc.StatusCode.NOT_FOUND,
}


def _retry(cl: Client, op: str, name: str, image: str, done: bool) -> None:
    """The call again, as a client that saw it fail would make it."""
    try:
        _call(cl, op, name, image).result()
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        code, details = rpc_error(e)
    expected = ALREADY_DONE[op] if done else grpc.StatusCode.OK
    assert code == expected, (op, code, details)


def _sentinel_ok(cl: Client, pid: int, where: str) -> None:
    info = cl.get("sentinel")
    assert (info.status, info.pid) == ("running", pid), where
    assert alive(pid), where


@pytest.mark.parametrize("seed", seeds(11, 12, 13), ids=lambda s: f"seed={s}")
def test_kill_9_during_container_lifecycle(
    client_factory: Callable[..., Client], fault_images: FaultImages, seed: int
) -> None:
    rng = random.Random(seed)
    cl = client_factory()
    image = fault_images.ref("busybox")
    cl.native_pull(image)
    sentinel = cl.run(image, ["sleep", "100000"], name="sentinel")

    # How long each call takes here, uninterrupted.
    took: dict[str, float] = {}
    for op in ("create", "start", "stop", "remove"):
        started = time.monotonic()
        _call(cl, op, "calibrate", image).result()
        took[op] = time.monotonic() - started

    for n in range(CONTAINERS):
        name = f"victim{n}"
        for op in ("create", "start", "stop", "remove"):
            delay = rng.uniform(0.0, took[op] * 1.2)
            where = f"seed {seed} {name} {op}: kill after {delay:.3f}s of {took[op]:.3f}s"
            call = _call(cl, op, name, image)
            time.sleep(delay)
            cl.d.kill()
            try:
                call.result()
            except grpc.RpcError as e:
                assert rpc_error(e)[0] == grpc.StatusCode.UNAVAILABLE, (where, e)
            cl.reconnect()
            cl.d.start()

            may_be, must_be = BEFORE_AFTER[op]
            status = _status(cl, name)
            assert status in may_be, where
            assert problems(cl.d) == [], where
            _sentinel_ok(cl, sentinel.pid, where)
            _retry(cl, op, name, image, done=status == must_be)
            assert _status(cl, name) == must_be, where
            assert problems(cl.d) == [], where

    # The sentinel lived through it all, and is still in working order.
    res = cl.d.ctl("exec", "sentinel", "sh", "-c", "echo alive")
    assert (res.returncode, res.stdout) == (0, "alive\n"), res.stderr
    cl.remove_all()
    assert containers(cl.d) == {}
    assert not list((cl.d.state / "tasks").iterdir())
    assert [k for k, r in snapshots(cl.d).items() if r["kind"] != "committed"] == []
    assert problems(cl.d) == []
