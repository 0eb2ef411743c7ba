"""CheckpointContainer: CRIU's dump of a running container, in the kubelet's archive.

Dumping needs CRIU working with the kernel: the guest lane (Debian's kernel
and criu) has it; this project's hosts run a PVM kernel where `criu check`
fails (vdso), and there what is shown is that a failed dump is an answer
that leaves the container running and no archive behind. Restoring is done
by hand here, with `runc restore` on the archive's images, as an operator
moving a checkpoint would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import grpc
import pytest

from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import BB, CriEnv, Kubelet, code_of
from tests.support import cgroups
from tests.support.timing import scaled

pytestmark = pytest.mark.root


def _criu_works() -> bool:
    if shutil.which("criu") is None:
        return False
    return subprocess.run(["criu", "check"], capture_output=True, timeout=60).returncode == 0


CRIU = _criu_works()
COUNTER = [BB, "sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.2; done"]


def checkpoint(kube: Kubelet, cid: str, location: str, timeout: int = 0) -> None:
    req = cri.CheckpointContainerRequest(container_id=cid, location=location, timeout=timeout)
    kube.rt.CheckpointContainer(req, timeout=scaled(300))


def test_bad_requests_are_refused(cri_env: CriEnv, kube: Kubelet, tmp_path: Path) -> None:
    config = kube.pod_config("ckpt-bad")
    pod_id = kube.run_pod(config)
    kube.pull(cri_env.app_ref)
    created = kube.create(pod_id, config, kube.container_config("idle"))
    for cid, location, code in (
        ("0" * 64, str(tmp_path / "a.tar"), grpc.StatusCode.NOT_FOUND),
        (created, "relative.tar", grpc.StatusCode.INVALID_ARGUMENT),
        (created, str(tmp_path), grpc.StatusCode.INVALID_ARGUMENT),
        (created, str(tmp_path / "missing" / "a.tar"), grpc.StatusCode.INVALID_ARGUMENT),
        (created, str(tmp_path / "a.tar"), grpc.StatusCode.FAILED_PRECONDITION),  # not running
    ):
        with pytest.raises(grpc.RpcError) as e:
            checkpoint(kube, cid, location)
        assert code_of(e.value) == code, (location, e.value.details())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(CRIU, reason="CRIU works here: the dump succeeds (the test below)")
def test_a_failed_dump_leaves_the_container_running(
    cri_env: CriEnv, kube: Kubelet, tmp_path: Path
) -> None:
    config = kube.pod_config("ckpt-fail")
    pod_id = kube.run_pod(config)
    cid = kube.run(pod_id, config, "counter", COUNTER)
    with pytest.raises(grpc.RpcError) as e:
        checkpoint(kube, cid, str(tmp_path / "c.tar"))
    assert code_of(e.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "criu" in e.value.details().lower() or "checkpoint" in e.value.details()
    assert list(tmp_path.iterdir()) == []
    assert not any((cri_env.daemon.state / "checkpoints").iterdir())
    before = int(kube.sh(cid, f"{BB} cat /tmp/n"))
    time.sleep(0.5)
    assert int(kube.sh(cid, f"{BB} cat /tmp/n")) > before
    assert kube.status(cid).state == cri.CONTAINER_RUNNING


@pytest.mark.skipif(not CRIU, reason="criu check fails on this kernel (the guest lane has it)")
def test_checkpoint_archive_and_restore_by_hand(
    cri_env: CriEnv, kube: Kubelet, tmp_path: Path
) -> None:
    config = kube.pod_config("ckpt")
    pod_id = kube.run_pod(config)
    cid = kube.run(pod_id, config, "counter", COUNTER)
    kube.sh(cid, f"echo written-before > /kept; {BB} rm /etc/group")
    time.sleep(1)
    archive = tmp_path / "checkpoint-ckpt-counter.tar"
    before = int(kube.sh(cid, f"{BB} cat /tmp/n"))
    checkpoint(kube, cid, str(archive))
    assert kube.status(cid).state == cri.CONTAINER_RUNNING  # --leave-running
    assert os.stat(archive).st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]

    out = tmp_path / "out"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        tar.extractall(out)  # our own archive (3.11 before .4 has no filter=)
    for name in ("checkpoint/inventory.img", "config.dump", "spec.dump", "rootfs-diff.tar",
                 "deleted.files", "dump.log"):  # fmt: skip
        assert name in names, sorted(names)
    meta = json.loads((out / "config.dump").read_text())
    assert meta["id"] == cid and meta["rootfsImageName"] and meta["checkpointedTime"]
    spec = json.loads((out / "spec.dump").read_text())
    assert spec["process"]["args"] == COUNTER
    with tarfile.open(out / "rootfs-diff.tar") as diff:
        assert "kept" in diff.getnames()
    assert "etc/group" in json.loads((out / "deleted.files").read_text())

    # By hand: stop the original, then `runc restore` its images into the
    # same rootfs and namespaces (the pod still runs): the counter goes on
    # from where the dump left it, not from 0.
    info = json.loads(
        kube.rt.ContainerStatus(
            cri.ContainerStatusRequest(container_id=cid, verbose=True), timeout=10
        ).info["info"]
    )
    bundle = Path(info["runtimeSpec"]["root"]["path"]).parent
    rootfs_copy = tmp_path / "rootfs"
    subprocess.run(["cp", "-a", str(bundle / "rootfs"), str(rootfs_copy)], check=True)
    kube.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0), timeout=60)
    (rootfs_copy / "tmp" / "n").unlink()  # the restored counter writes it anew
    spec["root"]["path"] = str(rootfs_copy)
    spec["linux"].pop("cgroupsPath", None)  # a cgroup of its own, under runc's default
    restore_bundle = tmp_path / "bundle"
    restore_bundle.mkdir()
    (restore_bundle / "config.json").write_text(json.dumps(spec))
    runc_root = tmp_path / "runc"
    name = f"restored-{cid[:8]}"
    argv = ["runc", "--root", str(runc_root)]
    if cgroups.DRIVER == "systemd":
        argv.append("--systemd-cgroup")
    restored = subprocess.Popen(
        [*argv, "restore", "--image-path", str(out / "checkpoint"), "--bundle",
         str(restore_bundle), "--tcp-established", "--ext-unix-sk", "--file-locks",
         "--detach", name],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = restored.communicate(timeout=scaled(120))
        assert restored.returncode == 0, err.decode()
        counter = rootfs_copy / "tmp" / "n"
        deadline = time.monotonic() + scaled(20)
        while not (counter.exists() and counter.read_text().strip()):
            assert time.monotonic() < deadline, "the restored counter never wrote"
            time.sleep(0.1)
        # Its memory came back: it counts on from the dump, not from 1.
        assert int(counter.read_text()) > before
        assert (rootfs_copy / "kept").read_text() == "written-before\n"
    finally:
        subprocess.run([*argv, "delete", "--force", name], capture_output=True, timeout=60)
