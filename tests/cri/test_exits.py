"""A container's exit when its init leaves other processes behind.

In a pod that shares its PID namespace (and in the node's) a child the init
sent to the background outlives it, holding the container's stdout. The
kubelet takes the container as exited once init is: the runtime kills what is
left of the container's cgroup at once and reports the exit with every line
of output in the log, without waiting for that child. That the kill comes
before the exit is final is pinned at the shim (tests/shim/test_lifecycle.py:
here the daemon's delete after the exit would end the child too); how long
it takes is the benchmark's (`lifecycle.stop_shared_pid`), never a test's.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import BB, Kubelet
from tests.support.timing import scaled

pytestmark = pytest.mark.root

LINES = 300


def live_pids_with(marker: str) -> list[int]:
    """Processes (not zombies) whose command line holds marker."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if marker.encode() in cmdline and stat[stat.rindex(")") + 2] != "Z":
            out.append(int(entry))
    return out


def script(marker: str) -> list[str]:
    """Start a background child that writes to stdout, let it run, write a
    burst of lines, exit 3: the last line lands just before init exits."""
    child = "touch /tmp/started; while :; do echo tick; sleep 1; done"
    burst = f"i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); echo line$i; done"
    return [
        BB,
        "sh",
        "-c",
        f"{BB} sh -c '{child}' {marker} & "
        "while [ ! -e /tmp/started ]; do sleep 0.05; done; "
        f"{burst}; echo last; exit 3",
    ]


def run_and_wait_exit(kube: Kubelet, pid_mode: int) -> tuple[cri.ContainerStatus, str, str]:
    marker = f"bg-{uuid.uuid4().hex[:12]}"
    pod = kube.pod_config(f"exits-{marker[3:9]}", pid=pid_mode)
    pod_id = kube.run_pod(pod)
    ns = cri.NamespaceOption(network=cri.POD, pid=pid_mode, ipc=cri.POD)
    security = cri.LinuxContainerSecurityContext(namespace_options=ns)
    cid = kube.run(pod_id, pod, "main", script(marker), security=security)
    st = kube.wait_state(cid, cri.CONTAINER_EXITED, timeout=30)
    assert st.state == cri.CONTAINER_EXITED, st
    return st, marker, Path(st.log_path).read_text()


def output_lines(log: str) -> list[str]:
    # CRI log: "<time> <stream> <tag> <line>"; every line here is a full one (F).
    return [line.split(" ", 3)[3] for line in log.splitlines()]


@pytest.mark.parametrize("pid_mode", [cri.POD, cri.NODE], ids=["pod_pid_ns", "node_pid_ns"])
def test_exit_kills_leftovers_and_keeps_all_output(kube: Kubelet, pid_mode: int) -> None:
    st, marker, log = run_and_wait_exit(kube, pid_mode)
    assert st.exit_code == 3 and st.reason == "Error"
    # The child outlives init in a shared PID namespace; the runtime killed
    # it with the exit (left alone it would tick on until the pod stops).
    end = time.monotonic() + scaled(5)
    while live_pids_with(marker) and time.monotonic() < end:
        time.sleep(0.05)
    assert live_pids_with(marker) == []
    lines = output_lines(log)
    assert [x for x in lines if x.startswith("line")] == [f"line{i}" for i in range(1, LINES + 1)]
    assert lines[-1] in ("last", "tick") and "last" in lines
    assert "tick" in lines  # the child's own output, read to its end


def test_own_pid_namespace_child_dies_with_init(kube: Kubelet) -> None:
    # The usual pod: init is PID 1 of the container's namespace, the kernel
    # ends the rest with it; the exit and the output are the same.
    st, marker, log = run_and_wait_exit(kube, cri.CONTAINER)
    assert st.exit_code == 3
    assert live_pids_with(marker) == []
    lines = output_lines(log)
    assert [x for x in lines if x.startswith("line")] == [f"line{i}" for i in range(1, LINES + 1)]
    assert "last" in lines


def test_stop_in_shared_pid_pod_leaves_nothing(kube: Kubelet) -> None:
    # StopContainer of a shell that traps SIGTERM while a child sleeps on:
    # the stop returns with the container exited and its child gone.
    marker = f"bg-{uuid.uuid4().hex[:12]}"
    pod = kube.pod_config(f"stop-{marker[3:9]}", pid=cri.POD)
    pod_id = kube.run_pod(pod)
    ns = cri.NamespaceOption(network=cri.POD, pid=cri.POD, ipc=cri.POD)
    security = cri.LinuxContainerSecurityContext(namespace_options=ns)
    cmd = [
        BB,
        "sh",
        "-c",
        f"trap 'echo bye; exit 0' TERM; {BB} sh -c 'sleep 1000' {marker} & "
        "echo ready; while :; do sleep 1; done",
    ]
    cid = kube.run(pod_id, pod, "main", cmd, security=security)
    log_path = kube.status(cid).log_path
    end = time.monotonic() + scaled(20)
    while not (live_pids_with(marker) and "ready" in Path(log_path).read_text()):
        assert time.monotonic() < end, "the container never became ready"
        time.sleep(0.05)
    kube.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=30), timeout=60)
    st = kube.status(cid)
    assert st.state == cri.CONTAINER_EXITED and st.exit_code == 0
    end = time.monotonic() + scaled(5)
    while live_pids_with(marker) and time.monotonic() < end:
        time.sleep(0.05)
    assert live_pids_with(marker) == []
    assert output_lines(Path(log_path).read_text()) == ["ready", "bye"]
