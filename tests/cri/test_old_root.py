"""A root written by the last release before typed records opens the same.

The pyctr of commit OLD (whose container table kept each record's shape in
an untyped `extra` column) is taken from git history, run as a daemon of
its own, and made to create pods and containers in every state through its
socket; then this pyctr opens the same root and state dirs. Every record
must come back with the same IDs, states, timestamps, labels, annotations,
log paths and the rest, as the CRI and the native API report them, and go
on behaving: the running container still execs and stops, the created one
starts, the pods stop and are removed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pyctr.daemon.pods import netns
from pyctr.proto import containers_pb2 as pb
from pyctr.proto import containers_pb2_grpc, cri_pb2_grpc
from pyctr.proto import cri_pb2 as cri
from tests.conftest import new_base, safe_rmtree
from tests.cri.conftest import BB, CriEnv, Kubelet
from tests.support.daemon import PyctrDaemon, dump_toml

# The last release before the records were typed (and the daemon reorganised).
OLD = "149991d"
REPO = Path(__file__).resolve().parents[2]
# Where that commit's pyproject maps the `pyctr` package's parts from.
PACKAGES = ("proto", "daemon", "snapshotter", "shim", "ctl")


@pytest.fixture(scope="module")
def old_pyctr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dir to put on PYTHONPATH to import the old pyctr: its sources from
    git history, laid out as the `pyctr` package (the same dependencies)."""
    have = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{OLD}^{{commit}}"], capture_output=True
    )
    if have.returncode != 0:
        pytest.fail(f"commit {OLD} is not in this clone's history (a shallow clone?)")
    tree = tmp_path_factory.mktemp("old-pyctr")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", OLD, *PACKAGES],
        capture_output=True, check=True,
    )  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    pkg = tree / "path" / "pyctr"
    pkg.mkdir(parents=True)
    # A regular package: found on PYTHONPATH before the editable install's finder.
    (pkg / "__init__.py").write_text("")
    for name in PACKAGES:
        (pkg / name).symlink_to(tree / name)
    return tree / "path"


class Client:
    def __init__(self, daemon: PyctrDaemon) -> None:
        self.channel = daemon.channel()
        self.rt = cri_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = cri_pb2_grpc.ImageServiceStub(self.channel)
        self.native = containers_pb2_grpc.ContainersStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def snapshot(self) -> dict[str, Any]:
        """Everything the APIs say about every record."""
        out: dict[str, Any] = {}
        pods = self.rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items
        out["pods"] = sorted(p.SerializeToString(deterministic=True) for p in pods)
        for p in pods:
            req = cri.PodSandboxStatusRequest(pod_sandbox_id=p.id, verbose=True)
            st = self.rt.PodSandboxStatus(req, timeout=10)
            out[f"pod {p.id}"] = (st.status, dict(st.info), list(st.containers_statuses))
        containers = self.rt.ListContainers(cri.ListContainersRequest(), timeout=10).containers
        out["containers"] = sorted(c.SerializeToString(deterministic=True) for c in containers)
        for c in containers:
            req = cri.ContainerStatusRequest(container_id=c.id, verbose=True)
            st = self.rt.ContainerStatus(req, timeout=10)
            out[f"container {c.id}"] = (st.status, dict(st.info))
        every = pb.ContainerListRequest(all=True, sandboxes=True)
        listed = self.native.List(every, timeout=10).containers
        out["native list"] = sorted((c.id, c.SerializeToString(deterministic=True)) for c in listed)
        for c in listed:
            got = self.native.Get(pb.ContainerGetRequest(container=c.id), timeout=10)
            out[f"native {c.id}"] = (got.container, got.spec_json)
        return out


@contextlib.contextmanager
def daemon_on(env: CriEnv, base: Path, pythonpath: str | None) -> Iterator[PyctrDaemon]:
    config = {
        "cri": {
            "sandbox_image": env.pause_ref,
            "cni": {"conf_dir": str(env.conf_dir), "bin_dir": "/usr/lib/cni"},
        }
    }
    d = PyctrDaemon(base, dump_toml(config))
    if pythonpath is not None:  # the previous release has no [nri] section
        written = tomllib.loads(d.config_path.read_text())
        written.pop("nri", None)
        d.config_path.write_text(dump_toml(written))
    saved = os.environ.get("PYTHONPATH")
    if pythonpath is not None:
        os.environ["PYTHONPATH"] = pythonpath  # the daemon and its shims inherit it
    try:
        with netns.entered(env.host_ns):
            d.start(timeout=60)
    finally:
        if pythonpath is not None:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
    try:
        yield d
    finally:
        d.stop()


def _wait_exited(c: Client, cid: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        req = cri.ContainerStatusRequest(container_id=cid)
        if c.rt.ContainerStatus(req, timeout=10).status.state == cri.CONTAINER_EXITED:
            return
        time.sleep(0.05)
    raise AssertionError(f"{cid[:12]} did not exit")


def _columns(db_path: Path) -> list[str]:
    db = sqlite3.connect(db_path)
    try:
        return [r[1] for r in db.execute("PRAGMA table_info(containers)")]
    finally:
        db.close()


def test_a_root_made_by_the_previous_release_opens_the_same(
    cri_env: CriEnv, kube: Kubelet, old_pyctr: Path
) -> None:
    base = new_base("old")
    ready = kube.pod_config("oldpod", labels={"app": "old", "x": "1"})
    stopped = kube.pod_config("oldstopped")
    ids: dict[str, str] = {}
    try:
        with daemon_on(cri_env, base, str(old_pyctr)) as old:
            c = Client(old)
            try:
                req = cri.PullImageRequest(image=cri.ImageSpec(image=cri_env.app_ref))
                c.images.PullImage(req, timeout=60)
                for name, config in (("ready", ready), ("stopped", stopped)):
                    run = cri.RunPodSandboxRequest(config=config)
                    ids[name] = c.rt.RunPodSandbox(run, timeout=60).pod_sandbox_id

                def create(pod: str, config: cri.PodSandboxConfig, name: str, cmd: list[str],
                           **kw: Any) -> str:  # fmt: skip
                    cc = kube.container_config(name, cmd, **kw)
                    req = cri.CreateContainerRequest(
                        pod_sandbox_id=ids[pod], config=cc, sandbox_config=config
                    )
                    return c.rt.CreateContainer(req, timeout=60).container_id

                sleeper = [BB, "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
                ids["running"] = create("ready", ready, "runner", sleeper, stdin=True,
                                        stdin_once=True, annotations={"a": "b"})  # fmt: skip
                ids["exited"] = create("ready", ready, "quitter", [BB, "sh", "-c", "exit 3"])
                ids["created"] = create("ready", ready, "idle", sleeper)
                ids["gone"] = create("stopped", stopped, "other", sleeper)
                for key in ("running", "exited", "gone"):
                    c.rt.StartContainer(cri.StartContainerRequest(container_id=ids[key]))
                _wait_exited(c, ids["exited"])
                stop = cri.StopPodSandboxRequest(pod_sandbox_id=ids["stopped"])
                c.rt.StopPodSandbox(stop, timeout=60)
                native = pb.ContainerCreateRequest(
                    image=cri_env.app_ref, name="nat", command=[BB, "sleep", "600"],
                    tty=True, auto_remove=True, labels={"n": "1"}, network="none",
                    size=pb.ContainerResize(width=100, height=30),
                )  # fmt: skip
                ids["native"] = c.native.Run(native, timeout=60).container.id
                before = c.snapshot()
            finally:
                c.close()
        assert "extra" in _columns(base / "root" / "meta.db")  # really the old shape

        with daemon_on(cri_env, base, None) as new:
            c = Client(new)
            try:
                after = c.snapshot()
                assert after.keys() == before.keys()
                for key in before:
                    assert after[key] == before[key], key
                assert "extra" not in _columns(base / "root" / "meta.db")
                # ...and it behaves: exec, start, stop, remove.
                req = cri.ExecSyncRequest(container_id=ids["running"], cmd=[BB, "true"], timeout=10)
                assert c.rt.ExecSync(req, timeout=30).exit_code == 0
                c.rt.StartContainer(cri.StartContainerRequest(container_id=ids["created"]))
                status = cri.ContainerStatusRequest(container_id=ids["created"])
                assert c.rt.ContainerStatus(status).status.state == cri.CONTAINER_RUNNING
                status = cri.ContainerStatusRequest(container_id=ids["exited"])
                exited = c.rt.ContainerStatus(status)
                assert (exited.status.exit_code, exited.status.reason) == (3, "Error")
                c.native.Kill(pb.ContainerKillRequest(container=ids["native"], signal=9))
                for pod in ("ready", "stopped"):
                    c.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=ids[pod]))
                    c.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=ids[pod]))
                assert c.rt.ListContainers(cri.ListContainersRequest()).containers == []
                deadline = time.monotonic() + 20  # the native one removes itself
                every = pb.ContainerListRequest(all=True, sandboxes=True)
                while c.native.List(every).containers and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert list(c.native.List(every).containers) == []
            finally:
                c.close()
    finally:
        _cleanup(cri_env, base, ids)


def _cleanup(env: CriEnv, base: Path, ids: dict[str, str]) -> None:
    """After a failure: whatever is left, removed by a daemon of this pyctr."""
    if ids:
        with daemon_on(env, base, None) as d:
            c = Client(d)
            try:
                with contextlib.suppress(grpc.RpcError):
                    c.native.Remove(pb.ContainerRemoveRequest(container="nat", force=True))
                for key in ("ready", "stopped"):
                    if key in ids:
                        with contextlib.suppress(grpc.RpcError):
                            req = cri.RemovePodSandboxRequest(pod_sandbox_id=ids[key])
                            c.rt.RemovePodSandbox(req, timeout=60)
            finally:
                c.close()
    safe_rmtree(base)
