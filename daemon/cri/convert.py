"""Records to CRI messages: pod and container statuses, summaries, filters.

Pure functions over `Container` records: no I/O, so the kubelet's
once-a-second polls (ListPodSandbox, ListContainers, ContainerStatus) cost
a dict lookup and some message building, never a shim call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal as signals
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

from pyctr.daemon.errors import PyctrError
from pyctr.daemon.runtime.records import CriContainer, Sandbox, StatusMount
from pyctr.daemon.runtime.states import Status
from pyctr.daemon.spec.cri import cri_resources, cri_signal, parse_signal
from pyctr.proto import cri_pb2 as cri

log = logging.getLogger(__name__)

T = TypeVar("T")
# Items per message of a CRI Stream* call: well under the 16 MiB message limit
# for the largest summaries (stats pass a smaller size).
STREAM_CHUNK = 500

_STATES = {
    Status.CREATED: cri.CONTAINER_CREATED,
    Status.RUNNING: cri.CONTAINER_RUNNING,
    Status.EXITED: cri.CONTAINER_EXITED,
}


def labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- pods -----------------------------------------------------------------------


def pod_state(sb: Sandbox) -> int:
    return cri.SANDBOX_READY if sb.ready else cri.SANDBOX_NOTREADY


def pod_metadata(sb: Sandbox) -> cri.PodSandboxMetadata:
    md = sb.metadata
    return cri.PodSandboxMetadata(
        name=md.name, uid=md.uid, namespace=md.namespace, attempt=md.attempt
    )


def pod_summary(sb: Sandbox) -> cri.PodSandbox:
    return cri.PodSandbox(
        id=sb.id,
        metadata=pod_metadata(sb),
        state=pod_state(sb),  # type: ignore[arg-type]
        created_at=sb.created_at,
        labels=sb.labels,
        annotations=sb.annotations,
        runtime_handler=sb.runtime_handler,
    )


def pod_status(sb: Sandbox) -> cri.PodSandboxStatus:
    ips, ns = sb.ips, sb.namespaces
    return cri.PodSandboxStatus(
        id=sb.id,
        metadata=pod_metadata(sb),
        state=pod_state(sb),  # type: ignore[arg-type]
        created_at=sb.created_at,
        network=cri.PodSandboxNetworkStatus(
            ip=ips[0] if ips else "", additional_ips=[cri.PodIP(ip=ip) for ip in ips[1:]]
        ),
        linux=cri.LinuxPodSandboxStatus(
            namespaces=cri.Namespace(
                options=cri.NamespaceOption(
                    network=ns.network,  # type: ignore[arg-type]
                    pid=ns.pid,  # type: ignore[arg-type]
                    ipc=ns.ipc,  # type: ignore[arg-type]
                )
            )
        ),
        labels=sb.labels,
        annotations=sb.annotations,
        runtime_handler=sb.runtime_handler,
    )


def pod_matches(sb: Sandbox, f: cri.PodSandboxFilter) -> bool:
    return (
        sb.id.startswith(f.id)  # an empty f.id is a prefix of every ID
        and (not f.HasField("state") or pod_state(sb) == f.state.state)
        and labels_match(sb.labels, f.label_selector)
    )


def pod_info(sb: Sandbox) -> dict[str, str]:
    """The verbose map of PodSandboxStatus: JSON, like containerd's."""
    info = {
        "pid": sb.pid,
        "status": sb.status,
        "netns": sb.netns,
        "image": sb.image,
        "imageId": sb.image_id,
        "cgroupParent": sb.cgroup_parent,
        "runtimeSpec": sb.spec,
        "config": sb.config,
    }
    return {"info": json.dumps(info)}


# -- containers -----------------------------------------------------------------


def container_state(c: CriContainer) -> int:
    return _STATES.get(c.status, cri.CONTAINER_UNKNOWN)


def container_metadata(c: CriContainer) -> cri.ContainerMetadata:
    return cri.ContainerMetadata(name=c.metadata.name, attempt=c.metadata.attempt)


def image_spec(c: CriContainer, for_status: bool = False) -> cri.ImageSpec:
    """The container's ImageSpec as created; for ContainerStatus, with the
    image's tag in place of the ID the kubelet created it from (containerd's
    shape: the kubelet shows status.image.image to users)."""
    spec = c.image_spec
    name = c.image_name if for_status else ""
    return cri.ImageSpec(
        image=name or spec.image or c.image,
        annotations=spec.annotations,
        user_specified_image=spec.user_specified_image,
        runtime_handler=spec.runtime_handler,
    )


def container_summary(c: CriContainer) -> cri.Container:
    return cri.Container(
        id=c.id,
        pod_sandbox_id=c.sandbox_id,
        metadata=container_metadata(c),
        image=image_spec(c),
        # The image ID, as containerd lists it: kubelets before 1.30 key their
        # image GC's in-use set on Container.image_ref and match it to Image.id.
        image_ref=c.image_id or c.image_ref,
        state=container_state(c),  # type: ignore[arg-type]
        created_at=c.created_at,
        labels=c.labels,
        annotations=c.annotations,
        image_id=c.image_id,
    )


def container_matches(c: CriContainer, f: cri.ContainerFilter) -> bool:
    return (
        c.id.startswith(f.id)
        and c.sandbox_id.startswith(f.pod_sandbox_id)
        and (not f.HasField("state") or container_state(c) == f.state.state)
        and labels_match(c.labels, f.label_selector)
    )


def stop_signal(c: CriContainer, *, warn: bool = False) -> int:
    """The signal StopContainer sends: the request's, else the image's
    StopSignal, else SIGTERM. `warn` logs an image StopSignal that is not one."""
    with contextlib.suppress(PyctrError, ValueError):
        sig = cri_signal(c.stop_signal)
        if sig:
            return sig
    if c.image_stop_signal:
        try:
            return parse_signal(c.image_stop_signal)
        except PyctrError:
            if warn:
                log.warning(
                    "image StopSignal %r of %s is not a signal", c.image_stop_signal, c.id[:12]
                )
    return int(signals.SIGTERM)


_SIGNAL_ENUM: dict[int, int] = {}


def status_stop_signal(c: CriContainer) -> int:
    """stop_signal() as a CRI Signal (as containerd reports it; the kubelet
    shows it as the container's stopSignal); a requested one as given."""
    if c.stop_signal:
        return c.stop_signal
    if not _SIGNAL_ENUM:  # number -> enum value, first (canonical) name winning
        for value in reversed(cri.Signal.values()):
            if value:
                _SIGNAL_ENUM[cri_signal(value)] = value
    return _SIGNAL_ENUM.get(stop_signal(c), cri.SIGNAL_SIGTERM)


def _resources(c: CriContainer) -> cri.ContainerResources:
    linux = c.spec.get("linux") or {}
    oom = (c.spec.get("process") or {}).get("oomScoreAdj", 0)
    return cri.ContainerResources(linux=cri_resources(linux.get("resources") or {}, oom))


def status_mount(m: StatusMount) -> cri.Mount:
    """A mount as asked for; an image volume names its image with the ID it resolved to."""
    image = cri.ImageSpec(image=m.image, image_ref=m.image_ref) if m.image else None
    return cri.Mount(
        container_path=m.container_path,
        host_path=m.host_path,
        readonly=m.readonly,
        propagation=m.propagation,  # type: ignore[arg-type]
        selinux_relabel=m.selinux_relabel,
        recursive_read_only=m.recursive_read_only,
        image=image,
        image_sub_path=m.image_sub_path,
    )


def container_status(c: CriContainer) -> cri.ContainerStatus:
    user = (c.spec.get("process") or {}).get("user") or {}
    status = cri.ContainerStatus(
        id=c.id,
        metadata=container_metadata(c),
        state=container_state(c),  # type: ignore[arg-type]
        created_at=c.created_at,
        started_at=c.started_at,
        finished_at=c.finished_at,
        exit_code=c.exit_code if c.status.has_exited else 0,
        image=image_spec(c, for_status=True),
        # The repo digest (the pod's containerStatuses[].imageID).
        image_ref=c.image_ref or c.image_id,
        reason=c.reason if c.status.has_exited else "",
        message=c.message if c.status.has_exited else "",
        labels=c.labels,
        annotations=c.annotations,
        mounts=[status_mount(m) for m in c.mounts],
        log_path=c.log_path,
        resources=_resources(c),
        image_id=c.image_id,
        user=cri.ContainerUser(
            linux=cri.LinuxContainerUser(
                uid=user.get("uid", 0),
                gid=user.get("gid", 0),
                supplemental_groups=user.get("additionalGids") or [],
            )
        ),
        stop_signal=status_stop_signal(c),  # type: ignore[arg-type]
    )
    return status


def container_info(c: CriContainer) -> dict[str, str]:
    info: dict[str, Any] = {
        "sandboxID": c.sandbox_id,
        "pid": c.pid,
        "snapshotKey": c.snapshot,
        "image": c.image,
        "imageId": c.image_id,
        "logPath": c.log_path,
        "runtimeSpec": c.spec,
        "status": c.status,
    }
    return {"info": json.dumps(info)}


def now_ns() -> int:
    return time.time_ns()


def chunks(items: Sequence[T], size: int = STREAM_CHUNK) -> Iterator[Sequence[T]]:
    """`items` in slices of `size` for a Stream* call; one empty slice for no
    items, so the stream always answers once."""
    for i in range(0, max(len(items), 1), size):
        yield items[i : i + size]
