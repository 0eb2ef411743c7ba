"""From CRI configs to OCI spec options: containers and their pod's pause.

`container_options` turns a ContainerConfig, the image's config and the pod
(`PodView`) into `SpecOptions` for `oci_spec.build`; `sandbox_options` does
the same for the pause process. Everything the kubelet sends is checked here
(negative limits, relative paths, privileged containers in unprivileged pods,
unknown users) and refused with InvalidArgument before anything is created.

Namespaces follow the CRI's NamespaceOption: the pod's network namespace is
its netns file (none with NODE), IPC and UTS are the pause process's, PID is
the pause's (POD), the container's own (CONTAINER), the host's (NODE) or a
target container's (TARGET).
"""

from __future__ import annotations

import errno
import logging
import os
import signal as signals
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyctr.daemon.cgroups import Cgroups
from pyctr.daemon.errors import FailedPrecondition, InvalidArgument
from pyctr.daemon.runtime.records import IdMap, UserNamespace
from pyctr.daemon.spec import seccomp
from pyctr.daemon.spec.oci import Mount, SpecOptions, capability_set, merge_env, process_args
from pyctr.daemon.spec.rootfs import UnknownUser, User, resolve_user
from pyctr.proto import cri_pb2 as cri

log = logging.getLogger(__name__)

POD, CONTAINER, NODE, TARGET = (cri.POD, cri.CONTAINER, cri.NODE, cri.TARGET)
SHM_SIZE = 64 * 1024 * 1024
# Hostnames longer than this are refused by sethostname(2).
MAX_HOSTNAME = 64
_PROPAGATION = {
    cri.PROPAGATION_PRIVATE: "rprivate",
    cri.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    cri.PROPAGATION_BIDIRECTIONAL: "rshared",
}
# Extra bind options a CRI mount may ask for (Mount.mount_options).
_MOUNT_OPTIONS = {"noexec", "nodev", "nosuid"}


@dataclass
class PodView:
    """What a container's spec needs to know about its running pod."""

    id: str
    pid: int  # the pause process (host PID)
    netns: str  # "" when the pod uses the host's network
    host_network: bool
    host_pid: bool
    host_ipc: bool
    hostname: str
    files: Path  # hostname, hosts, resolv.conf, shm/
    cgroup_parent: str
    privileged: bool
    name: str = ""
    namespace: str = ""
    uid: str = ""
    userns: UserNamespace | None = None  # the pod's own user namespace
    userns_path: str = ""  # where it is pinned


@dataclass
class ContainerPlan:
    """A validated container request: what the record keeps beside the spec."""

    mounts: list[Mount] = field(default_factory=list)
    status_mounts: list[dict[str, Any]] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    device_rules: list[dict[str, Any]] = field(default_factory=list)
    target_pid: int = 0


# -- small conversions ----------------------------------------------------------


def _nonneg(value: int, what: str) -> int:
    if value < 0:
        raise InvalidArgument(f"{what} must not be negative, got {value}")
    return value


def _cpuset(value: str, what: str) -> str:
    if value and not all(c.isdigit() or c in ",-" for c in value):
        raise InvalidArgument(f"{what} {value!r} is not a CPU/node list")
    return value


def oci_resources(r: cri.LinuxContainerResources, cgroup_v2: bool) -> dict[str, Any]:
    """CRI LinuxContainerResources -> OCI linux.resources (0 means unset)."""
    cpu: dict[str, Any] = {}
    if _nonneg(r.cpu_shares, "cpu_shares"):
        cpu["shares"] = r.cpu_shares
    if r.cpu_quota > 0:
        cpu["quota"] = r.cpu_quota
    if _nonneg(r.cpu_period, "cpu_period"):
        cpu["period"] = r.cpu_period
    if _cpuset(r.cpuset_cpus, "cpuset_cpus"):
        cpu["cpus"] = r.cpuset_cpus
    if _cpuset(r.cpuset_mems, "cpuset_mems"):
        cpu["mems"] = r.cpuset_mems
    memory: dict[str, Any] = {}
    if _nonneg(r.memory_limit_in_bytes, "memory_limit_in_bytes"):
        memory["limit"] = r.memory_limit_in_bytes
    if r.memory_swap_limit_in_bytes > 0:
        memory["swap"] = r.memory_swap_limit_in_bytes
    out: dict[str, Any] = {}
    if cpu:
        out["cpu"] = cpu
    if memory:
        out["memory"] = memory
    if r.hugepage_limits:
        out["hugepageLimits"] = [
            {"pageSize": h.page_size, "limit": h.limit} for h in r.hugepage_limits
        ]
    if r.unified:
        if cgroup_v2:
            out["unified"] = dict(r.unified)
        else:
            log.warning("ignoring cgroup v2 'unified' resources on a cgroup v1 host")
    return out


def cri_resources(res: dict[str, Any], oom_score_adj: int = 0) -> cri.LinuxContainerResources:
    """OCI linux.resources -> CRI (for ContainerStatus.resources)."""
    cpu = res.get("cpu") or {}
    memory = res.get("memory") or {}
    return cri.LinuxContainerResources(
        cpu_period=int(cpu.get("period") or 0),
        cpu_quota=int(cpu.get("quota") or 0),
        cpu_shares=int(cpu.get("shares") or 0),
        cpuset_cpus=str(cpu.get("cpus") or ""),
        cpuset_mems=str(cpu.get("mems") or ""),
        memory_limit_in_bytes=int(memory.get("limit") or 0),
        memory_swap_limit_in_bytes=int(memory.get("swap") or 0),
        oom_score_adj=oom_score_adj,
        hugepage_limits=[
            cri.HugepageLimit(page_size=h["pageSize"], limit=h["limit"])
            for h in res.get("hugepageLimits") or []
        ],
        unified=res.get("unified") or {},
    )


def parse_signal(name: str) -> int:
    """ "SIGTERM", "TERM", "15", "SIGRTMIN+3" -> number; InvalidArgument otherwise."""
    text = name.strip().upper()
    if text.isdigit():
        number = int(text)
    else:
        text = text if text.startswith("SIG") else "SIG" + text
        number = 0
        for base, attr in (("SIGRTMIN", signals.SIGRTMIN), ("SIGRTMAX", signals.SIGRTMAX)):
            if text.startswith(base) and text[len(base) :][:1] in ("+", "-"):
                number = int(attr) + int(text[len(base) :])
        if not number:
            aliases = {"SIGCLD": "SIGCHLD", "SIGPOLL": "SIGIO", "SIGIOT": "SIGABRT"}
            try:
                number = int(signals.Signals[aliases.get(text, text)])
            except KeyError:
                raise InvalidArgument(f"unknown signal {name!r}") from None
    if not 0 < number <= int(signals.SIGRTMAX):
        raise InvalidArgument(f"signal {name!r} out of range")
    return number


def cri_signal(value: int) -> int:
    """CRI Signal enum -> signal number; 0 for SIGNAL_RUNTIME_DEFAULT."""
    if value == cri.SIGNAL_RUNTIME_DEFAULT:
        return 0
    name = cri.Signal.Name(value).removeprefix("SIGNAL_")
    name = name.replace("MINPLUS", "MIN+").replace("MAXMINUS", "MAX-")
    return parse_signal(name)


def _clean_abs(path: str, what: str) -> str:
    if not path.startswith("/") or "\0" in path:
        raise InvalidArgument(f"{what} {path[:200]!r} must be an absolute path")
    return os.path.normpath(path)


# -- host side of mounts and devices ------------------------------------------


def _mount_propagation(path: str) -> set[str]:
    """Propagation tags ("shared", "master") of the mount that holds `path`."""
    best, tags = "", set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best = point
                sep = fields.index("-")
                tags = {opt.split(":")[0] for opt in fields[6:sep]}
    return tags


def _make_dirs(path: str) -> None:
    """mkdir -p with mode 0755 whatever the daemon's umask (as the kubelet expects)."""
    missing = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o755)
        except FileExistsError:
            continue
        os.chmod(d, 0o755)


def host_mount(
    m: cri.Mount, rro: bool = False, userns: UserNamespace | None = None
) -> tuple[Mount, dict[str, Any]]:
    """A CRI mount as an OCI bind mount, with the host side made ready.

    rro: whether the pod's runtime handler makes recursive read-only mounts
    (the `rro` option: mount_setattr over the whole bound tree). userns: the
    pod's own user namespace, whose ranges an ID-mapped mount must repeat."""
    dest = _clean_abs(m.container_path, "mount container_path")
    idmap = bool(m.uidMappings or m.gidMappings)
    if idmap:
        if userns is None:
            raise InvalidArgument(f"mount {dest}: ID mappings, but the pod shares the host's users")
        if user_namespace(m.uidMappings, m.gidMappings, f"mount {dest}") != userns:
            raise InvalidArgument(f"mount {dest}: its ID mappings are not the pod's")
    if m.recursive_read_only:
        # The CRI's rules: only a read-only, private mount can be recursive read-only.
        if not m.readonly:
            raise InvalidArgument(f"mount {dest}: recursive_read_only needs readonly")
        if m.propagation != cri.PROPAGATION_PRIVATE:
            raise InvalidArgument(
                f"mount {dest}: recursive_read_only needs propagation PROPAGATION_PRIVATE"
            )
        if not rro:
            raise FailedPrecondition(
                f"mount {dest}: the pod's runtime handler cannot make recursive read-only mounts"
            )
    requested = _clean_abs(m.host_path, "mount host_path")
    if not os.path.lexists(requested):
        # The kubelet expects a missing hostPath to appear as a directory.
        _make_dirs(requested)
    # Resolve links now, on the host, so the bind names the real place.
    source = os.path.realpath(requested)
    propagation = _PROPAGATION.get(m.propagation)
    if propagation is None:
        raise InvalidArgument(f"unknown mount propagation {m.propagation}")
    tags = _mount_propagation(source) if propagation != "rprivate" else set()
    if propagation == "rshared" and "shared" not in tags:
        raise FailedPrecondition(f"bidirectional mount of {source}: its mount is not shared")
    if propagation == "rslave" and not tags & {"shared", "master"}:
        raise FailedPrecondition(
            f"host-to-container mount of {source}: its mount is neither shared nor slave"
        )
    options = ["rbind", propagation, "ro" if m.readonly else "rw"]
    if m.recursive_read_only:
        options.append("rro")
    for opt in m.mount_options:
        if opt not in _MOUNT_OPTIONS:
            raise InvalidArgument(f"mount option {opt!r} is not allowed")
        options.append(opt)
    status = {  # the mount as asked for (ContainerStatus echoes it, as containerd does)
        "container_path": dest,
        "host_path": requested,
        "readonly": m.readonly,
        "propagation": int(m.propagation),
        "selinux_relabel": m.selinux_relabel,
        "recursive_read_only": m.recursive_read_only,
    }
    return Mount(dest, source, "bind", options, idmap=idmap), status


def user_namespace(uids: Any, gids: Any, what: str) -> UserNamespace:
    """The CRI's ID mappings as the one shape pyctr runs: one uid and one gid
    range of at least 65536 IDs from container ID 0 (the kubelet's), never
    mapping the host's root."""
    maps = []
    for kind, ranges in (("uid", uids), ("gid", gids)):
        if len(ranges) != 1:
            raise InvalidArgument(f"{what}: needs exactly one {kind} mapping, not {len(ranges)}")
        r = ranges[0]
        if r.container_id != 0:
            raise InvalidArgument(f"{what}: the {kind} mapping must start at container ID 0")
        if r.length < 65536:
            raise InvalidArgument(f"{what}: the {kind} mapping needs at least 65536 IDs")
        if r.host_id == 0 or r.host_id + r.length > 1 << 32:
            raise InvalidArgument(f"{what}: host {kind}s {r.host_id}+{r.length} are not usable")
        maps.append(IdMap(container_id=0, host_id=r.host_id, size=r.length))
    return UserNamespace(uids=[maps[0]], gids=[maps[1]])


def image_mount(m: cri.Mount, source: Path, image_id: str) -> tuple[Mount, dict[str, Any]]:
    """An image volume: `source` (in the image's read-only tree) bound read-only."""
    if m.uidMappings or m.gidMappings:
        raise InvalidArgument("idmapped mounts are not supported by pyctr")
    if m.host_path:
        raise InvalidArgument(f"mount {m.container_path[:200]!r}: both host_path and image")
    dest = _clean_abs(m.container_path, "mount container_path")
    # Never writable, whatever readonly says; nothing propagates out of an image.
    options = ["rbind", "rprivate", "ro", "nosuid", "nodev"]
    status = {
        "container_path": dest,
        "readonly": True,
        "image": m.image.image,
        "image_ref": image_id,
        "image_sub_path": m.image_sub_path,
    }
    return Mount(dest, str(source), "bind", options), status


def _device_entry(host_path: str, container_path: str, perms: str) -> tuple[dict, dict]:
    st = os.stat(host_path)
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise InvalidArgument(f"{host_path} is not a device node")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    dev = {
        "path": container_path,
        "type": kind,
        "major": major,
        "minor": minor,
        "fileMode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }
    rule = {"allow": True, "type": kind, "major": major, "minor": minor, "access": perms}
    return dev, rule


def request_devices(devices: list[cri.Device]) -> tuple[list[dict], list[dict]]:
    out, rules = [], []
    for d in devices:
        perms = d.permissions or "rwm"
        if not perms or set(perms) - set("rwm"):
            raise InvalidArgument(f"device permissions {d.permissions!r}: use r, w, m")
        host = os.path.realpath(_clean_abs(d.host_path, "device host_path"))
        dest = _clean_abs(d.container_path or d.host_path, "device container_path")
        try:
            dev, rule = _device_entry(host, dest, perms)
        except FileNotFoundError:
            raise InvalidArgument(f"device {d.host_path} does not exist") from None
        out.append(dev)
        rules.append(rule)
    return out, rules


_SKIP_DEV = ("/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/fd", "/dev/console")


def host_devices() -> list[dict[str, Any]]:
    """Every device node in the host's /dev, for privileged containers."""
    out: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk("/dev"):
        if dirpath.startswith(_SKIP_DEV):
            dirnames[:] = []
            continue
        for name in filenames:
            path = os.path.join(dirpath, name)
            if path.startswith(_SKIP_DEV):
                continue
            try:
                if not stat.S_ISLNK(os.lstat(path).st_mode):
                    out.append(_device_entry(path, path, "rwm")[0])
            except (OSError, InvalidArgument):
                continue
    return out


# -- security -------------------------------------------------------------------


def seccomp_profile(
    profile: cri.SecurityProfile | None, legacy: str, caps: list[str]
) -> dict[str, Any] | None:
    """The OCI seccomp object the request asks for (None = unconfined)."""
    if profile is not None:
        kind = profile.profile_type
        if kind == cri.SecurityProfile.RuntimeDefault:
            return seccomp.runtime_default(caps)
        if kind == cri.SecurityProfile.Localhost:
            return seccomp.load_localhost(profile.localhost_ref)
        return None
    if legacy in ("runtime/default", "docker/default"):
        return seccomp.runtime_default(caps)
    if legacy.startswith("localhost/"):
        return seccomp.load_localhost(legacy.removeprefix("localhost/"))
    if legacy in ("", "unconfined"):
        return None
    raise InvalidArgument(f"unknown seccomp profile {legacy!r}")


def resolve_identity(
    rootfs: Path,
    image_user: str,
    *,
    run_as_user: int | None,
    run_as_group: int | None,
    run_as_username: str = "",
    groups: list[int] | None = None,
    strict_groups: bool = False,
) -> User:
    """The process identity: request over image, names looked up in the image."""
    if run_as_user is not None and run_as_username:
        raise InvalidArgument("run_as_user and run_as_username are mutually exclusive")
    if run_as_username:
        spec = run_as_username
    elif run_as_user is not None:
        spec = str(_nonneg(run_as_user, "run_as_user"))
    else:
        spec = image_user
    if run_as_group is not None:
        spec = spec.partition(":")[0] + f":{_nonneg(run_as_group, 'run_as_group')}"
    extra = [_nonneg(g, "supplemental group") for g in groups or []]
    try:
        user = resolve_user(rootfs, spec, extra_groups=extra)
    except (UnknownUser, ValueError) as e:
        raise InvalidArgument(str(e)) from None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EACCES):
            raise InvalidArgument(f"cannot read the image's user database: {e}") from None
        raise
    if strict_groups:
        user.additional_gids = list(dict.fromkeys(extra))
    if user.gid not in user.additional_gids:
        # The primary group is one of the process's groups, as containerd and
        # CRI-O list it: ContainerStatus.user shows it, and critest checks it.
        user.additional_gids.insert(0, user.gid)
    return user


def _namespaces(pod: PodView, pid_mode: int, target_pid: int) -> list[tuple[str, str]]:
    ns: list[tuple[str, str]] = [("mount", "")]
    if pod.userns is not None:  # first: the others are joined as its root
        ns.insert(0, ("user", pod.userns_path))
    if not pod.host_network:
        ns.append(("network", pod.netns))
        ns.append(("uts", f"/proc/{pod.pid}/ns/uts"))
    if not pod.host_ipc:
        ns.append(("ipc", f"/proc/{pod.pid}/ns/ipc"))
    if pid_mode == POD and not pod.host_pid:
        ns.append(("pid", f"/proc/{pod.pid}/ns/pid"))
    elif pid_mode == CONTAINER:
        ns.append(("pid", ""))
    elif pid_mode == TARGET:
        ns.append(("pid", f"/proc/{target_pid}/ns/pid"))
    return ns


def container_options(
    rootfs: Path,
    image_config: dict[str, Any],
    config: cri.ContainerConfig,
    pod: PodView,
    plan: ContainerPlan,
    *,
    cid: str,
    cgroups: Cgroups,
    restrict_oom: bool,
    apparmor: str | None = None,
) -> SpecOptions:
    """Spec options for one container of `pod` (its rootfs is mounted at `rootfs`);
    `apparmor`: the profile name AppArmor.resolve chose, None for none."""
    linux = config.linux
    sc = linux.security_context
    ns_opts = sc.namespace_options
    if sc.privileged and not pod.privileged:
        raise InvalidArgument("a privileged container needs a privileged pod sandbox")
    args = process_args(image_config, list(config.command), list(config.args))
    if not args:
        raise InvalidArgument("the container has no command: none given and none in the image")
    if sc.HasField("run_as_group") and not (sc.HasField("run_as_user") or sc.run_as_username):
        # As containerd and critest have it (the kubelet always sends a user).
        raise InvalidArgument("run_as_group is set without run_as_user or run_as_username")
    user = resolve_identity(
        rootfs,
        str(image_config.get("User") or ""),
        run_as_user=sc.run_as_user.value if sc.HasField("run_as_user") else None,
        run_as_group=sc.run_as_group.value if sc.HasField("run_as_group") else None,
        run_as_username=sc.run_as_username,
        groups=list(sc.supplemental_groups),
        strict_groups=sc.supplemental_groups_policy == cri.Strict,
    )
    request_env = [(kv.key, kv.value.decode("utf-8", errors="replace")) for kv in config.envs]
    for key, _ in request_env:
        if not key or "=" in key or "\0" in key:
            raise InvalidArgument(f"invalid environment variable name {key[:100]!r}")
    base_env = [f"HOSTNAME={pod.hostname}"] + list(image_config.get("Env") or [])
    env = merge_env(base_env, request_env)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={user.home or '/'}")
    caps = capability_set(
        list(sc.capabilities.add_capabilities), list(sc.capabilities.drop_capabilities),
        sc.privileged,
    )  # fmt: skip
    profile = None
    if not sc.privileged:
        profile = seccomp_profile(
            sc.seccomp if sc.HasField("seccomp") else None, sc.seccomp_profile_path, caps
        )
    mounts = list(plan.mounts)
    taken = {m.destination for m in mounts}
    ro = sc.readonly_rootfs
    for name in ("hostname", "hosts", "resolv.conf"):
        if f"/etc/{name}" not in taken:
            options = ["rbind", "rprivate", "ro" if ro else "rw"]
            mounts.append(Mount(f"/etc/{name}", str(pod.files / name), "bind", options))
    if "/dev/shm" not in taken:
        shm = "/dev/shm" if pod.host_ipc else str(pod.files / "shm")
        mounts.append(Mount("/dev/shm", shm, "bind", ["rbind", "rprivate", "rw"]))
    resources = oci_resources(linux.resources, cgroups.v2)
    devices = list(plan.devices)
    if sc.privileged:
        known = {d["path"] for d in devices}
        devices += [d for d in host_devices() if d["path"] not in known]
    elif plan.device_rules:
        resources["devices"] = [{"allow": False, "access": "rwm"}, *plan.device_rules]
    cwd = config.working_dir or str(image_config.get("WorkingDir") or "/")
    if not cwd.startswith("/"):
        raise InvalidArgument(f"working_dir {cwd[:200]!r} must be an absolute path")
    opts = SpecOptions(
        args=args,
        env=env,
        user=user,
        cwd=cwd,
        terminal=config.tty,
        readonly_rootfs=ro,
        namespaces=_namespaces(pod, ns_opts.pid, plan.target_pid),
        userns=pod.userns,
        mounts=mounts,
        cap_add=list(sc.capabilities.add_capabilities),
        cap_drop=list(sc.capabilities.drop_capabilities),
        privileged=sc.privileged,
        no_new_privileges=sc.no_new_privs,
        masked_paths=list(sc.masked_paths) or None,
        readonly_paths=list(sc.readonly_paths) or None,
        cgroups_path=cgroups.cgroups_path(pod.cgroup_parent, cid),
        resources=resources,
        oom_score_adj=linux.resources.oom_score_adj if linux.HasField("resources") else None,
        restrict_oom_score_adj=restrict_oom,
        seccomp=profile,
        apparmor_profile=apparmor or "",
        devices=devices,
        annotations={
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": config.metadata.name,
            "io.kubernetes.cri.sandbox-id": pod.id,
            "io.kubernetes.cri.sandbox-name": pod.name,
            "io.kubernetes.cri.sandbox-namespace": pod.namespace,
            "io.kubernetes.cri.sandbox-uid": pod.uid,
            "io.kubernetes.cri.image-name": config.image.image,
        },
    )
    if any("rshared" in m.options for m in mounts):
        opts.rootfs_propagation = "rshared"
    elif any("rslave" in m.options for m in mounts):
        opts.rootfs_propagation = "rslave"
    return opts


def sandbox_options(
    rootfs: Path,
    image_config: dict[str, Any],
    config: cri.PodSandboxConfig,
    pod: PodView,
    *,
    cgroups: Cgroups,
    restrict_oom: bool,
    apparmor: str | None = None,
) -> SpecOptions:
    """Spec options for the pod's pause process, which holds its namespaces."""
    sc = config.linux.security_context
    args = process_args(image_config, [], [])
    if not args:
        raise FailedPrecondition("the sandbox image has no entrypoint or command")
    user = resolve_identity(
        rootfs,
        str(image_config.get("User") or ""),
        run_as_user=sc.run_as_user.value if sc.HasField("run_as_user") else None,
        run_as_group=sc.run_as_group.value if sc.HasField("run_as_group") else None,
        groups=list(sc.supplemental_groups),
    )
    caps = capability_set([], [], sc.privileged)
    profile = None
    if not sc.privileged:
        profile = seccomp_profile(
            sc.seccomp if sc.HasField("seccomp") else None, sc.seccomp_profile_path, caps
        )
    ns: list[tuple[str, str]] = [("mount", "")]
    if pod.userns is not None:  # pinned with the netns it owns
        ns.insert(0, ("user", pod.userns_path))
    if not pod.host_network:
        ns += [("network", pod.netns), ("uts", "")]
    if not pod.host_ipc:
        ns.append(("ipc", ""))
    if not pod.host_pid:
        ns.append(("pid", ""))
    mounts = []
    if not pod.host_ipc:
        mounts.append(Mount("/dev/shm", str(pod.files / "shm"), "bind", ["rbind", "rprivate"]))
    return SpecOptions(
        args=args,
        env=merge_env(list(image_config.get("Env") or []), []),
        user=user,
        cwd=str(image_config.get("WorkingDir") or "/"),
        hostname="" if pod.host_network else pod.hostname,
        readonly_rootfs=sc.readonly_rootfs,
        namespaces=ns,
        mounts=mounts,
        privileged=sc.privileged,
        no_new_privileges=True,
        userns=pod.userns,
        cgroups_path=cgroups.cgroups_path(pod.cgroup_parent, pod.id),
        # The pause process should be the last the OOM killer picks.
        oom_score_adj=-998,
        restrict_oom_score_adj=restrict_oom,
        sysctl=dict(config.linux.sysctls),
        seccomp=profile,
        apparmor_profile=apparmor or "",
        annotations={
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-id": pod.id,
            "io.kubernetes.cri.sandbox-name": pod.name,
            "io.kubernetes.cri.sandbox-namespace": pod.namespace,
            "io.kubernetes.cri.sandbox-uid": pod.uid,
        },
    )
