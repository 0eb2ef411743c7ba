"""Full disks: the daemon's root while a pull writes to it, and a pod's log disk.

Small tmpfs mounts stand in for the full filesystems; they are mounted in the
test's dirs and unmounted at the end, whatever happens.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from pyctr.proto import cri_pb2
from tests.faults.conftest import Client, FaultImages, Pods, rpc_error
from tests.faults.consistency import alive, blob_digests, ingests, problems, query, snapshots
from tests.faults.netfaults import wait_until

pytestmark = pytest.mark.root


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0711", "tmpfs", str(path)],
                   check=True, timeout=30)  # fmt: skip
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def resize(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, timeout=30)


def test_root_fills_up_during_a_pull(
    client_factory: Callable[..., Client], fault_images: FaultImages
) -> None:
    cl = client_factory(start=False)
    big = fault_images.big
    ref = fault_images.ref("big")
    with tmpfs(cl.d.root, "3m"):
        try:
            cl.d.start()
            # Too small for the metadata and first blobs, for all the downloads,
            # then for the unpacked layers: every 40k from 1000k to 3m, so the
            # disk fills at each stage (download, extraction, commit), then 6m.
            sizes = [f"{k}k" for k in range(1000, 3072, 40)] + ["6m"]
            for size in sizes:
                try:
                    resize(cl.d.root, size)
                except subprocess.CalledProcessError:
                    continue  # below what is in use already: tmpfs refuses
                with pytest.raises(grpc.RpcError) as err:
                    cl.pull(ref)
                code, details = rpc_error(err.value)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (size, code, details)
                assert "no space left" in details.lower(), details
                # Failed cleanly: no image, nothing torn, nothing in flight, and
                # the space the pull took is given back.
                assert query(cl.d, "SELECT id FROM images") == [], size
                assert problems(cl.d) == [], size
                assert ingests(cl.d) == [], size
                assert [k for k in snapshots(cl.d) if k.startswith("extract-")] == []
                assert cl.img.ListImages(cri_pb2.ListImagesRequest(), timeout=10) is not None
            # With room again the same pull just works.
            resize(cl.d.root, "64m")
            assert cl.pull(ref) == big.id
            assert {big.config.digest, *(x.digest for x in big.layers)} <= blob_digests(cl.d)
            assert problems(cl.d) == []
        finally:
            cl.d.stop()


FLOOD = (
    "i=0; while [ $i -lt 30000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; "
    "i=$((i+1)); done; echo flood-done; : > /tmp/flood-done; "
    "while [ ! -e /trigger/go ]; do sleep 0.1; done; echo after-rotation; sleep 600"
)
CRI_LINE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z (stdout|stderr) [FP] .*$")


def test_container_log_fills_its_disk(
    client_factory: Callable[..., Client],
    fault_images: FaultImages,
    pods_factory: Callable[[Client], Pods],
    tmp_path: Path,
) -> None:
    cl = client_factory(f'[cri]\nsandbox_image = "{fault_images.ref("pause")}"\n')
    pods = pods_factory(cl)
    trigger = tmp_path / "trigger"
    trigger.mkdir()
    with tmpfs(tmp_path / "logs", "256k") as logs:
        pod_id, pod = pods.run("flood", log_dir=str(logs))
        mount = cri_pb2.Mount(container_path="/trigger", host_path=str(trigger), readonly=True)
        cid = pods.container(pod_id, pod, "flood", ["sh", "-c", FLOOD], mounts=[mount])
        log = logs / "flood.log"
        # The container is never blocked by its full log: it gets through its
        # 2 MiB of output, the shim and daemon stay up.
        shim_pid = int((cl.d.state / "tasks" / cid[:16] / "shim.pid").read_text())
        started = time.monotonic()
        assert wait_until(lambda: _flooded(cl, cid), timeout=30), "the container is stuck"
        assert log.stat().st_size > 200_000
        status = pods.status(cid)
        assert status.state == cri_pb2.CONTAINER_RUNNING, status
        assert time.monotonic() - started < 30
        with open(f"/proc/{shim_pid}/stat") as f:
            assert f.read().split(")")[1].split()[0] != "Z"
        # Every complete line written is a valid CRI record.
        lines = log.read_bytes().split(b"\n")
        assert all(CRI_LINE.match(x) for x in lines[:-2] if x), "a corrupt log line"

        # The kubelet rotates the log (rename, reopen) once there is room again.
        log.rename(logs / "flood.log.1")
        (logs / "flood.log.1").unlink()
        req = cri_pb2.ReopenContainerLogRequest(container_id=cid)
        cl.rt.ReopenContainerLog(req, timeout=10)
        (trigger / "go").touch()
        assert wait_until(lambda: b"after-rotation" in log.read_bytes(), timeout=15)
        assert problems(cl.d) == []
        shim_log = (cl.d.state / "tasks" / cid[:16] / "shim.log").read_text(errors="replace")
        assert "] error: " not in shim_log, shim_log[-2000:]
        pods.remove(pod_id)


def _flooded(cl: Client, cid: str) -> bool:
    req = cri_pb2.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "[ -e /tmp/flood-done ]"])
    return cl.rt.ExecSync(req, timeout=20).exit_code == 0


def test_an_exit_while_the_root_is_full_is_recorded_once_there_is_room(
    client_factory: Callable[..., Client], fault_images: FaultImages
) -> None:
    cl = client_factory(start=False)
    image = fault_images.ref("busybox")
    with tmpfs(cl.d.root, "8m"):
        try:
            cl.d.start()
            cl.native_pull(image)
            # Its log (under the root) fills the disk, then it exits: the exit
            # cannot be written to the database at that moment.
            flood = "/bin/busybox yes pyctr-fills-the-disk | /bin/busybox head -c 12000000; exit 3"
            c = cl.run(image, ["sh", "-c", flood], name="flood")
            assert wait_until(lambda: not alive(c.pid), timeout=60), "the flood did not end"
            resize(cl.d.root, "64m")
            assert wait_until(lambda: cl.get("flood").status == "exited", timeout=8)
            assert cl.get("flood").exit_code == 3
            cl.remove_all()
            assert problems(cl.d) == []
        finally:
            # A restart picks the exit up from the shim, whatever happened above.
            cl.d.stop()
            resize(cl.d.root, "64m")
            cl.d.start()
            cl.reconnect()
            cl.remove_all()
            cl.d.stop()
