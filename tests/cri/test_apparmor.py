"""AppArmor profiles the kubelet asks for, enforced by the kernel.

The confining tests need a kernel with AppArmor on and apparmor_parser: the
guest lane (tests/vm, Debian's kernel and the apparmor package) has both;
this project's development and CI hosts have no AppArmor at all, and there
the one thing to show is that the fields are accepted and nothing applied.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator

import grpc
import pytest

from pyctr.daemon.spec.apparmor import DEFAULT_PROFILE, AppArmor
from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import BB, Kubelet, code_of

pytestmark = pytest.mark.root

HOST = AppArmor.detect()
needs_apparmor = pytest.mark.skipif(not HOST.enabled, reason=f"no AppArmor here: {HOST.reason}")
SC = cri.LinuxContainerSecurityContext
SP = cri.SecurityProfile
ADMIN = cri.Capability(add_capabilities=["SYS_ADMIN"])
MOUNT = [BB, "sh", "-c", f"{BB} mkdir -p /m && {BB} mount -t tmpfs t /m"]  # the image has no /mnt


def profile(kind: int, ref: str = "") -> cri.SecurityProfile:
    return SP(profile_type=kind, localhost_ref=ref)


def label(kube: Kubelet, cid: str) -> str:
    """The AppArmor label the container's processes run under."""
    return kube.sh(cid, f"{BB} cat /proc/self/attr/current").strip()


def spec_profile(kube: Kubelet, cid: str) -> str:
    req = cri.ContainerStatusRequest(container_id=cid, verbose=True)
    info = json.loads(kube.rt.ContainerStatus(req, timeout=10).info["info"])
    return str(info["runtimeSpec"]["process"].get("apparmorProfile", ""))


@pytest.fixture
def pod(kube: Kubelet) -> tuple[str, cri.PodSandboxConfig]:
    config = kube.pod_config("aa")
    return kube.run_pod(config), config


@pytest.fixture
def no_tmp_writes() -> Iterator[str]:
    """A loaded profile that allows everything but writing below /tmp."""
    name = f"pyctr-test-{uuid.uuid4().hex[:8]}"
    text = f"profile {name} flags=(attach_disconnected) {{\n  file,\n  capability,\n  network,\n"
    text += "  signal,\n  ptrace,\n  unix,\n  mount,\n  umount,\n  deny /tmp/** w,\n}\n"
    assert HOST.parser is not None
    subprocess.run([HOST.parser, "--replace"], input=text.encode(), check=True, timeout=60)
    try:
        yield name
    finally:
        subprocess.run([HOST.parser, "--remove"], input=text.encode(), timeout=60)


@pytest.mark.skipif(HOST.enabled, reason="a host with AppArmor enforces (the tests below)")
def test_profiles_accepted_and_not_applied_without_apparmor(
    kube: Kubelet, pod: tuple[str, cri.PodSandboxConfig]
) -> None:
    pod_id, config = pod
    for sc in (
        SC(apparmor=profile(SP.RuntimeDefault)),
        SC(apparmor=profile(SP.Localhost, "not-loaded-anywhere")),
        SC(apparmor_profile="localhost/not-loaded-anywhere"),
    ):
        cid = kube.run(pod_id, config, f"c{uuid.uuid4().hex[:6]}", security=sc)
        assert spec_profile(kube, cid) == ""
    # Malformed input is still refused, whatever the host.
    for sc in (SC(apparmor_profile="docker/nonsense"), SC(apparmor=profile(SP.Localhost, ""))):
        with pytest.raises(grpc.RpcError) as e:
            kube.run(pod_id, config, "bad", security=sc)
        assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT


@needs_apparmor
def test_runtime_default_confines_and_unconfined_does_not(
    kube: Kubelet, pod: tuple[str, cri.PodSandboxConfig]
) -> None:
    pod_id, config = pod
    status = kube.rt.Status(cri.StatusRequest(verbose=True), timeout=10)
    state = json.loads(status.info["config"])["apparmor"]
    assert state["enabled"] and state["defaultProfileLoaded"], state
    # The pause process runs under the default profile too.
    req = cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
    pause = json.loads(kube.rt.PodSandboxStatus(req, timeout=10).info["info"])["pid"]
    with open(f"/proc/{pause}/attr/current") as f:
        assert f.read().strip() == f"{DEFAULT_PROFILE} (enforce)"

    # No profile asked for (the kubelet's default) and RuntimeDefault: the same.
    for name, sc in (
        ("default", SC(capabilities=ADMIN)),
        ("runtime", SC(capabilities=ADMIN, apparmor=profile(SP.RuntimeDefault))),
        ("legacy", SC(capabilities=ADMIN, apparmor_profile="runtime/default")),
    ):
        cid = kube.run(pod_id, config, name, security=sc)
        assert label(kube, cid) == f"{DEFAULT_PROFILE} (enforce)", name
        # CAP_SYS_ADMIN alone would allow the mount; the profile denies it.
        r = kube.exec(cid, MOUNT)
        assert r.exit_code != 0 and b"Permission denied" in r.stderr, (name, r.stderr)
        # Ordinary work goes on.
        assert kube.sh(cid, "echo hi > /tmp/x && cat /tmp/x") == "hi\n"

    free = kube.run(
        pod_id, config, "free", security=SC(capabilities=ADMIN, apparmor=profile(SP.Unconfined))
    )
    assert label(kube, free) == "unconfined"
    r = kube.exec(free, MOUNT)
    assert r.exit_code == 0, r.stderr


@needs_apparmor
def test_privileged_container_runs_unconfined(kube: Kubelet) -> None:
    config = kube.pod_config("aa-priv")
    config.linux.security_context.privileged = True
    pod_id = kube.run_pod(config)
    cid = kube.run(pod_id, config, "priv", security=SC(privileged=True))
    assert label(kube, cid) == "unconfined"


@needs_apparmor
def test_localhost_profile_is_enforced(
    kube: Kubelet, pod: tuple[str, cri.PodSandboxConfig], no_tmp_writes: str
) -> None:
    pod_id, config = pod
    for name, sc in (
        ("local", SC(apparmor=profile(SP.Localhost, no_tmp_writes))),
        ("legacy", SC(apparmor_profile=f"localhost/{no_tmp_writes}")),
    ):
        cid = kube.run(pod_id, config, name, security=sc)
        assert label(kube, cid) == f"{no_tmp_writes} (enforce)"
        r = kube.exec(cid, [BB, "sh", "-c", "echo no > /tmp/denied"])
        assert r.exit_code != 0 and b"Permission denied" in r.stderr, (name, r.stderr)
        assert kube.sh(cid, "echo yes > /ok && cat /ok") == "yes\n"
    # The SecurityProfile wins over the old string.
    both = SC(apparmor=profile(SP.Unconfined), apparmor_profile=f"localhost/{no_tmp_writes}")
    cid = kube.run(pod_id, config, "both", security=both)
    assert label(kube, cid) == "unconfined"


@needs_apparmor
def test_unloaded_profile_is_refused_and_creates_nothing(
    kube: Kubelet, pod: tuple[str, cri.PodSandboxConfig]
) -> None:
    pod_id, config = pod
    before = kube.rt.ListContainers(cri.ListContainersRequest(), timeout=10).containers
    for sc in (
        SC(apparmor=profile(SP.Localhost, "pyctr-never-loaded")),
        SC(apparmor_profile="localhost/pyctr-never-loaded"),
    ):
        with pytest.raises(grpc.RpcError) as e:
            kube.run(pod_id, config, "missing", security=sc)
        assert code_of(e.value) == grpc.StatusCode.FAILED_PRECONDITION
        assert "pyctr-never-loaded" in e.value.details() and "not loaded" in e.value.details()
    after = kube.rt.ListContainers(cri.ListContainersRequest(), timeout=10).containers
    assert [c.id for c in after] == [c.id for c in before]
    # The name is free: the same container with a real profile works.
    cid = kube.run(pod_id, config, "missing", security=SC(apparmor=profile(SP.Unconfined)))
    assert label(kube, cid) == "unconfined"
    # A pod asking for an unloaded profile is refused the same way.
    bad = kube.pod_config("aa-bad")
    bad.linux.security_context.apparmor.CopyFrom(profile(SP.Localhost, "pyctr-never-loaded"))
    with pytest.raises(grpc.RpcError) as e:
        kube.run_pod(bad)
    assert code_of(e.value) == grpc.StatusCode.FAILED_PRECONDITION
