"""The CRI layer's pure parts, without root: the seccomp profile's contents,
signal names, resource conversion, DNS and log-path checks, record to
message conversion."""

from __future__ import annotations

import errno
import signal

import pytest

from pyctr.daemon.cri.convert import container_matches, container_status, pod_matches, pod_status
from pyctr.daemon.errors import InvalidArgument
from pyctr.daemon.pods.files import resolv_conf
from pyctr.daemon.pods.manager import container_log_path
from pyctr.daemon.runtime.records import (
    ContainerMetadata,
    CriContainer,
    Namespaces,
    PodMetadata,
    Sandbox,
)
from pyctr.daemon.runtime.states import PodState, Status
from pyctr.daemon.spec import seccomp
from pyctr.daemon.spec.cri import cri_resources, cri_signal, oci_resources, parse_signal
from pyctr.daemon.spec.oci import DEFAULT_CAPABILITIES
from pyctr.proto import cri_pb2 as cri

DANGEROUS = [
    "mount", "umount2", "unshare", "setns", "pivot_root", "keyctl", "add_key", "request_key",
    "ptrace", "process_vm_readv", "init_module", "finit_module", "kexec_load", "bpf",
    "perf_event_open", "reboot", "settimeofday", "swapon", "open_by_handle_at", "fsopen",
    "userfaultfd", "io_uring_setup", "acct", "syslog",
]  # fmt: skip
EVERYDAY = [
    "read", "write", "openat", "close", "execve", "mmap", "futex", "epoll_wait", "socket",
    "connect", "accept4", "clock_gettime", "exit_group", "wait4", "getrandom", "statx",
    "rt_sigaction", "setuid", "chown", "mknod", "rseq", "sendmsg", "pipe2", "prctl",
]  # fmt: skip


def _allowed(profile: dict) -> set[str]:
    return {
        n
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
        for n in rule["names"]
    }


def test_runtime_default_profile_blocks_escapes_and_allows_programs() -> None:
    profile = seccomp.runtime_default(DEFAULT_CAPABILITIES, machine="x86_64")
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == errno.EPERM
    assert "SCMP_ARCH_X86_64" in profile["architectures"]
    allowed = _allowed(profile)
    assert not allowed & set(DANGEROUS)
    assert set(EVERYDAY) <= allowed
    # clone only without namespace flags; clone3 answers ENOSYS (libc falls back).
    [clone] = [r for r in profile["syscalls"] if r["names"] == ["clone"]]
    assert clone["args"] == [
        {"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    [clone3] = [r for r in profile["syscalls"] if r["names"] == ["clone3"]]
    assert clone3["action"] == "SCMP_ACT_ERRNO" and clone3["errnoRet"] == errno.ENOSYS
    # chroot follows CAP_SYS_CHROOT (in the default set).
    assert "chroot" in allowed
    assert "chroot" not in _allowed(seccomp.runtime_default([]))


def test_runtime_default_grants_what_capabilities_guard() -> None:
    admin = _allowed(seccomp.runtime_default([*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"]))
    assert {"mount", "unshare", "setns", "clone", "clone3"} <= admin
    ptrace = _allowed(seccomp.runtime_default([*DEFAULT_CAPABILITIES, "CAP_SYS_PTRACE"]))
    assert "ptrace" in ptrace and "mount" not in ptrace
    # The keyring stays closed whatever the capabilities.
    everything = _allowed(seccomp.runtime_default([f"CAP_{c}" for c in ("SYS_ADMIN", "BPF")]))
    assert "keyctl" not in everything


def test_localhost_profiles(tmp_path) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "p.json"
    good.write_text(
        '{"defaultAction": "SCMP_ACT_ALLOW", "archMap": [{"architecture": "SCMP_ARCH_X86_64",'
        ' "subArchitectures": ["SCMP_ARCH_X86"]}], "syscalls": [{"name": "mkdir",'
        ' "action": "SCMP_ACT_ERRNO", "comment": "x"}]}'
    )
    loaded = seccomp.load_localhost(str(good))
    assert loaded["syscalls"] == [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]
    for text in ("not json", "[]", '{"syscalls": []}'):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(InvalidArgument):
            seccomp.load_localhost(str(tmp_path / "bad.json"))
    with pytest.raises(InvalidArgument):
        seccomp.load_localhost("relative.json")
    with pytest.raises(InvalidArgument):
        seccomp.load_localhost(str(tmp_path / "missing.json"))


def test_signals() -> None:
    assert parse_signal("SIGTERM") == signal.SIGTERM
    assert parse_signal("quit") == signal.SIGQUIT
    assert parse_signal("9") == 9
    assert parse_signal("SIGRTMIN+3") == signal.SIGRTMIN + 3
    assert parse_signal("SIGRTMAX-1") == signal.SIGRTMAX - 1
    assert parse_signal("SIGCLD") == signal.SIGCHLD
    for bad in ("SIGNOPE", "0", "999", ""):
        with pytest.raises(InvalidArgument):
            parse_signal(bad)
    assert cri_signal(cri.SIGNAL_RUNTIME_DEFAULT) == 0
    assert cri_signal(cri.SIGNAL_SIGINT) == signal.SIGINT
    assert cri_signal(cri.SIGNAL_SIGRTMINPLUS2) == signal.SIGRTMIN + 2
    assert cri_signal(cri.SIGNAL_SIGRTMAXMINUS14) == signal.SIGRTMAX - 14
    for value in cri.Signal.values():
        cri_signal(value)  # every enum value maps to a real signal


def test_resources_round_trip_and_validation() -> None:
    r = cri.LinuxContainerResources(
        cpu_period=100000, cpu_quota=20000, cpu_shares=512, memory_limit_in_bytes=1 << 26,
        cpuset_cpus="0-1", hugepage_limits=[cri.HugepageLimit(page_size="2MB", limit=1 << 21)],
        unified={"memory.high": "1000000"},
    )  # fmt: skip
    v1 = oci_resources(r, cgroup_v2=False)
    assert v1 == {
        "cpu": {"shares": 512, "quota": 20000, "period": 100000, "cpus": "0-1"},
        "memory": {"limit": 1 << 26},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 1 << 21}],
    }
    assert oci_resources(r, cgroup_v2=True)["unified"] == {"memory.high": "1000000"}
    back = cri_resources(v1, oom_score_adj=5)
    assert (back.cpu_shares, back.cpu_quota, back.memory_limit_in_bytes) == (512, 20000, 1 << 26)
    assert back.oom_score_adj == 5
    for bad in (
        cri.LinuxContainerResources(cpu_shares=-1),
        cri.LinuxContainerResources(memory_limit_in_bytes=-5),
        cri.LinuxContainerResources(cpuset_cpus="0;rm"),
    ):
        with pytest.raises(InvalidArgument):
            oci_resources(bad, cgroup_v2=False)


def test_dns_and_log_paths() -> None:
    assert resolv_conf(cri.DNSConfig()) is None
    text = resolv_conf(cri.DNSConfig(servers=["1.1.1.1", "::1"], searches=["a.b"], options=["x"]))
    assert text == "search a.b\nnameserver 1.1.1.1\nnameserver ::1\noptions x\n"
    for bad in (
        cri.DNSConfig(servers=["not-an-ip"]),
        cri.DNSConfig(searches=["a\nnameserver 6.6.6.6"]),
        cri.DNSConfig(options=["two words"]),
    ):
        with pytest.raises(InvalidArgument):
            resolv_conf(bad)
    assert container_log_path("/var/log/pods/p", "c/0.log") == "/var/log/pods/p/c/0.log"
    assert container_log_path("", "c/0.log") == ""
    for bad in ("/etc/passwd", "../../x.log", "c/../../x"):
        with pytest.raises(InvalidArgument):
            container_log_path("/var/log/pods/p", bad)


CREATED, RUNNING, EXITED = Status.CREATED, Status.RUNNING, Status.EXITED


def _pod(status: Status = RUNNING, state: PodState = PodState.READY) -> Sandbox:
    return Sandbox(
        id="a" * 64,
        name="p_ns_uid_0",
        status=status,
        labels={"app": "x"},
        metadata=PodMetadata(name="p", namespace="ns", uid="uid", attempt=0),
        state=state,
        ips=["10.0.0.2", "fd00::2"],
        namespaces=Namespaces(network=cri.POD, pid=cri.CONTAINER, ipc=cri.POD),
    )


def test_record_conversion_and_filters() -> None:
    st = pod_status(_pod())
    assert st.state == cri.SANDBOX_READY and st.network.ip == "10.0.0.2"
    assert [ip.ip for ip in st.network.additional_ips] == ["fd00::2"]
    assert st.linux.namespaces.options.pid == cri.CONTAINER
    assert pod_status(_pod(status=EXITED)).state == cri.SANDBOX_NOTREADY
    assert pod_status(_pod(state=PodState.NOTREADY)).state == cri.SANDBOX_NOTREADY
    ready = cri.PodSandboxStateValue(state=cri.SANDBOX_READY)
    assert pod_matches(_pod(), cri.PodSandboxFilter(id="aaa", state=ready))
    assert not pod_matches(_pod(), cri.PodSandboxFilter(label_selector={"app": "y"}))

    c = CriContainer(
        id="b" * 64, name="c", sandbox_id="a" * 64, status=EXITED, exit_code=137,
        reason="OOMKilled", spec={"process": {"user": {"uid": 5, "gid": 6,
        "additionalGids": [7]}}}, metadata=ContainerMetadata(name="c", attempt=2),
    )  # fmt: skip
    s = container_status(c)
    assert (s.state, s.exit_code, s.reason) == (cri.CONTAINER_EXITED, 137, "OOMKilled")
    assert s.metadata.attempt == 2
    assert (s.user.linux.uid, s.user.linux.gid, list(s.user.linux.supplemental_groups)) == (
        5, 6, [7],
    )  # fmt: skip
    created = CriContainer(id="c" * 64, name="d", sandbox_id="a" * 64, status=CREATED)
    assert container_status(created).reason == ""
    running = cri.ContainerStateValue(state=cri.CONTAINER_RUNNING)
    assert not container_matches(c, cri.ContainerFilter(state=running))
    assert container_matches(c, cri.ContainerFilter(pod_sandbox_id="aa", id="bb"))
