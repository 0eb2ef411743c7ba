"""Fixtures for the fault and abuse suite: one registry with the images it needs.

    fault_images.big      five layers (busybox, 600 small files, 3 x 384 KiB of noise):
                          long enough to download and unpack that a kill lands inside
    fault_images.busybox  one busybox layer, Cmd sh: what containers run
    fault_images.ghost    busybox whose config says User "ghost" (not in /etc/passwd)
    fault_images.pause    busybox that sleeps until SIGTERM: a pod's infra container
    fault_images.evil     busybox plus /evil -> EVIL_TARGET and /evil2 -> ../../../..EVIL_TARGET
    fault_images.eviletc  busybox whose /etc is a symlink to EVIL_TARGET, a host path

Seeds: every randomised test takes its seed from its parameter (shown in the
test id) or from PYCTR_FAULT_SEED, so `PYCTR_FAULT_SEED=7 pytest -k crash` replays
one run.
"""

from __future__ import annotations

import contextlib
import os
import random
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from pyctr.proto import containers_pb2 as pb
from pyctr.proto import containers_pb2_grpc, cri_pb2, cri_pb2_grpc, images_pb2, images_pb2_grpc
from tests.conftest import TOKEN
from tests.support import cgroups
from tests.support.daemon import PyctrDaemon
from tests.support.images import (
    BUSYBOX,
    BuiltImage,
    build_image,
    busybox_layer,
    files_layer,
    push,
    tar_bytes,
)
from tests.support.registry import Registry
from tests.support.timing import scaled

pytestmark = pytest.mark.root

PAUSE = [
    "/bin/busybox",
    "sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
]


# A host path that hostile images point their symlinks at: nothing may ever
# appear in it (it is made empty by the tests that use it).
EVIL_TARGET = f"/tmp/{TOKEN}-evil"


def _entry(name: str, kind: bytes, mode: int, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = kind, mode, linkname, 1_700_000_000
    return info


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    return _entry(name, tarfile.SYMTYPE, 0o777, target)


def seeds(*default: int) -> list[int]:
    """The seeds a randomised test runs with: PYCTR_FAULT_SEED if set, else `default`."""
    env = os.environ.get("PYCTR_FAULT_SEED")
    return [int(env)] if env else list(default)


def noise(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


@dataclass
class FaultImages:
    registry: Registry
    big: BuiltImage
    busybox: BuiltImage
    ghost: BuiltImage
    pause: BuiltImage
    evil: BuiltImage
    eviletc: BuiltImage

    def ref(self, name: str, host: str = "") -> str:
        return f"{host or self.registry.host}/faults/{name}:1"


@pytest.fixture(scope="session")
def fault_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultImages]:
    if os.geteuid() != 0:
        pytest.skip("the fault suite runs pyctrd, which needs root")
    base = tmp_path_factory.mktemp("fault-images")
    layout = base / "oci"
    rng = random.Random(20240601)
    many = files_layer({f"many/{i // 100}/f{i}": b"x" * (i % 200) for i in range(600)})
    noise_layers = [files_layer({f"noise/{n}": noise(rng, 384 << 10)}) for n in range(3)]
    with Registry(base) as reg:
        big = build_image(layout, "big", [busybox_layer(), many, *noise_layers])
        bb = build_image(layout, "busybox", [busybox_layer()], cmd=["/bin/sh"])
        ghost = build_image(layout, "ghost", [busybox_layer()], user="ghost")
        pause = build_image(layout, "pause", [busybox_layer()], entrypoint=PAUSE, cmd=[])
        links = tar_bytes(
            [_symlink("evil", EVIL_TARGET), _symlink("evil2", "../../.." + EVIL_TARGET)]
        )
        evil = build_image(layout, "evil", [busybox_layer(), links], cmd=["/bin/sh"])
        etc_link = tar_bytes(
            [(_entry("bin", tarfile.DIRTYPE, 0o755), b""),
             (_entry("bin/busybox", tarfile.REGTYPE, 0o755), BUSYBOX.read_bytes()),
             _symlink("bin/sh", "busybox"), _symlink("bin/sleep", "busybox"),
             _symlink("bin/cat", "busybox"), _symlink("etc", EVIL_TARGET)]
        )  # fmt: skip
        eviletc = build_image(layout, "eviletc", [etc_link], cmd=["/bin/sh"])
        for tag in ("big", "busybox", "ghost", "pause", "evil", "eviletc"):
            push(layout, tag, f"{reg.host}/faults/{tag}:1")
        yield FaultImages(reg, big, bb, ghost, pause, evil, eviletc)


# -- small clients ---------------------------------------------------------------


class Client:
    """The native and CRI APIs of one daemon, on a channel that survives restarts."""

    def __init__(self, d: PyctrDaemon) -> None:
        self.d = d
        self._channel: grpc.Channel | None = None

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = self.d.channel()
        return self._channel

    def reconnect(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None

    @property
    def ctr(self) -> containers_pb2_grpc.ContainersStub:
        return containers_pb2_grpc.ContainersStub(self.channel)

    @property
    def rt(self) -> cri_pb2_grpc.RuntimeServiceStub:
        return cri_pb2_grpc.RuntimeServiceStub(self.channel)

    @property
    def img(self) -> cri_pb2_grpc.ImageServiceStub:
        return cri_pb2_grpc.ImageServiceStub(self.channel)

    def pull(self, ref: str, timeout: float = 60) -> str:
        req = cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=ref))
        return self.img.PullImage(req, timeout=timeout).image_ref

    def native_pull(self, ref: str, timeout: float = 60) -> None:
        stub = images_pb2_grpc.ImagesStub(self.channel)
        for _ in stub.Pull(images_pb2.ImagePullRequest(reference=ref), timeout=timeout):
            pass

    def run(self, image: str, args: list[str], **kw: object) -> pb.ContainerInfo:
        req = pb.ContainerCreateRequest(image=image, args=args, **kw)  # type: ignore[arg-type]
        return self.ctr.Run(req, timeout=scaled(60)).container

    def create(self, image: str, args: list[str], **kw: object) -> pb.ContainerInfo:
        req = pb.ContainerCreateRequest(image=image, args=args, **kw)  # type: ignore[arg-type]
        return self.ctr.Create(req, timeout=scaled(60)).container

    def get(self, ref: str) -> pb.ContainerInfo:
        return self.ctr.Get(pb.ContainerGetRequest(container=ref), timeout=10).container

    def list(self) -> list[pb.ContainerInfo]:
        return list(self.ctr.List(pb.ContainerListRequest(all=True), timeout=10).containers)

    def remove_all(self) -> None:
        for c in self.list():
            with contextlib.suppress(grpc.RpcError):
                self.ctr.Remove(pb.ContainerRemoveRequest(container=c.id, force=True), timeout=30)

    def close(self) -> None:
        self.reconnect()


@pytest.fixture
def client_factory(daemon_factory: Callable[..., PyctrDaemon]) -> Iterator[Callable[..., Client]]:
    """Daemons with a Client each; their containers are removed at the end."""
    made: list[Client] = []

    def make(config_toml: str = "", **kw: object) -> Client:
        c = Client(daemon_factory(config_toml, **kw))
        made.append(c)
        return c

    yield make
    for c in made:
        if c.d.proc is not None and c.d.proc.poll() is None:
            with contextlib.suppress(grpc.RpcError):
                c.remove_all()
        c.close()


def rpc_error(call: object) -> tuple[grpc.StatusCode, str]:
    assert isinstance(call, grpc.RpcError), call
    return call.code(), call.details() or ""  # type: ignore[attr-defined]


# -- CRI pods without networking (host network: no CNI needed) ----------------------


class Pods:
    """Host-network pods and their containers, made and cleaned up like the kubelet does."""

    def __init__(self, cl: Client, image: str) -> None:
        self.cl = cl
        self.image = image
        self.pods: list[str] = []
        self.cgroups: list[str] = []

    def config(self, name: str, log_dir: str = "") -> cri_pb2.PodSandboxConfig:
        uid = uuid.uuid4().hex
        cgroup = cgroups.pod_parent(TOKEN, uid[:12])
        self.cgroups.append(cgroup)
        return cri_pb2.PodSandboxConfig(
            metadata=cri_pb2.PodSandboxMetadata(name=name, uid=uid, namespace="faults"),
            log_directory=log_dir or str(self.cl.d.base / "pod-logs" / uid),
            linux=cri_pb2.LinuxPodSandboxConfig(
                cgroup_parent=cgroup,
                security_context=cri_pb2.LinuxSandboxSecurityContext(
                    namespace_options=cri_pb2.NamespaceOption(network=cri_pb2.NODE)
                ),
            ),
        )

    def run(self, name: str, log_dir: str = "") -> tuple[str, cri_pb2.PodSandboxConfig]:
        config = self.config(name, log_dir)
        req = cri_pb2.RunPodSandboxRequest(config=config)
        pod_id = self.cl.rt.RunPodSandbox(req, timeout=60).pod_sandbox_id
        self.pods.append(pod_id)
        return pod_id, config

    def container(
        self,
        pod_id: str,
        pod: cri_pb2.PodSandboxConfig,
        name: str,
        command: list[str],
        start: bool = True,
        **kw: Any,
    ) -> str:
        config = cri_pb2.ContainerConfig(
            metadata=cri_pb2.ContainerMetadata(name=name),
            image=cri_pb2.ImageSpec(image=self.image),
            command=command,
            log_path=f"{name}.log",
            **kw,
        )
        req = cri_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod
        )
        cid = self.cl.rt.CreateContainer(req, timeout=60).container_id
        if start:
            self.cl.rt.StartContainer(cri_pb2.StartContainerRequest(container_id=cid), timeout=60)
        return cid

    def status(self, cid: str) -> cri_pb2.ContainerStatus:
        req = cri_pb2.ContainerStatusRequest(container_id=cid)
        return self.cl.rt.ContainerStatus(req, timeout=10).status

    def remove(self, pod_id: str) -> None:
        rt = self.cl.rt
        rt.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        rt.RemovePodSandbox(cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        self.pods.remove(pod_id)

    def cleanup(self) -> None:
        if self.cl.d.proc is not None and self.cl.d.proc.poll() is None:
            for pod_id in list(self.pods):
                with contextlib.suppress(grpc.RpcError):
                    self.remove(pod_id)
        cgroups.remove_pod_cgroups(self.cgroups)


@pytest.fixture
def pods_factory(fault_images: FaultImages) -> Iterator[Callable[[Client], Pods]]:
    made: list[Pods] = []

    def make(cl: Client) -> Pods:
        cl.pull(fault_images.ref("pause"))
        cl.pull(fault_images.ref("busybox"))
        p = Pods(cl, fault_images.ref("busybox"))
        made.append(p)
        return p

    yield make
    for p in made:
        p.cleanup()
