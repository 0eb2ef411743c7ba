"""kill -9 of pyctrd at seeded random moments of a pod's life through the CRI.

RunPodSandbox, CreateContainer, StartContainer, StopPodSandbox and
RemovePodSandbox, each interrupted at a random moment (as in
test_crash_containers, the delay comes from the seed in the test id). After
each restart the pod and its container are in a state the call could have
left them in, everything agrees (tests/faults/consistency.py: records, task
dirs, pod dirs and their shm mounts, shims, snapshots), and the call retried
the way the kubelet would gets them where the call should have.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import grpc
import pytest

from pyctr.proto import cri_pb2
from tests.faults.conftest import Client, FaultImages, Pods, rpc_error, seeds
from tests.faults.consistency import alive, containers, problems

pytestmark = pytest.mark.root

ROUNDS = 2  # pods per seed, each giving five kill points
OPS = ("run", "create", "start", "stop", "remove")
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


class PodLife:
    """One pod and one container, driven call by call."""

    def __init__(self, pods: Pods, name: str) -> None:
        self.pods = pods
        self.name = name
        self.config = pods.config(name)
        self.pod_id = ""
        self.cid = ""

    @property
    def rt(self) -> Any:
        return self.pods.cl.rt

    def container_config(self) -> cri_pb2.ContainerConfig:
        return cri_pb2.ContainerConfig(
            metadata=cri_pb2.ContainerMetadata(name="work"),
            image=cri_pb2.ImageSpec(image=self.pods.image),
            command=SLEEPER,
            log_path="work.log",
        )

    def call(self, op: str) -> Future[Any]:
        rt = self.rt
        if op == "run":
            return rt.RunPodSandbox.future(  # type: ignore[no-any-return]
                cri_pb2.RunPodSandboxRequest(config=self.config), timeout=60
            )
        if op == "create":
            req = cri_pb2.CreateContainerRequest(
                pod_sandbox_id=self.pod_id, config=self.container_config(),
                sandbox_config=self.config,
            )  # fmt: skip
            return rt.CreateContainer.future(req, timeout=60)  # type: ignore[no-any-return]
        if op == "start":
            req_s = cri_pb2.StartContainerRequest(container_id=self.cid)
            return rt.StartContainer.future(req_s, timeout=60)  # type: ignore[no-any-return]
        if op == "stop":
            req_p = cri_pb2.StopPodSandboxRequest(pod_sandbox_id=self.pod_id)
            return rt.StopPodSandbox.future(req_p, timeout=60)  # type: ignore[no-any-return]
        req_r = cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=self.pod_id)
        return rt.RemovePodSandbox.future(req_r, timeout=60)  # type: ignore[no-any-return]

    def find(self) -> None:
        """Learn the IDs the interrupted call may have made, as the kubelet lists them."""
        listed = self.rt.ListPodSandbox(cri_pb2.ListPodSandboxRequest(), timeout=10).items
        mine = [p for p in listed if p.metadata.name == self.name]
        assert len(mine) <= 1, mine
        self.pod_id = mine[0].id if mine else ""
        self.cid = ""
        if self.pod_id:
            flt = cri_pb2.ContainerFilter(pod_sandbox_id=self.pod_id)
            ctrs = self.rt.ListContainers(
                cri_pb2.ListContainersRequest(filter=flt), timeout=10
            ).containers
            assert len(ctrs) <= 1, ctrs
            self.cid = ctrs[0].id if ctrs else ""

    def state(self) -> tuple[str, str]:
        """(pod state, container state) in the CRI's words, "" for none."""
        pod = ctr = ""
        if self.pod_id:
            st = self.rt.PodSandboxStatus(
                cri_pb2.PodSandboxStatusRequest(pod_sandbox_id=self.pod_id), timeout=10
            ).status
            pod = cri_pb2.PodSandboxState.Name(st.state)
        if self.cid:
            ctr = cri_pb2.ContainerState.Name(self.pods.status(self.cid).state)
        return pod, ctr


READY, NOTREADY = "SANDBOX_READY", "SANDBOX_NOTREADY"
CREATED, RUNNING, EXITED = "CONTAINER_CREATED", "CONTAINER_RUNNING", "CONTAINER_EXITED"
# States an interrupted call may leave, and the state its retry must reach.
# A RunPodSandbox cut short may leave a NOTREADY pod (the kubelet stops and
# removes it and runs a new one); a StopPodSandbox cut short may leave a
# READY pod whose container was already stopped; a RemovePodSandbox cut short
# a pod without its container.
MAY_BE: dict[str, set[tuple[str, str]]] = {
    "run": {("", ""), (READY, ""), (NOTREADY, "")},
    "create": {(READY, ""), (READY, CREATED)},
    "start": {(READY, CREATED), (READY, RUNNING)},
    "stop": {(READY, RUNNING), (READY, EXITED), (NOTREADY, EXITED)},
    "remove": {(NOTREADY, EXITED), (NOTREADY, ""), ("", "")},
}
MUST_BE = {
    "run": (READY, ""),
    "create": (READY, CREATED),
    "start": (READY, RUNNING),
    "stop": (NOTREADY, EXITED),
    "remove": ("", ""),
}


def _retry(life: PodLife, op: str, state: tuple[str, str]) -> None:
    """What the kubelet does next, having seen the call fail."""
    if state == MUST_BE[op]:
        return  # done already
    if op == "run" and state[0] == NOTREADY:
        # A pod that never got ready is stopped and removed, then made anew.
        life.pods.remove(life.pod_id)
    life.call(op).result()
    if op == "remove":
        life.pods.pods.remove(life.pod_id)


@pytest.mark.parametrize("seed", seeds(31), ids=lambda s: f"seed={s}")
def test_kill_9_during_pod_lifecycle(
    client_factory: Callable[..., Client],
    fault_images: FaultImages,
    pods_factory: Callable[[Client], Pods],
    seed: int,
) -> None:
    rng = random.Random(seed)
    cl = client_factory(f'[cri]\nsandbox_image = "{fault_images.ref("pause")}"\n')
    pods = pods_factory(cl)
    sentinel_pod, sentinel_config = pods.run("sentinel")
    sentinel = pods.container(sentinel_pod, sentinel_config, "sentinel", SLEEPER)
    sentinel_pid = containers(cl.d)[sentinel].pid

    took: dict[str, float] = {}
    calibrate = PodLife(pods, "calibrate")
    for op in OPS:
        started = time.monotonic()
        made = calibrate.call(op).result()
        took[op] = time.monotonic() - started
        calibrate.pod_id = getattr(made, "pod_sandbox_id", "") or calibrate.pod_id
        calibrate.cid = getattr(made, "container_id", "") or calibrate.cid

    for n in range(ROUNDS):
        life = PodLife(pods, f"victim{n}")
        for op in OPS:
            delay = rng.uniform(0.0, took[op] * 1.2)
            where = f"seed {seed} pod {n} {op}: kill after {delay:.3f}s of {took[op]:.3f}s"
            call = life.call(op)
            time.sleep(delay)
            cl.d.kill()
            try:
                call.result()
            except grpc.RpcError as e:
                assert rpc_error(e)[0] == grpc.StatusCode.UNAVAILABLE, (where, e)
            cl.reconnect()
            cl.d.start()

            life.find()
            if life.pod_id and life.pod_id not in pods.pods:
                pods.pods.append(life.pod_id)
            state = life.state()
            assert state in MAY_BE[op], (where, state)
            assert problems(cl.d) == [], where
            assert pods.status(sentinel).state == cri_pb2.CONTAINER_RUNNING, where
            assert alive(sentinel_pid), where
            _retry(life, op, state)
            life.find()
            assert life.state() == MUST_BE[op], where
            assert problems(cl.d) == [], where

    pods.remove(sentinel_pod)
    assert containers(cl.d) == {}
    assert problems(cl.d) == []
