"""Runtime handlers (RuntimeClass): the pod's runtime_handler picks the OCI
runtime its sandbox and containers run with, through the real shim.

The module's daemon has the built-in `runc` (the default, also "") and
`crun` when installed, plus `alt`: runc again under its own --root, so the
choice is visible on disk. On this hybrid-cgroup host crun refuses every
container, so a crun pod is refused up front; in the guest lane it runs.
"""

from __future__ import annotations

import json
import shutil

import grpc
import pytest

from pyctr.daemon.cgroups import cgroup_version
from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import CriEnv, Kubelet, code_of


def _crun_refused_here() -> bool:
    try:
        with open("/sys/fs/cgroup/unified/cgroup.controllers") as f:
            controllers = f.read().split()
    except OSError:
        controllers = []
    return cgroup_version() == "v1+v2" and bool(controllers)


def _status_config(kube: Kubelet) -> dict:
    return json.loads(kube.rt.Status(cri.StatusRequest(verbose=True)).info["config"])


def _pod_ids(kube: Kubelet) -> set[str]:
    return {p.id for p in kube.rt.ListPodSandbox(cri.ListPodSandboxRequest()).items}


def test_handler_picks_runtime_and_survives_restart(cri_env: CriEnv, kube: Kubelet) -> None:
    state = cri_env.daemon.state
    pod = kube.pod_config("alt")
    pod_id = kube.run_pod(pod, handler="alt")
    cid = kube.run(pod_id, pod, "app")
    assert kube.pod_status(pod_id).runtime_handler == "alt"
    # The sandbox and its container live in alt's runc root, not runc's.
    for id_ in (pod_id, cid):
        assert (state / "alt" / id_ / "state.json").is_file()
        assert not (state / "runc" / id_).exists()
    default_pod = kube.pod_config("default")
    default_id = kube.run_pod(default_pod)
    assert (state / "runc" / default_id / "state.json").is_file()

    cri_env.restart()
    assert kube.pod_status(pod_id).runtime_handler == "alt"
    assert kube.sh(cid, "echo alive") == "alive\n"
    kube.stop_pod(pod_id)
    kube.remove_pod(pod_id)
    assert not (state / "alt" / pod_id).exists() and not (state / "alt" / cid).exists()


def test_unknown_and_unusable_handlers_are_refused(cri_env: CriEnv, kube: Kubelet) -> None:
    before = _pod_ids(kube)
    with pytest.raises(grpc.RpcError) as e:
        kube.run_pod(kube.pod_config("kata"), handler="kata")
    assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown runtime handler 'kata'" in e.value.details()  # type: ignore[attr-defined]
    assert "alt" in e.value.details()  # type: ignore[attr-defined]  # it names what exists

    info = _status_config(kube)["runtimes"]
    listed = {h.name for h in kube.rt.Status(cri.StatusRequest()).runtime_handlers}
    assert {"", "runc", "alt"} <= listed and info["runc"]["usable"]
    if shutil.which("crun") is None:
        assert "crun" not in info and "crun" not in listed
    elif _crun_refused_here():
        # crun would fail every create on this host: not offered, and a pod
        # asking for it is refused before anything is made.
        assert not info["crun"]["usable"] and "hybrid" in info["crun"]["unusable"]
        assert "crun" not in listed
        with pytest.raises(grpc.RpcError) as e:
            kube.run_pod(kube.pod_config("crun"), handler="crun")
        assert code_of(e.value) == grpc.StatusCode.FAILED_PRECONDITION
        assert "hybrid" in e.value.details()  # type: ignore[attr-defined]
    else:
        assert info["crun"]["usable"] and "crun" in listed
    assert _pod_ids(kube) == before


def test_crun_pod_runs_where_crun_can(cri_env: CriEnv, kube: Kubelet) -> None:
    if shutil.which("crun") is None or _crun_refused_here():
        pytest.skip(
            "crun is not installed, or refuses this hybrid-cgroup host (guest lane runs it)"
        )
    state = cri_env.daemon.state
    pod = kube.pod_config("crun")
    pod_id = kube.run_pod(pod, handler="crun")
    cid = kube.run(pod_id, pod, "app")
    assert kube.pod_status(pod_id).runtime_handler == "crun"
    assert (state / "crun" / cid).is_dir()  # crun's own state dir under its root
    assert kube.sh(cid, "echo hi from crun") == "hi from crun\n"
    cri_env.restart()
    assert kube.status(cid).state == cri.CONTAINER_RUNNING
    assert kube.sh(cid, "echo alive") == "alive\n"
    kube.stop_pod(pod_id)
    kube.remove_pod(pod_id)
    assert not (state / "crun" / cid).exists()
