"""GetContainerEvents as the kubelet's evented PLEG consumes it: every event
carries the pod's status with its metadata (the kubelet drops events without)
and the statuses of the pod's containers, from which it builds the pod's
status without asking again."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import BB, CriEnv, Kubelet
from tests.cri.expectations import plausible_ns, verify_container_status, verify_sandbox_status

pytestmark = pytest.mark.root


class EventStream:
    """GetContainerEvents read on a thread, as the kubelet's evented PLEG does."""

    def __init__(self, env: CriEnv) -> None:
        self.call = env.rt.GetContainerEvents(cri.GetEventsRequest())
        self.events: list[cri.ContainerEventResponse] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        time.sleep(0.2)  # let the subscription start

    def _read(self) -> None:
        try:
            for event in self.call:
                self.events.append(event)
        except grpc.RpcError:
            pass

    def of(self, cid: str) -> list[cri.ContainerEventResponse]:
        return [e for e in self.events if e.container_id == cid]

    def wait(self, cid: str, kind: int, timeout: float = 10) -> cri.ContainerEventResponse:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.of(cid):
                if e.container_event_type == kind:
                    return e
            time.sleep(0.05)
        raise AssertionError(f"no event {kind} for {cid[:12]}: {self.of(cid)}")

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)


def test_events_carry_what_the_evented_pleg_needs(cri_env: CriEnv, kube: Kubelet) -> None:
    since = time.time_ns()
    stream = EventStream(cri_env)
    try:
        config = kube.pod_config("Evented")
        pod_id = kube.run_pod(config)
        cid = kube.run(pod_id, config, "job", [BB, "sh", "-c", "exit 3"])
        kube.wait_state(cid, cri.CONTAINER_EXITED)
        kube.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))
        kube.stop_pod(pod_id)
        kube.remove_pod(pod_id)
        expect_state = {
            cri.CONTAINER_CREATED_EVENT: cri.CONTAINER_CREATED,
            cri.CONTAINER_STARTED_EVENT: cri.CONTAINER_RUNNING,
            cri.CONTAINER_STOPPED_EVENT: cri.CONTAINER_EXITED,
        }
        for kind in (*expect_state, cri.CONTAINER_DELETED_EVENT):
            for subject in (cid, pod_id):
                e = stream.wait(subject, kind)
                # The kubelet drops an event without the pod's metadata and
                # builds the pod's status from the event alone.
                verify_sandbox_status(e.pod_sandbox_status)
                assert e.pod_sandbox_status.id == pod_id
                assert e.pod_sandbox_status.metadata == config.metadata
                plausible_ns(e.created_at, since)
                for st in e.containers_statuses:
                    verify_container_status(st)
                mine = [s for s in e.containers_statuses if s.id == cid]
                if subject == cid and kind in expect_state:
                    assert [s.state for s in mine] == [expect_state[kind]], kind
                if kind == cri.CONTAINER_DELETED_EVENT:
                    assert mine == []
        stopped = stream.wait(cid, cri.CONTAINER_STOPPED_EVENT)
        [st] = [s for s in stopped.containers_statuses if s.id == cid]
        assert (st.exit_code, st.reason) == (3, "Error")
        assert stream.wait(pod_id, cri.CONTAINER_STOPPED_EVENT).pod_sandbox_status.state == (
            cri.SANDBOX_NOTREADY
        )
    finally:
        stream.close()

    # A stream opened late (a restarted kubelet) still gets the pod's metadata
    # on the delete of a pod it saw nothing else of.
    config = kube.pod_config("Evented-late")
    pod_id = kube.run_pod(config)
    kube.stop_pod(pod_id)
    late = EventStream(cri_env)
    try:
        kube.remove_pod(pod_id)
        e = late.wait(pod_id, cri.CONTAINER_DELETED_EVENT)
        verify_sandbox_status(e.pod_sandbox_status)
        assert e.pod_sandbox_status.metadata == config.metadata
        assert e.pod_sandbox_status.state == cri.SANDBOX_NOTREADY
    finally:
        late.close()
