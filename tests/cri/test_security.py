"""Security contexts, checked from inside real containers: identity, groups,
capabilities, read-only rootfs, seccomp, no_new_privs, masked paths, mounts
and devices. Each assertion reads what the kernel says (/proc/self/status,
failing syscalls), so a wrong uid, an extra capability or a profile not
applied fails it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pyctr.daemon.spec.oci import CAPABILITIES, DEFAULT_CAPABILITIES, host_capabilities
from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import BB, CriEnv, Kubelet, code_of

pytestmark = pytest.mark.root

SC = cri.LinuxContainerSecurityContext


def proc_status(kube: Kubelet, cid: str) -> dict[str, str]:
    out = kube.sh(cid, "cat /proc/self/status")
    return {k: v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def identity(kube: Kubelet, cid: str) -> tuple[list[int], list[int], list[int]]:
    st = proc_status(kube, cid)
    return (
        [int(x) for x in st["Uid"].split()],
        [int(x) for x in st["Gid"].split()],
        [int(x) for x in st["Groups"].split()],
    )


def caps(mask_hex: str) -> set[str]:
    mask = int(mask_hex, 16)
    return {f"CAP_{name}" for i, name in enumerate(CAPABILITIES) if mask >> i & 1}


@pytest.fixture
def pod(kube: Kubelet) -> tuple[str, cri.PodSandboxConfig]:
    config = kube.pod_config("sec")
    return kube.run_pod(config), config


@pytest.fixture
def priv_pod(kube: Kubelet) -> tuple[str, cri.PodSandboxConfig]:
    config = kube.pod_config("priv", privileged=True)
    return kube.run_pod(config), config


def test_users_groups_and_supplemental_groups(
    kube: Kubelet, pod: tuple[str, cri.PodSandboxConfig]
) -> None:
    pod_id, config = pod
    root = kube.run(pod_id, config, "root")
    # The primary group is among the groups too (as with containerd).
    assert identity(kube, root) == ([0] * 4, [0] * 4, [0])

    by_uid = kube.run(pod_id, config, "uid", security=SC(run_as_user=cri.Int64Value(value=1000)))
    # The primary group from the image's /etc/passwd, the others from its /etc/group.
    assert identity(kube, by_uid) == ([1000] * 4, [1000] * 4, [1000, 2000, 2001])
    st = kube.status(by_uid).user.linux
    assert (st.uid, st.gid, sorted(st.supplemental_groups)) == (1000, 1000, [1000, 2000, 2001])

    everything = SC(
        run_as_user=cri.Int64Value(value=1000),
        run_as_group=cri.Int64Value(value=3000),
        supplemental_groups=[4000, 2000],
    )
    full = kube.run(pod_id, config, "full", security=everything)
    assert identity(kube, full) == ([1000] * 4, [3000] * 4, [2000, 2001, 3000, 4000])

    named = kube.run(pod_id, config, "named", security=SC(run_as_username="app"))
    assert identity(kube, named)[:2] == ([1000] * 4, [1000] * 4)

    strict = SC(
        run_as_user=cri.Int64Value(value=1000),
        supplemental_groups=[4000],
        supplemental_groups_policy=cri.Strict,
    )
    only = kube.run(pod_id, config, "strict", security=strict)
    assert identity(kube, only)[2] == [1000, 4000]
    st = kube.status(only).user.linux
    assert sorted(st.supplemental_groups) == [1000, 4000]

    nobody = kube.container_config("x", security=SC(run_as_username="nope"))
    with pytest.raises(grpc.RpcError) as e:
        kube.create(pod_id, config, nobody)
    assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT
    # A refused create leaves no container behind.
    listed = kube.rt.ListContainers(
        cri.ListContainersRequest(filter=cri.ContainerFilter(pod_sandbox_id=pod_id))
    ).containers
    assert "x" not in {c.metadata.name for c in listed}


def test_capabilities(
    kube: Kubelet,
    pod: tuple[str, cri.PodSandboxConfig],
    priv_pod: tuple[str, cri.PodSandboxConfig],
) -> None:
    pod_id, config = pod
    available = set(host_capabilities())
    default = kube.run(pod_id, config, "default")
    st = proc_status(kube, default)
    assert caps(st["CapEff"]) == set(DEFAULT_CAPABILITIES) & available
    assert caps(st["CapBnd"]) == set(DEFAULT_CAPABILITIES) & available
    assert caps(st["CapInh"]) == set() and caps(st["CapAmb"]) == set()

    minimal = SC(capabilities=cri.Capability(drop_capabilities=["ALL"],
                                             add_capabilities=["NET_BIND_SERVICE"]))  # fmt: skip
    small = kube.run(pod_id, config, "small", security=minimal)
    st = proc_status(kube, small)
    assert caps(st["CapEff"]) == caps(st["CapBnd"]) == {"CAP_NET_BIND_SERVICE"}
    # Root without CAP_CHOWN cannot chown.
    r = kube.exec(small, [BB, "chown", "1000", "/tmp"])
    assert r.exit_code != 0 and b"not permitted" in r.stderr

    dropped = SC(capabilities=cri.Capability(drop_capabilities=["CHOWN", "cap_kill"],
                                             add_capabilities=["SYS_TIME"]))  # fmt: skip
    some = kube.run(pod_id, config, "some", security=dropped)
    want = (set(DEFAULT_CAPABILITIES) - {"CAP_CHOWN", "CAP_KILL"} | {"CAP_SYS_TIME"}) & available
    assert caps(proc_status(kube, some)["CapEff"]) == want

    with pytest.raises(grpc.RpcError) as e:
        kube.create(pod_id, config, kube.container_config("p", security=SC(privileged=True)))
    assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT

    ppod_id, pconfig = priv_pod
    priv = kube.run(ppod_id, pconfig, "p", security=SC(privileged=True))
    st = proc_status(kube, priv)
    assert caps(st["CapEff"]) == available
    assert st["Seccomp"] == "0"
    # Privileged: the host's devices, and /sys writable.
    assert kube.sh(priv, f"{BB} ls /dev").split().count("null") == 1
    assert len(kube.sh(priv, f"{BB} ls /dev").split()) > 10
    assert "rw" in kube.sh(priv, f"{BB} grep ' /sys ' /proc/mounts").split()[3].split(",")


def test_readonly_rootfs_no_new_privs_and_masked_paths(
    kube: Kubelet, pod: tuple[str, cri.PodSandboxConfig]
) -> None:
    pod_id, config = pod
    ro = kube.run(pod_id, config, "ro", security=SC(readonly_rootfs=True, no_new_privs=True))
    r = kube.exec(ro, [BB, "touch", "/newfile"])
    assert r.exit_code != 0 and b"Read-only file system" in r.stderr
    kube.sh(ro, "echo ok > /dev/shm/x")  # the pod's shm stays writable
    assert proc_status(kube, ro)["NoNewPrivs"] == "1"

    rw = kube.run(pod_id, config, "rw")
    kube.sh(rw, "touch /newfile")
    st = proc_status(kube, rw)
    assert st["NoNewPrivs"] == "0"
    # Default masked and read-only paths.
    assert kube.sh(rw, f"{BB} stat -c %F /proc/keys") == "character special file\n"
    r = kube.exec(rw, [BB, "sh", "-c", "echo 1 > /proc/sys/kernel/printk_ratelimit"])
    assert r.exit_code != 0 and b"Read-only file system" in r.stderr
    assert kube.sh(rw, f"{BB} stat -c %F /proc/cpuinfo") == "regular empty file\n"

    custom = SC(masked_paths=["/proc/cpuinfo"], readonly_paths=["/proc/sys"])
    c = kube.run(pod_id, config, "custom", security=custom)
    assert kube.sh(c, f"{BB} stat -c %F /proc/cpuinfo") == "character special file\n"
    assert kube.sh(c, f"{BB} stat -c %F /proc/keys") == "regular empty file\n"


def test_seccomp_profiles(
    cri_env: CriEnv, kube: Kubelet, pod: tuple[str, cri.PodSandboxConfig], tmp_path: Path
) -> None:
    pod_id, config = pod
    unshare = [BB, "unshare", "-U", "true"]
    unconfined = SC(seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.Unconfined))
    free = kube.run(pod_id, config, "free", security=unconfined)
    assert proc_status(kube, free)["Seccomp"] == "0"
    # Creating a user namespace needs no capability: only seccomp stops it.
    r = kube.exec(free, unshare)
    assert r.exit_code == 0, r.stderr

    default = SC(seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault))
    confined = kube.run(pod_id, config, "confined", security=default)
    assert proc_status(kube, confined)["Seccomp"] == "2"
    r = kube.exec(confined, unshare)
    assert r.exit_code != 0 and b"Operation not permitted" in r.stderr
    # Ordinary programs still work under it.
    assert kube.sh(confined, f"{BB} ls / >/dev/null && {BB} id -u && echo $((6*7))") == "0\n42\n"
    # The legacy field means the same.
    legacy = kube.run(pod_id, config, "legacy", security=SC(seccomp_profile_path="runtime/default"))
    assert kube.exec(legacy, unshare).exit_code != 0

    # With CAP_SYS_ADMIN the default profile lets namespace calls through.
    # (unshare -m mounts: AppArmor's default profile, where there is one, would stop that.)
    admin = SC(
        seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault),
        capabilities=cri.Capability(add_capabilities=["SYS_ADMIN"]),
        apparmor=cri.SecurityProfile(profile_type=cri.SecurityProfile.Unconfined),
    )
    adm = kube.run(pod_id, config, "admin", security=admin)
    r = kube.exec(adm, [BB, "unshare", "-m", "true"])
    assert r.exit_code == 0, r.stderr

    profile = tmp_path / "no-mkdir.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
            }
        )
    )
    local = SC(
        seccomp=cri.SecurityProfile(
            profile_type=cri.SecurityProfile.Localhost, localhost_ref=str(profile)
        )
    )
    nomkdir = kube.run(pod_id, config, "nomkdir", security=local)
    r = kube.exec(nomkdir, [BB, "mkdir", "/tmp/d"])
    assert r.exit_code != 0 and b"Operation not permitted" in r.stderr
    kube.sh(nomkdir, "touch /tmp/f")

    missing = SC(
        seccomp=cri.SecurityProfile(
            profile_type=cri.SecurityProfile.Localhost, localhost_ref=str(tmp_path / "none.json")
        )
    )
    with pytest.raises(grpc.RpcError) as e:
        kube.create(pod_id, config, kube.container_config("bad", security=missing))
    assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT


@contextlib.contextmanager
def shared_tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "shared", str(path)], check=True)
    try:
        subprocess.run(["mount", "--make-rshared", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-R", "-l", str(path)], check=False)


def _crun_usable(kube: Kubelet) -> bool:
    handlers = {h.name for h in kube.rt.Status(cri.StatusRequest()).runtime_handlers}
    return "crun" in handlers


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_recursive_read_only_mounts(kube: Kubelet, tmp_path: Path, handler: str) -> None:
    """A recursive read-only mount makes the mounts below the bound tree
    read-only too, where a plain read-only bind leaves them writable."""
    if handler == "crun" and not _crun_usable(kube):
        pytest.skip(
            "crun is not installed, or refuses this hybrid-cgroup host (guest lane runs it)"
        )
    features = {h.name: h.features for h in kube.rt.Status(cri.StatusRequest()).runtime_handlers}
    # runc 1.1 lists `rro` in `runc features`; crun 1.8 has it; the kernel has mount_setattr.
    assert features[handler].recursive_read_only_mounts
    vol = tmp_path / "vol"
    (vol / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "sub", str(vol / "sub")], check=True)
    try:
        config = kube.pod_config(f"rro-{handler}")
        pod_id = kube.run_pod(config, handler=handler)
        mounts = [
            cri.Mount(container_path="/rro", host_path=str(vol), readonly=True,
                      recursive_read_only=True),
            cri.Mount(container_path="/ro", host_path=str(vol), readonly=True),
        ]  # fmt: skip
        cid = kube.run(pod_id, config, "rro", mounts=mounts)
        for path in ("/rro/x", "/rro/sub/x", "/ro/x"):
            r = kube.exec(cid, [BB, "sh", "-c", f"echo x > {path}"])
            assert r.exit_code != 0 and b"Read-only file system" in r.stderr, (path, r.stderr)
        kube.sh(cid, "echo x > /ro/sub/x")  # a plain ro bind: the submount stays writable
        assert (vol / "sub" / "x").read_text() == "x\n"
        by_path = {m.container_path: m for m in kube.status(cid).mounts}
        assert by_path["/rro"].recursive_read_only and not by_path["/ro"].recursive_read_only

        # The CRI's rules: read-only and private, else INVALID_ARGUMENT and nothing made.
        before = kube.rt.ListContainers(cri.ListContainersRequest()).containers
        for bad in (
            cri.Mount(container_path="/m", host_path=str(vol), recursive_read_only=True),
            cri.Mount(container_path="/m", host_path=str(vol), readonly=True,
                      recursive_read_only=True, propagation=cri.PROPAGATION_HOST_TO_CONTAINER),
        ):  # fmt: skip
            with pytest.raises(grpc.RpcError) as e:
                kube.create(pod_id, config, kube.container_config("bad", mounts=[bad]))
            assert code_of(e.value) == grpc.StatusCode.INVALID_ARGUMENT
            assert "recursive_read_only needs" in e.value.details()  # type: ignore[attr-defined]
        assert kube.rt.ListContainers(cri.ListContainersRequest()).containers == before
        kube.stop_pod(pod_id)
        kube.remove_pod(pod_id)
    finally:
        subprocess.run(["umount", "-l", str(vol / "sub")], check=False)


@contextlib.contextmanager
def private_tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "private", str(path)], check=True)
    try:
        subprocess.run(["mount", "--make-private", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_mounts_and_devices(
    kube: Kubelet,
    pod: tuple[str, cri.PodSandboxConfig],
    priv_pod: tuple[str, cri.PodSandboxConfig],
    tmp_path: Path,
) -> None:
    pod_id, config = pod
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from host\n")
    script = tmp_path / "bin"
    script.mkdir()
    (script / "run.sh").write_text("#!/bin/busybox sh\necho ran\n")
    (script / "run.sh").chmod(0o755)
    missing = tmp_path / "created" / "deep"
    mounts = [
        cri.Mount(container_path="/data", host_path=str(data)),
        cri.Mount(container_path="/ro", host_path=str(data), readonly=True),
        cri.Mount(container_path="/new", host_path=str(missing)),
        cri.Mount(container_path="/bin2", host_path=str(script)),
        cri.Mount(container_path="/noexec", host_path=str(script), mount_options=["noexec"]),
    ]
    devices = [cri.Device(container_path="/dev/mynull", host_path="/dev/null", permissions="rw")]
    cid = kube.run(pod_id, config, "mounts", mounts=mounts, devices=devices)
    assert kube.sh(cid, "cat /data/in.txt") == "from host\n"
    kube.sh(cid, "echo from container > /data/out.txt")
    assert (data / "out.txt").read_text() == "from container\n"
    r = kube.exec(cid, [BB, "sh", "-c", "echo x > /ro/nope"])
    assert r.exit_code != 0 and b"Read-only file system" in r.stderr
    # A missing host path is created as a directory, as the kubelet expects.
    assert missing.is_dir() and oct(missing.stat().st_mode & 0o777) == "0o755"
    kube.sh(cid, "echo x > /new/file")
    assert (missing / "file").exists()
    assert kube.sh(cid, "/bin2/run.sh") == "ran\n"
    assert kube.exec(cid, [BB, "sh", "-c", "/noexec/run.sh"]).exit_code == 126
    kube.sh(cid, "echo x > /dev/mynull")
    st = kube.status(cid)
    by_path = {m.container_path: m for m in st.mounts}
    assert by_path["/ro"].readonly and by_path["/ro"].host_path == str(data)
    assert not by_path["/data"].readonly

    # Bad requests change nothing: input errors are INVALID_ARGUMENT, a host
    # that cannot do what was asked FAILED_PRECONDITION.
    before = kube.rt.ListContainers(cri.ListContainersRequest()).containers
    # A private mount cannot propagate back (under systemd / itself is shared).
    with private_tmpfs(tmp_path / "private") as private:
        bidi = cri.Mount(
            container_path="/x", host_path=str(private), propagation=cri.PROPAGATION_BIDIRECTIONAL
        )
        for bad, code in (
            (
                kube.container_config(
                    "b1", mounts=[cri.Mount(container_path="rel", host_path="/tmp")]
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                kube.container_config(
                    "b2", devices=[cri.Device(container_path="/dev/x", host_path=str(data))]
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (kube.container_config("b3", mounts=[bidi]), grpc.StatusCode.FAILED_PRECONDITION),
        ):
            with pytest.raises(grpc.RpcError) as e:
                kube.create(pod_id, config, bad)
            assert code_of(e.value) == code, e.value
    assert kube.rt.ListContainers(cri.ListContainersRequest()).containers == before

    # Bidirectional propagation: a mount made inside shows on the host.
    ppod_id, pconfig = priv_pod
    with shared_tmpfs(tmp_path / "shared") as shared:
        bidi = cri.Mount(
            container_path="/mnt/shared",
            host_path=str(shared),
            propagation=cri.PROPAGATION_BIDIRECTIONAL,
        )
        p = kube.run(ppod_id, pconfig, "bidi", mounts=[bidi], security=SC(privileged=True))
        kube.sh(p, f"{BB} mkdir /mnt/shared/inner && {BB} mount -t tmpfs inner /mnt/shared/inner")
        assert os.path.ismount(shared / "inner")
        kube.sh(p, f"{BB} umount /mnt/shared/inner")
        assert not os.path.ismount(shared / "inner")
        kube.stop_pod(ppod_id)
