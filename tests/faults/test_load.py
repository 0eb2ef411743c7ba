"""Load: many CRI clients at once for a bounded time, then 100 containers at once.

No call may fail, the daemon's memory must stay bounded (RSS measured after a
warm-up and at the end), and afterwards nothing is left: the leak check (shims,
mounts, cgroups) and the consistency check (metadata vs disk) both agree.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from pyctr.proto import containers_pb2 as pb
from pyctr.proto import cri_pb2
from tests.faults.conftest import Client, FaultImages, Pods
from tests.faults.consistency import containers, problems

pytestmark = pytest.mark.root

CLIENTS = 16
HAMMER_SECONDS = float(os.environ.get("PYCTR_LOAD_SECONDS", "20"))
MANY = 100
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _cycle(pods: Pods, n: int, client: int, calls: Counter[str]) -> None:
    """One pod's life as the kubelet drives it, with a container inside."""
    rt = pods.cl.rt
    pod_id, pod = pods.run(f"load-{client}-{n}")
    cid = pods.container(pod_id, pod, "work", SLEEPER)
    listed = rt.ListContainers(
        cri_pb2.ListContainersRequest(filter=cri_pb2.ContainerFilter(pod_sandbox_id=pod_id)),
        timeout=30,
    ).containers
    assert [c.id for c in listed] == [cid]
    assert pods.status(cid).state == cri_pb2.CONTAINER_RUNNING
    res = rt.ExecSync(
        cri_pb2.ExecSyncRequest(container_id=cid, cmd=["echo", f"c{client}n{n}"], timeout=20),
        timeout=40,
    )
    assert (res.exit_code, res.stdout) == (0, f"c{client}n{n}\n".encode()), res
    rt.PodSandboxStatus(cri_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=30)
    rt.ListPodSandbox(cri_pb2.ListPodSandboxRequest(), timeout=30)
    rt.StopContainer(cri_pb2.StopContainerRequest(container_id=cid, timeout=5), timeout=60)
    rt.RemoveContainer(cri_pb2.RemoveContainerRequest(container_id=cid), timeout=60)
    pods.remove(pod_id)
    calls["cycles"] += 1


def test_clients_hammering_the_cri(
    client_factory: Callable[..., Client],
    fault_images: FaultImages,
    pods_factory: Callable[[Client], Pods],
) -> None:
    cl = client_factory(f'[cri]\nsandbox_image = "{fault_images.ref("pause")}"\n')
    pods = pods_factory(cl)
    calls: Counter[str] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    _cycle(pods, 0, 0, calls)  # warm-up: imports, caches, first shim
    rss_before = rss_mib(cl.d.pid)
    deadline = time.monotonic() + HAMMER_SECONDS

    def client(k: int) -> None:
        # Each client its own channel, as separate kubelet-like processes would.
        own = Client(cl.d)
        mine = Pods(own, pods.image)
        n = 0
        try:
            while time.monotonic() < deadline and not errors:
                n += 1
                _cycle(mine, n, k, calls)
        except Exception:
            with lock:
                errors.append(f"client {k} cycle {n}:\n{traceback.format_exc()}")
        finally:
            mine.cleanup()
            with lock:
                pods.cgroups.extend(mine.cgroups)
            own.close()

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    assert not errors, errors[0]
    rss_after = rss_mib(cl.d.pid)
    assert calls["cycles"] >= CLIENTS, calls  # everyone got through at least once
    assert rss_after < rss_before + 64, (rss_before, rss_after)
    assert containers(cl.d) == {}
    assert problems(cl.d) == []
    print(f"{calls['cycles']} pod cycles by {CLIENTS} clients in {HAMMER_SECONDS:g}s; "
          f"pyctrd RSS {rss_before:.0f} -> {rss_after:.0f} MiB")  # fmt: skip


def test_a_hundred_containers_at_once(
    client_factory: Callable[..., Client], fault_images: FaultImages
) -> None:
    cl = client_factory()
    image = fault_images.ref("busybox")
    cl.native_pull(image)
    rss_before = rss_mib(cl.d.pid)

    def run(i: int) -> pb.ContainerInfo:
        return cl.run(image, SLEEPER, name=f"many{i}")

    with ThreadPoolExecutor(CLIENTS) as pool:
        started = list(pool.map(run, range(MANY)))
    listed = {c.id: c for c in cl.list()}
    assert len(listed) == MANY
    assert all(c.status == "running" for c in listed.values())
    assert problems(cl.d) == []
    rss_full = rss_mib(cl.d.pid)
    # Each running container costs the daemon little (its shim is a process of its own).
    assert rss_full < rss_before + 100, (rss_before, rss_full)
    for c in started[:: MANY // 5]:
        res = cl.d.ctl("exec", c.name, "echo", "hi")
        assert (res.returncode, res.stdout) == (0, "hi\n"), res.stderr

    def remove(c: pb.ContainerInfo) -> None:
        cl.ctr.Stop(pb.ContainerStopRequest(container=c.id, timeout=5), timeout=60)
        cl.ctr.Remove(pb.ContainerRemoveRequest(container=c.id), timeout=60)

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(remove, started))
    assert cl.list() == []
    assert problems(cl.d) == []
    try:
        cl.rt.Version(cri_pb2.VersionRequest(), timeout=10)
    except grpc.RpcError as e:  # pragma: no cover - the assertion below says it
        raise AssertionError(f"pyctrd stopped answering: {e}") from None
    print(f"{MANY} containers: pyctrd RSS {rss_before:.0f} -> {rss_full:.0f} MiB")
