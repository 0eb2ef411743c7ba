"""Image volumes (the kubelet's ImageVolume feature): a Mount naming an image
mounts that image's filesystem read-only in the container, one view per
image however many containers mount it, released with the last of them."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import grpc
import pytest

from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import BB, INDEX_HTML, CriEnv, Kubelet, code_of

pytestmark = pytest.mark.root


def volume(path: str, image: str, sub_path: str = "") -> cri.Mount:
    """An image volume as the kubelet sends it: read-only, no host path."""
    return cri.Mount(
        container_path=path, image=cri.ImageSpec(image=image), readonly=True,
        image_sub_path=sub_path,
    )  # fmt: skip


def mount_count(path: Path) -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4] == str(path))


def view_snapshots(env: CriEnv) -> list[str]:
    with contextlib.closing(sqlite3.connect(env.daemon.root / "meta.db")) as db:
        rows = db.execute("SELECT key FROM snap_snapshots WHERE key LIKE 'image-volume-%'")
        return [key for (key,) in rows]


def remove(kube: Kubelet, cid: str) -> None:
    kube.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0), timeout=60)
    kube.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=60)


def test_image_volume_lifecycle(cri_env: CriEnv, kube: Kubelet) -> None:
    app = cri_env.app_ref
    image_id = kube.pull(app)  # the kubelet pulls the volume's image first
    view = cri_env.daemon.state / "image-volumes" / image_id.removeprefix("sha256:")
    config = kube.pod_config("imgvol")
    pod_id = kube.run_pod(config)
    # The app image has two layers: busybox, then /www and /etc files.
    mounts = [volume("/img", app), volume("/web", app, "www")]
    a = kube.run(pod_id, config, "a", mounts=mounts)
    assert kube.sh(a, "cat /img/www/index.html").encode() == INDEX_HTML
    assert kube.sh(a, "cat /web/index.html").encode() == INDEX_HTML
    assert kube.sh(a, "/img/bin/busybox echo runs from the volume") == "runs from the volume\n"
    for path in ("/img/new", "/web/index.html"):
        r = kube.exec(a, [BB, "sh", "-c", f"echo x > {path}"])
        assert r.exit_code != 0 and b"Read-only file system" in r.stderr, (path, r.stderr)

    by_path = {m.container_path: m for m in kube.status(a).mounts}
    assert by_path["/img"].image.image == app and by_path["/img"].image.image_ref == image_id
    assert by_path["/web"].image_sub_path == "www" and by_path["/web"].readonly
    assert by_path["/img"].host_path == ""

    # A second container of the same image shares the one view.
    b = kube.run(pod_id, config, "b", mounts=[volume("/img", app)])
    assert kube.sh(b, "cat /img/www/index.html").encode() == INDEX_HTML
    assert mount_count(view) == 1 and len(view_snapshots(cri_env)) == 1

    # In use: the image stays (the kubelet's image GC gets a clear refusal).
    with pytest.raises(grpc.RpcError) as e:
        kube.env.images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=image_id)))
    assert code_of(e.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "image volume" in e.value.details()  # type: ignore[attr-defined]

    # A restart keeps the view and the containers' mounts.
    cri_env.restart()
    assert mount_count(view) == 1
    assert kube.sh(b, "cat /img/www/index.html").encode() == INDEX_HTML

    remove(kube, a)
    assert mount_count(view) == 1  # b still mounts it
    remove(kube, b)
    assert mount_count(view) == 0 and not view.exists()
    assert view_snapshots(cri_env) == []  # the view that held the chain is gone too
    kube.stop_pod(pod_id)
    kube.remove_pod(pod_id)


def test_bad_image_volumes_are_refused(cri_env: CriEnv, kube: Kubelet) -> None:
    app = cri_env.app_ref
    image_id = kube.pull(app)
    view = cri_env.daemon.state / "image-volumes" / image_id.removeprefix("sha256:")
    config = kube.pod_config("badvol")
    pod_id = kube.run_pod(config)
    before = kube.rt.ListContainers(cri.ListContainersRequest()).containers
    for mount, code, words in (
        (volume("/v", app, "nope"), grpc.StatusCode.INVALID_ARGUMENT, "no 'nope' in the image"),
        (volume("/v", app, "../etc"), grpc.StatusCode.INVALID_ARGUMENT, "must not contain '..'"),
        (volume("/v", app, "/www"), grpc.StatusCode.INVALID_ARGUMENT, "must be a relative path"),
        (volume("/v", "localhost:1/never/pulled:1"), grpc.StatusCode.NOT_FOUND, "not found"),
    ):
        with pytest.raises(grpc.RpcError) as e:
            kube.create(pod_id, config, kube.container_config("bad", mounts=[mount]))
        assert code_of(e.value) == code, (mount, e.value)
        assert words in e.value.details(), e.value.details()  # type: ignore[attr-defined]
        # Nothing made, nothing left mounted.
        assert kube.rt.ListContainers(cri.ListContainersRequest()).containers == before
        assert not os.path.ismount(view)
    kube.stop_pod(pod_id)
    kube.remove_pod(pod_id)
