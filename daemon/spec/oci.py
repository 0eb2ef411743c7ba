"""Building the OCI runtime `config.json` runc reads from a bundle.

`SpecOptions` collects what the image and the request decided (process,
user, namespaces, mounts, security, resources); `build` turns it into the
spec dict with the defaults a container runtime gives: the standard mounts,
masked and read-only paths, containerd's default capability set, and
resource settings that this host can actually grant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyctr.daemon.errors import InvalidArgument
from pyctr.daemon.spec.rootfs import User

if TYPE_CHECKING:
    from pyctr.daemon.runtime.records import ConsoleSize, UserNamespace

OCI_VERSION = "1.0.2"

# Capability numbers are fixed by the kernel ABI (linux/capability.h).
CAPABILITIES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN",
    "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE",
    "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
    "PERFMON", "BPF", "CHECKPOINT_RESTORE",
]  # fmt: skip

# The set containerd and CRI-O give a non-privileged container.
DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip

MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]  # fmt: skip
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def host_capabilities() -> list[str]:
    """The caps in this process's bounding set: the most a container can get here."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            mask = int(line.split()[1], 16)
            return [f"CAP_{n}" for i, n in enumerate(CAPABILITIES) if mask >> i & 1]
    return list(DEFAULT_CAPABILITIES)


def own_oom_score_adj() -> int:
    try:
        return int(Path("/proc/self/oom_score_adj").read_text())
    except (OSError, ValueError):
        return 0


def normalize_capability(name: str) -> str:
    name = name.strip().upper()
    return name if name.startswith("CAP_") else f"CAP_{name}"


def capability_set(add: list[str], drop: list[str], privileged: bool) -> list[str]:
    """Default set, minus drops, plus adds ("ALL" on either side as the CRI allows)."""
    available = host_capabilities()
    if privileged:
        return available
    adds = [normalize_capability(c) for c in add]
    drops = [normalize_capability(c) for c in drop]
    caps = [] if "CAP_ALL" in drops else [c for c in DEFAULT_CAPABILITIES if c not in drops]
    if "CAP_ALL" in adds:
        caps = list(available)
    caps += [c for c in adds if c != "CAP_ALL" and c not in caps]
    # A cap outside our own bounding set cannot be granted: runc would fail.
    return [c for c in caps if c in available]


def merge_env(image_env: list[str], extra: list[tuple[str, str]]) -> list[str]:
    """Image env, overridden key by key by the request's; PATH defaulted."""
    env: dict[str, str] = {}
    for item in image_env:
        key, _, value = item.partition("=")
        env[key] = value
    for key, value in extra:
        env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    return [f"{k}={v}" for k, v in env.items()]


def process_args(image: dict[str, Any], command: list[str], args: list[str]) -> list[str]:
    """Kubernetes' rule: command replaces Entrypoint, args replace Cmd."""
    entrypoint = list(image.get("Entrypoint") or [])
    cmd = list(image.get("Cmd") or [])
    if command:
        return list(command) + list(args)
    return entrypoint + (list(args) if args else cmd)


@dataclass
class Mount:
    destination: str
    source: str
    type: str = "bind"
    options: list[str] = field(default_factory=list)
    # Bound through an ID-mapped clone of the source (a pod with its own user namespace).
    idmap: bool = False

    def to_spec(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "type": self.type,
            "source": self.source,
            "options": self.options,
        }


@dataclass
class SpecOptions:
    args: list[str]
    env: list[str]
    user: User
    cwd: str = "/"
    rootfs: str = "rootfs"
    terminal: bool = False
    hostname: str = ""
    readonly_rootfs: bool = False
    # (type, path) pairs; an empty path means "a new namespace".
    namespaces: list[tuple[str, str]] = field(
        default_factory=lambda: [(n, "") for n in ("pid", "ipc", "uts", "mount", "network")]
    )
    mounts: list[Mount] = field(default_factory=list)
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    privileged: bool = False
    no_new_privileges: bool = False
    masked_paths: list[str] | None = None  # None: the defaults
    readonly_paths: list[str] | None = None
    cgroups_path: str = ""
    resources: dict[str, Any] = field(default_factory=dict)
    oom_score_adj: int | None = None
    restrict_oom_score_adj: bool = True
    sysctl: dict[str, str] = field(default_factory=dict)
    seccomp: dict[str, Any] | None = None
    apparmor_profile: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    rlimits: list[dict[str, Any]] = field(
        default_factory=lambda: [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    )
    shm_size: int = 64 * 1024 * 1024
    # "rshared" or "rslave" when a mount needs propagation through the rootfs.
    rootfs_propagation: str = ""
    # The pod's own user namespace (with ("user", ...) in namespaces).
    userns: UserNamespace | None = None


def default_mounts(opts: SpecOptions) -> list[Mount]:
    sys_opts = ["nosuid", "noexec", "nodev", "ro" if not opts.privileged else "rw"]
    return [
        Mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        Mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        Mount("/dev/pts", "devpts", "devpts",
              ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        Mount("/dev/shm", "shm", "tmpfs",
              ["nosuid", "noexec", "nodev", "mode=1777", f"size={opts.shm_size // 1024}k"]),
        Mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        Mount("/sys", "sysfs", "sysfs", sys_opts),
        Mount("/sys/fs/cgroup", "cgroup", "cgroup",
              ["nosuid", "noexec", "nodev", "relatime", "ro"]),
    ]  # fmt: skip


def build(opts: SpecOptions) -> dict[str, Any]:
    caps = capability_set(opts.cap_add, opts.cap_drop, opts.privileged)
    oom = opts.oom_score_adj
    if oom is not None and opts.restrict_oom_score_adj:
        # Lowering oom_score_adj needs CAP_SYS_RESOURCE: never ask for less than ours.
        oom = max(oom, own_oom_score_adj())
    process: dict[str, Any] = {
        "terminal": opts.terminal,
        "user": {
            "uid": opts.user.uid,
            "gid": opts.user.gid,
            "additionalGids": opts.user.additional_gids,
        },
        "args": opts.args,
        "env": opts.env,
        "cwd": opts.cwd or "/",
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
            # Inheritable and ambient stay empty: a non-root user must not
            # gain them across exec (CVE-2022-24769).
        },
        "rlimits": opts.rlimits,
        "noNewPrivileges": opts.no_new_privileges,
    }
    if oom is not None:
        process["oomScoreAdj"] = oom
    if opts.apparmor_profile:
        process["apparmorProfile"] = opts.apparmor_profile
    destinations = {m.destination for m in opts.mounts}
    mounts = [m for m in default_mounts(opts) if m.destination not in destinations]
    mounts += opts.mounts
    linux: dict[str, Any] = {
        "namespaces": [{"type": t, **({"path": p} if p else {})} for t, p in opts.namespaces],
        "resources": {"devices": [{"allow": False, "access": "rwm"}], **opts.resources},
        "maskedPaths": [] if opts.privileged else (
            MASKED_PATHS if opts.masked_paths is None else opts.masked_paths
        ),
        "readonlyPaths": [] if opts.privileged else (
            READONLY_PATHS if opts.readonly_paths is None else opts.readonly_paths
        ),
    }  # fmt: skip
    if opts.privileged:
        linux["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
    if opts.cgroups_path:
        linux["cgroupsPath"] = opts.cgroups_path
    if opts.rootfs_propagation:
        linux["rootfsPropagation"] = opts.rootfs_propagation
    if opts.userns is not None:
        linux["uidMappings"] = [m.to_spec() for m in opts.userns.uids]
        linux["gidMappings"] = [m.to_spec() for m in opts.userns.gids]
    if opts.sysctl:
        linux["sysctl"] = dict(opts.sysctl)
    if opts.seccomp and not opts.privileged:
        linux["seccomp"] = opts.seccomp
    if opts.devices:
        linux["devices"] = opts.devices
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": opts.rootfs, "readonly": opts.readonly_rootfs},
        "mounts": [m.to_spec() for m in mounts],
        "linux": linux,
    }
    if opts.hostname:
        spec["hostname"] = opts.hostname
    if opts.annotations:
        spec["annotations"] = dict(opts.annotations)
    return spec


def write_bundle_config(bundle: Path, spec: dict[str, Any]) -> None:
    """config.json, written atomically so a crash never leaves half a spec.

    No fsync: bundles live in the state dir, which does not outlive a reboot
    (the record in the metadata keeps the spec), and a daemon crash loses
    nothing the kernel already has. json.dumps, not json.dump: only the
    one-shot encoder is the C one.
    """
    import json

    tmp = bundle / "config.json.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(spec, separators=(",", ":")))
    os.replace(tmp, bundle / "config.json")


def exec_process(
    spec: dict[str, Any],
    args: list[str],
    tty: bool = False,
    env: list[str] | None = None,
    *,
    cwd: str | None = None,
    user: User | None = None,
    console_size: ConsoleSize | None = None,
) -> dict[str, Any]:
    """An exec's OCI process: the container's (from its spec), with other args
    (and env, cwd, user, initial terminal size)."""
    if not args:
        raise InvalidArgument("exec needs a command")
    process = dict(spec.get("process") or {})
    process.update(args=list(args), terminal=tty)
    if env:
        process["env"] = list(process.get("env") or []) + env
    if cwd:
        process["cwd"] = cwd
    if user is not None:
        process["user"] = {
            "uid": user.uid,
            "gid": user.gid,
            "additionalGids": user.additional_gids,
        }
    process.pop("consoleSize", None)
    set_console_size(process, console_size)
    return process


def set_console_size(process: dict[str, Any], size: ConsoleSize | None) -> None:
    """runc sizes a process's terminal before the process starts (no resize race)."""
    if size and process.get("terminal") and size.width and size.height:
        process["consoleSize"] = {"height": size.height, "width": size.width}
