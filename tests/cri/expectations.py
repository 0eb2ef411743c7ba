"""What critest and the kubelet require of CRI answers, as checks tests share."""

from __future__ import annotations

import time
import uuid

import grpc

from pyctr.proto import cri_pb2 as cri

SECOND = 1_000_000_000
NOT_FOUND = grpc.StatusCode.NOT_FOUND
# The kubelet's well-known pod labels (k8s.io/kubelet/pkg/types).
POD_NAME, POD_NAMESPACE, POD_UID = (
    "io.kubernetes.pod.name",
    "io.kubernetes.pod.namespace",
    "io.kubernetes.pod.uid",
)


def plausible_ns(ts: int, since: int) -> None:
    """A nanosecond wall-clock time taken during the test (not s, not ms)."""
    assert since - 2 * SECOND <= ts <= time.time_ns() + SECOND, (ts, since)


def critest_pod(prefix: str, *, labels: dict[str, str] | None = None) -> cri.PodSandboxConfig:
    """A pod config shaped like critest's framework makes them."""
    name = prefix + str(uuid.uuid4())
    uid = "cri-test-uid" + str(uuid.uuid4())
    namespace = "cri-test-namespace" + str(uuid.uuid4())
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=2),
        labels={POD_NAME: name, POD_NAMESPACE: namespace, POD_UID: uid, **(labels or {})},
        annotations={"abc": "def"},
        linux=cri.LinuxPodSandboxConfig(),
    )


def verify_sandbox_status(st: cri.PodSandboxStatus) -> None:
    """What the kubelet's remote runtime client refuses a PodSandboxStatus without."""
    assert st.id and st.HasField("metadata") and st.created_at != 0
    assert st.metadata.name and st.metadata.namespace and st.metadata.uid


def verify_container_status(st: cri.ContainerStatus) -> None:
    """What the kubelet's remote runtime client refuses a ContainerStatus without."""
    assert st.id and st.HasField("metadata") and st.metadata.name and st.created_at != 0
    assert st.HasField("image") and st.image.image and st.image_ref
