"""Hostile input that is not random: absurd IDs and names, symlinks that point
out of a container's root, users that do not exist, registries that lie.

Each is refused (or contained) with a clear error, and the daemon goes on
serving with its state intact.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from pyctr.proto import containers_pb2 as pb
from pyctr.proto import cri_pb2, cri_pb2_grpc
from tests.faults.conftest import EVIL_TARGET, Client, FaultImages, Pods, rpc_error
from tests.faults.consistency import ingests, problems, query
from tests.faults.netfaults import LyingRegistry, wait_until
from tests.support.images import busybox_layer, files_layer, write_image

pytestmark = pytest.mark.root

ABSURD = [
    "",
    ".",
    "..",
    "/",
    "../../../../etc/passwd",
    "/etc/passwd",
    "a/b",
    "a\0b",
    "\0",
    "x" * 100_000,
    "-rf",
    "%s%n",
    "\u202e",
]
OK_REFUSALS = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}


def _refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return rpc_error(err.value)


@pytest.fixture
def evil_target() -> Iterator[Path]:
    target = Path(EVIL_TARGET)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(mode=0o755)
    yield target
    shutil.rmtree(target, ignore_errors=True)


def _untouched(target: Path) -> None:
    assert list(target.iterdir()) == [], f"something was made on the host in {target}"
    with open("/proc/self/mountinfo") as f:
        assert not [ln for ln in f if str(target) in ln.split()[4]], "a mount on the host path"


def test_absurd_ids_and_names(
    client_factory: Callable[..., Client],
    fault_images: FaultImages,
    pods_factory: Callable[[Client], Pods],
    tmp_path: Path,
) -> None:
    cl = client_factory(f'[cri]\nsandbox_image = "{fault_images.ref("pause")}"\n')
    pods = pods_factory(cl)
    rt = cl.rt
    for bad in ABSURD:
        calls = {
            "ContainerStatus": lambda b=bad: rt.ContainerStatus(
                cri_pb2.ContainerStatusRequest(container_id=b), timeout=10),
            "ExecSync": lambda b=bad: rt.ExecSync(
                cri_pb2.ExecSyncRequest(container_id=b, cmd=["true"]), timeout=10),
            "PodSandboxStatus": lambda b=bad: rt.PodSandboxStatus(
                cri_pb2.PodSandboxStatusRequest(pod_sandbox_id=b), timeout=10),
            "CreateContainer": lambda b=bad: rt.CreateContainer(
                cri_pb2.CreateContainerRequest(pod_sandbox_id=b), timeout=10),
            "native Get": lambda b=bad: cl.get(b),
            "native Remove": lambda b=bad: cl.ctr.Remove(
                pb.ContainerRemoveRequest(container=b), timeout=10),
            "ImageStatus": lambda b=bad: _image_status_or_refusal(cl, b),
            "PullImage": lambda b=bad: cl.pull(b, timeout=20),
        }  # fmt: skip
        for what, call in calls.items():
            try:
                call()
                raise AssertionError(f"{what} took {bad[:40]!r}")
            except grpc.RpcError as e:
                code, details = rpc_error(e)
                ok = OK_REFUSALS | ({grpc.StatusCode.UNAVAILABLE} if what == "PullImage" else set())
                assert code in ok, (what, bad[:40], code, details)
                assert len(details) < 2000, (what, "an error message that echoes everything")
        # Stops and removes of what does not exist are idempotent for the
        # kubelet: OK or refused.
        for call in (
            lambda b=bad: rt.StopContainer(
                cri_pb2.StopContainerRequest(container_id=b, timeout=1), timeout=10),
            lambda b=bad: rt.RemoveContainer(
                cri_pb2.RemoveContainerRequest(container_id=b), timeout=10),
            lambda b=bad: rt.RemovePodSandbox(
                cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=b), timeout=10),
            lambda b=bad: rt.StopPodSandbox(
                cri_pb2.StopPodSandboxRequest(pod_sandbox_id=b), timeout=10),
        ):  # fmt: skip
            try:
                call()
            except grpc.RpcError as e:
                assert rpc_error(e)[0] in OK_REFUSALS, (bad[:40], e)

    # Names go nowhere near a path: as pod and container names they are
    # refused or kept as mere names.
    pod_id, pod = pods.run("names")
    escape = tmp_path / "escaped"
    for bad in ["../../../../../../" + str(escape).lstrip("/"), "a/b", "a\0b", "x" * 100_000, ""]:
        config = pods.config("x")
        config.metadata.name = bad
        try:
            made = rt.RunPodSandbox(cri_pb2.RunPodSandboxRequest(config=config), timeout=30)
            pods.pods.append(made.pod_sandbox_id)
        except grpc.RpcError as e:
            assert rpc_error(e)[0] == grpc.StatusCode.INVALID_ARGUMENT, (bad[:40], e)
        try:
            cid = pods.container(pod_id, pod, bad, ["true"], start=False)
            rt.RemoveContainer(cri_pb2.RemoveContainerRequest(container_id=cid), timeout=30)
        except grpc.RpcError as e:
            assert rpc_error(e)[0] == grpc.StatusCode.INVALID_ARGUMENT, (bad[:40], e)
        # Log paths are where names would do harm: they must stay in the pod's dir.
        for field, value in (("log_path", bad), ("log_path", "../" + bad)):
            config_c = cri_pb2.ContainerConfig(
                metadata=cri_pb2.ContainerMetadata(name="logs"),
                image=cri_pb2.ImageSpec(image=pods.image),
                command=["true"],
                **{field: value},
            )
            req = cri_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=config_c, sandbox_config=pod
            )
            try:
                cid = rt.CreateContainer(req, timeout=30).container_id
                rt.RemoveContainer(cri_pb2.RemoveContainerRequest(container_id=cid), timeout=30)
            except grpc.RpcError as e:
                assert rpc_error(e)[0] == grpc.StatusCode.INVALID_ARGUMENT, (value[:40], e)
    assert not escape.exists()
    pods.remove(pod_id)
    for pod_left in list(pods.pods):
        pods.remove(pod_left)
    # Still consistent and serving.
    assert problems(cl.d) == []
    assert cl.rt.Version(cri_pb2.VersionRequest(), timeout=10).runtime_name == "pyctr"


def _image_status_or_refusal(cl: Client, ref: str) -> None:
    """ImageStatus of an unknown image is an empty answer; make that a NOT_FOUND."""
    req = cri_pb2.ImageStatusRequest(image=cri_pb2.ImageSpec(image=ref))
    resp = cl.img.ImageStatus(req, timeout=10)
    assert not resp.HasField("image"), ref
    raise _Missing()


class _Missing(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.NOT_FOUND

    def details(self) -> str:
        return "no such image"


def test_symlinks_in_images_stay_inside_the_container(
    client_factory: Callable[..., Client],
    fault_images: FaultImages,
    pods_factory: Callable[[Client], Pods],
    evil_target: Path,
    tmp_path: Path,
) -> None:
    cl = client_factory(f'[cri]\nsandbox_image = "{fault_images.ref("pause")}"\n')
    pods = pods_factory(cl)
    evil = fault_images.ref("evil")
    eviletc = fault_images.ref("eviletc")
    cl.native_pull(evil)
    cl.native_pull(eviletc)
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "data").write_text("volume data\n")

    # Native API: mounts and a working dir whose path runs through /evil.
    for dest, seen_as in (("/evil/x", "/evil/x"), ("/evil2/y", "/evil/y"),
                          ("/evil/../evil/z", "/evil/z")):  # fmt: skip
        mount = pb.ContainerMount(source=str(volume), destination=dest, readonly=True)
        c = cl.run(evil, ["sh", "-c", f"cat {seen_as}/data"], mounts=[mount], workdir="/evil/wd")
        info = cl.ctr.Wait(pb.ContainerWaitRequest(container=c.id), timeout=30).container
        assert info.exit_code == 0, (dest, info)
        _untouched(evil_target)

    # CRI: a pod's /etc files (hosts, resolv.conf, hostname) into an image whose
    # /etc is a symlink to a host path; and a volume through the symlink.
    pod_id, pod = pods.run("evil")
    pods.image = eviletc
    cl.pull(eviletc)
    mount = cri_pb2.Mount(container_path="/etc/volume", host_path=str(volume), readonly=True)
    cid = pods.container(pod_id, pod, "evil", ["sleep", "600"], mounts=[mount])
    req = cri_pb2.ExecSyncRequest(
        container_id=cid, cmd=["cat", "/etc/hosts", "/etc/volume/data"], timeout=10
    )
    res = cl.rt.ExecSync(req, timeout=30)
    assert res.exit_code == 0 and b"volume data" in res.stdout, res
    _untouched(evil_target)
    pods.remove(pod_id)
    _untouched(evil_target)
    assert problems(cl.d) == []


def test_users_that_do_not_exist(
    client_factory: Callable[..., Client],
    fault_images: FaultImages,
    pods_factory: Callable[[Client], Pods],
) -> None:
    cl = client_factory(f'[cri]\nsandbox_image = "{fault_images.ref("pause")}"\n')
    pods = pods_factory(cl)
    ghost = fault_images.ref("ghost")
    cl.pull(ghost)
    pod_id, pod = pods.run("ghost")
    attempts = [
        (ghost, None, "'ghost'"),  # the image's own User
        (pods.image, cri_pb2.LinuxContainerSecurityContext(run_as_username="nobody-here"),
         "'nobody-here'"),
    ]  # fmt: skip
    for image, security, says in attempts:
        pods.image = image
        with pytest.raises(grpc.RpcError) as err:
            pods.container(
                pod_id, pod, "ghost", ["true"],
                linux=cri_pb2.LinuxContainerConfig(security_context=security),
            )  # fmt: skip
        code, details = rpc_error(err.value)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and says in details, details
    listed = cl.rt.ListContainers(cri_pb2.ListContainersRequest(), timeout=10).containers
    assert [c for c in listed if c.metadata.name == "ghost"] == []
    pods.remove(pod_id)
    assert problems(cl.d) == []


# -- registries that lie ------------------------------------------------------------


@pytest.fixture(scope="module")
def lying(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LyingRegistry, dict]]:
    layout = tmp_path_factory.mktemp("lying") / "oci"
    img = write_image(layout, [busybox_layer(), files_layer({"hello": b"hi\n"})])

    def blob(digest: str) -> bytes:
        return (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()

    manifest = json.loads(blob(img.manifest.digest))
    with LyingRegistry() as reg:
        for d in [img.config.digest, *(x.digest for x in img.layers)]:
            reg.blobs[d] = blob(d)
        mt = "application/vnd.oci.image.manifest.v1+json"
        reg.add_manifest("1", blob(img.manifest.digest), mt)
        # Manifests whose descriptors lie about a layer's size.
        for tag, size in (("huge", 2**62), ("negative", -5), ("small", 10)):
            doc = json.loads(json.dumps(manifest))
            doc["layers"][1]["size"] = size
            reg.add_manifest(tag, json.dumps(doc).encode(), mt)
        yield reg, {"config": img.config.digest, "layer": img.layers[0].digest}


REGISTRY_FAULTS = [
    # (what behaves how, tag, expected code, words in the error)
    ({"manifest": "hang-headers"}, "1", grpc.StatusCode.DEADLINE_EXCEEDED, "within"),
    ({"manifest": "hang-body"}, "1", grpc.StatusCode.DEADLINE_EXCEEDED, "stalled"),
    ({"manifest": "endless"}, "1", grpc.StatusCode.FAILED_PRECONDITION, "larger than"),
    ({"manifest": "endless-length"}, "1", grpc.StatusCode.FAILED_PRECONDITION, "too large"),
    ({"manifest": "slow-drip"}, "1", grpc.StatusCode.DEADLINE_EXCEEDED, ""),
    ({"config": "endless"}, "1", grpc.StatusCode.FAILED_PRECONDITION, "larger than"),
    ({"layer": "endless"}, "1", grpc.StatusCode.DATA_LOSS, "larger than its descriptor"),
    ({"layer": "endless-length"}, "1", grpc.StatusCode.DATA_LOSS, "larger than its descriptor"),
    ({"layer": "hang-body"}, "1", grpc.StatusCode.DEADLINE_EXCEEDED, "no data"),
    ({}, "huge", grpc.StatusCode.DATA_LOSS, ""),
    ({}, "negative", grpc.StatusCode.INVALID_ARGUMENT, "size"),
    ({}, "small", grpc.StatusCode.DATA_LOSS, ""),
    ({"token": "hang-headers"}, "1", grpc.StatusCode.DEADLINE_EXCEEDED, ""),
    ({"token": "endless"}, "1", None, ""),
]


def test_registries_that_hang_lie_and_never_stop(
    client_factory: Callable[..., Client], lying: tuple[LyingRegistry, dict]
) -> None:
    reg, digests = lying
    cl = client_factory("[registry]\ntimeout = 1.0\n")
    for behave, tag, code, says in REGISTRY_FAULTS:
        reg.behave = {digests.get(k, k): v for k, v in behave.items()}
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            cl.pull(f"{reg.host}/lying:{tag}", timeout=60)
        took = time.monotonic() - started
        got, details = rpc_error(err.value)
        case = (behave, tag, got, details, f"{took:.1f}s")
        if code is not None:
            assert got == code and says in details, case
        assert got not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), case
        assert took < 30, case  # bounded by the registry timeout, not the client's
        # The daemon let go of the registry and kept nothing half-made.
        assert wait_until(lambda: reg.misbehaving == 0, timeout=10), case
        assert query(cl.d, "SELECT id FROM images") == [], case
        assert problems(cl.d) == [], case
    reg.behave = {}
    cl.pull(f"{reg.host}/lying:1")
    assert ingests(cl.d) == []
    assert problems(cl.d) == []


def test_a_container_flooding_exec_sync_output(
    client_factory: Callable[..., Client],
    fault_images: FaultImages,
    pods_factory: Callable[[Client], Pods],
) -> None:
    """A probe command (ExecSync) that prints far more than a message may hold:
    the CRI says cap it and carry on, so the answer is OK and fits 16 MiB."""
    cl = client_factory(f'[cri]\nsandbox_image = "{fault_images.ref("pause")}"\n')
    pods = pods_factory(cl)
    pod_id, pod = pods.run("flood")
    cid = pods.container(pod_id, pod, "flood", ["sleep", "600"])
    yes = "/bin/busybox yes pyctr-output | /bin/busybox head -c 40000000"
    # As the kubelet's CRI client: 16 MiB messages.
    kubelet = grpc.insecure_channel(
        f"unix:{cl.d.address}", options=[("grpc.max_receive_message_length", 16 << 20)]
    )
    rt = cri_pb2_grpc.RuntimeServiceStub(kubelet)
    for script in (yes, f"{yes}; {yes} >&2"):
        req = cri_pb2.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=60)
        res = rt.ExecSync(req, timeout=120)
        assert res.exit_code == 0
        assert len(res.stdout) > 4 << 20 and len(res.stdout) + len(res.stderr) < 16 << 20
        assert res.stdout.startswith(b"pyctr-output\n")
    kubelet.close()
    assert pods.status(cid).state == cri_pb2.CONTAINER_RUNNING
    pods.remove(pod_id)
