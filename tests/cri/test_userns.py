"""Pods with their own user namespace (hostUsers: false), as the kubelet asks
for them: root inside, an unprivileged host ID outside, the image's files and
ID-mapped volumes owned by the pod's root, nothing left mounted after."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import grpc
import pytest

from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import BB, CriEnv, Kubelet, code_of

pytestmark = pytest.mark.root

SIZE = 65536


def ranges(host_id: int, length: int = SIZE, container_id: int = 0) -> list[cri.IDMapping]:
    return [cri.IDMapping(host_id=host_id, container_id=container_id, length=length)]


def userns(host_id: int, **kw: int) -> cri.UserNamespace:
    return cri.UserNamespace(mode=cri.POD, uids=ranges(host_id, **kw), gids=ranges(host_id, **kw))


def userns_pod(kube: Kubelet, name: str, option: cri.UserNamespace) -> cri.PodSandboxConfig:
    config = kube.pod_config(name)
    config.linux.security_context.namespace_options.userns_options.CopyFrom(option)
    return config


def container(
    kube: Kubelet, name: str, option: cri.UserNamespace, **kw: object
) -> cri.ContainerConfig:
    config = kube.container_config(name, **kw)  # type: ignore[arg-type]
    config.linux.security_context.namespace_options.userns_options.CopyFrom(option)
    return config


def host_ids(pid: int) -> tuple[int, int]:
    """The process's real uid and gid as the host sees them."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {k: v.split() for k, _, v in (line.partition(":") for line in status)}
    return int(fields["Uid"][0]), int(fields["Gid"][0])


def pause_pid_of(kube: Kubelet, pod_id: str) -> int:
    req = cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
    return int(json.loads(kube.rt.PodSandboxStatus(req).info["info"])["pid"])


def idmapped_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if "/idmap/" in line.split()[4]]


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_pod_with_its_own_user_namespace(cri_env: CriEnv, kube: Kubelet, handler: str) -> None:
    features = {h.name: h.features for h in kube.rt.Status(cri.StatusRequest()).runtime_handlers}
    if handler not in features:
        pytest.skip(f"{handler} is not installed, or refuses this hybrid-cgroup host (guest lane)")
    assert features[handler].user_namespaces  # the kubelet checks this before it sends such pods
    host_id = SIZE * random.randrange(100, 1000)
    option = userns(host_id)
    config = userns_pod(kube, f"userns-{handler}", option)
    pod_id = kube.run_pod(config, handler=handler)
    pause_pid = pause_pid_of(kube, pod_id)
    assert host_ids(pause_pid) == (host_id, host_id)

    # Where the pod's root can pass (pytest's tmp_path is 0700), as a kubelet's volumes are.
    volume = cri_env.base / f"userns-vol-{host_id}"
    volume.mkdir()
    (volume / "from-host").write_text("host\n")  # owned by the host's root
    mounts = [
        cri.Mount(container_path="/mapped", host_path=str(volume),
                  uidMappings=ranges(host_id), gidMappings=ranges(host_id)),
        cri.Mount(container_path="/plain", host_path=str(volume)),
    ]  # fmt: skip
    kube.pull(cri_env.app_ref)
    cid = kube.create(pod_id, config, container(kube, "app", option, mounts=mounts))
    kube.start(cid)
    assert kube.sh(cid, "id -u; id -g") == "0\n0\n"
    assert kube.sh(cid, "cat /proc/self/uid_map").split() == ["0", str(host_id), str(SIZE)]
    req = cri.ContainerStatusRequest(container_id=cid, verbose=True)
    pid = int(json.loads(kube.rt.ContainerStatus(req).info["info"])["pid"])
    assert host_ids(pid) == (host_id, host_id)  # root inside, unprivileged outside

    # The image's files are the pod root's (an unmapped owner would show as 65534),
    # and root can write its rootfs.
    assert kube.sh(cid, f"{BB} stat -c %u:%g /bin/busybox /etc /") == "0:0\n0:0\n0:0\n"
    kube.sh(cid, "echo x > /new && echo y > /etc/new")
    # An ID-mapped volume: the host's root owns it inside too, and what the
    # pod's root writes is the host's root's on disk; a plain one is nobody's.
    assert kube.sh(cid, f"{BB} stat -c %u /mapped/from-host /plain/from-host") == "0\n65534\n"
    kube.sh(cid, "echo c > /mapped/from-pod")
    st = (volume / "from-pod").stat()
    assert (st.st_uid, st.st_gid) == (0, 0)
    r = kube.exec(cid, [BB, "sh", "-c", "echo c > /plain/nope"])
    assert r.exit_code != 0 and b"Permission denied" in r.stderr

    # A daemon restart keeps the pinned namespaces and the mounts.
    cri_env.restart()
    assert kube.sh(cid, "cat /mapped/from-host") == "host\n"
    assert idmapped_mounts()  # the volume's clone, until the container goes
    kube.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0), timeout=60)
    kube.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=60)
    assert idmapped_mounts() == []
    kube.stop_pod(pod_id)
    kube.remove_pod(pod_id)
    shutil.rmtree(volume)


def test_user_namespaces_the_runtime_cannot_run_are_refused(kube: Kubelet) -> None:
    before = {p.id for p in kube.rt.ListPodSandbox(cri.ListPodSandboxRequest()).items}
    host_id = SIZE * 200
    bad = [
        (cri.UserNamespace(mode=cri.CONTAINER, uids=ranges(host_id), gids=ranges(host_id)),
         "mode CONTAINER is not supported"),
        (cri.UserNamespace(mode=cri.POD, uids=ranges(host_id) * 2, gids=ranges(host_id)),
         "exactly one uid mapping"),
        (userns(host_id, container_id=1), "must start at container ID 0"),
        (userns(host_id, length=1000), "at least 65536 IDs"),
        (userns(0), "are not usable"),
    ]  # fmt: skip
    for option, words in bad:
        with pytest.raises(grpc.RpcError) as e:
            kube.run_pod(userns_pod(kube, "bad", option))
        assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT, option
        assert words in e.value.details(), e.value.details()  # type: ignore[attr-defined]
    host_net = userns_pod(kube, "hostnet", userns(host_id))
    host_net.linux.security_context.namespace_options.network = cri.NODE
    with pytest.raises(grpc.RpcError) as e:
        kube.run_pod(host_net)
    assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert {p.id for p in kube.rt.ListPodSandbox(cri.ListPodSandboxRequest()).items} == before

    # A container must be in its pod's user namespace.
    config = userns_pod(kube, "mismatch", userns(host_id))
    pod_id = kube.run_pod(config)
    with pytest.raises(grpc.RpcError) as e:
        kube.create(pod_id, config, container(kube, "other", userns(host_id + SIZE)))
    assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "not its pod's" in e.value.details()  # type: ignore[attr-defined]
    assert not [c for c in kube.rt.ListContainers(cri.ListContainersRequest()).containers
                if c.pod_sandbox_id == pod_id]  # fmt: skip
    assert os.path.exists(f"/proc/{pause_pid_of(kube, pod_id)}")
