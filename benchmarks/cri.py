"""A small CRI client for the benchmarks: what a kubelet does, one call at a time.

Every call goes through `Cri.call`, which turns UNIMPLEMENTED into
`NotAvailable`, so a measurement that needs a feature not yet built reports
that instead of failing. Pods use the node's network namespace: pod
networking (CNI) is a cost of its own, and bare runc and `ctr run`, the
baselines, set up none either.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from benchmarks.core import NotAvailable
from pyctr.proto import cri_pb2 as cri
from pyctr.proto import cri_pb2_grpc

# Exits at once on SIGTERM (`wait` returns when a trapped signal arrives), so a
# graceful stop measures the runtime, not a grace period.
# What a kubelet sends for a hostNetwork pod without shareProcessNamespace:
# the node's network, the pod's IPC, a PID namespace per container.
NAMESPACES = cri.NamespaceOption(
    network=cri.NamespaceMode.NODE, ipc=cri.NamespaceMode.POD, pid=cri.NamespaceMode.CONTAINER
)
SLEEPER = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


class Cri:
    def __init__(self, address: str, log_dir: Path, cgroup_root: str) -> None:
        self.channel = grpc.insecure_channel(f"unix:{address}")
        self.runtime = cri_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = cri_pb2_grpc.ImageServiceStub(self.channel)
        self.log_dir = log_dir
        # Pod cgroups go under the bench's own parent, as a kubelet puts them
        # under /kubepods; the bench removes the parent at the end.
        self.cgroup_root = cgroup_root

    def close(self) -> None:
        self.channel.close()

    def call(self, method: Callable[..., Any], request: Any, timeout: float = 120) -> Any:
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                name = type(request).__name__.removesuffix("Request")
                raise NotAvailable(f"CRI {name} answers UNIMPLEMENTED ({e.details()})") from None
            raise

    # -- images ---------------------------------------------------------------

    def pull(self, ref: str) -> str:
        req = cri.PullImageRequest(image=cri.ImageSpec(image=ref))
        return str(self.call(self.images.PullImage, req, timeout=900).image_ref)

    # -- pods and containers --------------------------------------------------

    def pod_config(self, name: str) -> cri.PodSandboxConfig:
        log_dir = self.log_dir / name
        log_dir.mkdir(parents=True, exist_ok=True)
        return cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(
                name=name, uid=uuid.uuid4().hex, namespace="bench", attempt=0
            ),
            hostname=name[:63],
            log_directory=str(log_dir),
            linux=cri.LinuxPodSandboxConfig(
                cgroup_parent=f"{self.cgroup_root}/pod-{name}",
                security_context=cri.LinuxSandboxSecurityContext(namespace_options=NAMESPACES),
            ),
        )

    def run_pod(self, config: cri.PodSandboxConfig) -> str:
        req = cri.RunPodSandboxRequest(config=config)
        return str(self.call(self.runtime.RunPodSandbox, req).pod_sandbox_id)

    def create_container(
        self,
        pod_id: str,
        pod: cri.PodSandboxConfig,
        name: str,
        image: str,
        command: list[str] | None = None,
    ) -> str:
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=name, attempt=0),
            image=cri.ImageSpec(image=image),
            command=command or SLEEPER,
            log_path=f"{name}.log",
            linux=cri.LinuxContainerConfig(
                security_context=cri.LinuxContainerSecurityContext(namespace_options=NAMESPACES)
            ),
        )
        req = cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
        return str(self.call(self.runtime.CreateContainer, req).container_id)

    def start_container(self, container_id: str) -> None:
        self.call(self.runtime.StartContainer, cri.StartContainerRequest(container_id=container_id))

    def stop_container(self, container_id: str, timeout: int = 10) -> None:
        req = cri.StopContainerRequest(container_id=container_id, timeout=timeout)
        self.call(self.runtime.StopContainer, req, timeout=timeout + 60)

    def remove_container(self, container_id: str) -> None:
        req = cri.RemoveContainerRequest(container_id=container_id)
        self.call(self.runtime.RemoveContainer, req)

    def stop_pod(self, pod_id: str) -> None:
        self.call(self.runtime.StopPodSandbox, cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))

    def remove_pod(self, pod_id: str) -> None:
        req = cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
        self.call(self.runtime.RemovePodSandbox, req)

    def pod_with_container(self, image: str, name: str = "") -> tuple[str, str]:
        """RunPodSandbox + CreateContainer + StartContainer; returns (pod, container)."""
        name = name or f"b{uuid.uuid4().hex[:10]}"
        pod = self.pod_config(name)
        pod_id = self.run_pod(pod)
        cid = self.create_container(pod_id, pod, "app", image)
        self.start_container(cid)
        return pod_id, cid

    def time_pod_start(self, pod: cri.PodSandboxConfig, image: str) -> dict[str, float]:
        """RunPodSandbox, CreateContainer, StartContainer, each timed (seconds,
        with their `total`); the pod is removed afterwards, untimed."""
        t0 = time.perf_counter()
        pod_id = self.run_pod(pod)
        t1 = time.perf_counter()
        try:
            cid = self.create_container(pod_id, pod, "app", image)
            t2 = time.perf_counter()
            self.start_container(cid)
            t3 = time.perf_counter()
        finally:
            self.remove_pod_fully(pod_id)
        return {"pod": t1 - t0, "create": t2 - t1, "start": t3 - t2, "total": t3 - t0}

    def remove_pod_fully(self, pod_id: str) -> None:
        self.stop_pod(pod_id)
        self.remove_pod(pod_id)

    def remove_everything(self, deadline_s: float = 120) -> None:
        """Best effort: stop and remove every pod and container (teardown)."""
        deadline = time.monotonic() + deadline_s

        def attempt(fn: Callable[..., Any], *args: Any) -> Any:
            with contextlib.suppress(grpc.RpcError, NotAvailable):
                return fn(*args)
            return None

        listed = attempt(self.call, self.runtime.ListContainers, cri.ListContainersRequest())
        for c in listed.containers if listed else []:
            if time.monotonic() > deadline:
                break
            attempt(self.stop_container, c.id, 0)
            attempt(self.remove_container, c.id)
        listed = attempt(self.call, self.runtime.ListPodSandbox, cri.ListPodSandboxRequest())
        for p in listed.items if listed else []:
            if time.monotonic() > deadline:
                break
            attempt(self.remove_pod_fully, p.id)
