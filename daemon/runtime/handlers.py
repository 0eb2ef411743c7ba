"""Runtime handlers: the OCI runtimes a pod can choose (RuntimeClass).

    handlers = probe(config, cgroups)      # once, at daemon start
    h = handlers.choose(request.runtime_handler)   # RunPodSandbox: "" is the default
    h = handlers.of(record.runtime)        # a stored record's handler
    ShimOptions(runc=h.path, runc_root=h.root, ...)

Built in: `runc` (binary `runtime.runc`) and `crun` when it is installed;
`[cri.runtimes.<name>]` adds handlers or changes those (binary, root).
Each handler's features are probed once from the binary: `<binary> features`
(the OCI runtime features JSON) where it has that command, else what its
version is known to do. A feature is claimed only when the runtime and the
kernel both do it; every verdict carries its reason for `pyctr info`.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyctr.daemon import host
from pyctr.daemon.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from pyctr.daemon.cgroups import Cgroups
    from pyctr.daemon.config import Config

log = logging.getLogger("pyctr.runtime")

_SYS_MOUNT_SETATTR = 442  # x86_64 and aarch64 (the unified syscall table)


@dataclass(frozen=True)
class Verdict:
    """A feature: on or off, and why."""

    on: bool
    reason: str


@dataclass(frozen=True)
class Handler:
    name: str
    binary: str  # as configured
    path: str | None  # absolute; None: not found
    root: str  # the runtime's --root
    version: str = ""  # first line of `<binary> --version`
    rro: Verdict = Verdict(False, "not probed")  # recursive read-only mounts (`rro`)
    idmap: Verdict = Verdict(False, "not probed")  # the runtime's own idmapped mounts
    # Pods with their own user namespace: pyctr ID-maps their rootfs and
    # volumes itself, so this needs the kernel, not the runtime's idmap.
    userns: Verdict = Verdict(False, "not probed")
    unusable: str = ""  # why pods cannot run on it here; "" when they can

    @property
    def usable(self) -> bool:
        return self.path is not None and not self.unusable


@dataclass
class Handlers:
    by_name: dict[str, Handler]
    default: str = "runc"
    _warned: set[str] = field(default_factory=set)

    def choose(self, name: str) -> Handler:
        """The handler a RunPodSandbox asks for ("" = the default); refused
        when unknown (InvalidArgument) or unable to run here (FailedPrecondition)."""
        h = self.by_name.get(name or self.default)
        if h is None:
            known = ", ".join(sorted(self.by_name)) or "none"
            raise InvalidArgument(f"unknown runtime handler {name!r} (configured: {known})")
        if h.path is None:
            raise FailedPrecondition(f"runtime handler {h.name!r}: binary {h.binary!r} not found")
        if h.unusable:
            raise FailedPrecondition(f"runtime handler {h.name!r} cannot run here: {h.unusable}")
        return h

    def of(self, name: str) -> Handler:
        """A stored record's handler ("": runc, as before handlers); the
        default when the config dropped it (so its leftovers can be cleaned up)."""
        h = self.by_name.get(name or "runc")
        if h is None:
            if name not in self._warned:
                self._warned.add(name)
                log.warning(
                    "runtime handler %r is gone from the config; using %r", name, self.default
                )
            h = self.by_name[self.default]
        return h

    @property
    def usable(self) -> list[Handler]:
        return [h for h in self.by_name.values() if h.usable]


def handler_info(h: Handler) -> dict[str, Any]:
    """A handler as `pyctr info` and CRI Status (verbose) show it."""
    return {
        "binary": h.path or h.binary,
        "root": h.root,
        "version": h.version,
        "usable": h.usable,
        "unusable": h.unusable,
        "recursiveReadOnlyMounts": {"on": h.rro.on, "reason": h.rro.reason},
        "idmappedMounts": {"on": h.idmap.on, "reason": h.idmap.reason},
        "userNamespaces": {"on": h.userns.on, "reason": h.userns.reason},
    }


def info_features(handlers: Handlers) -> list[tuple[str, str, str]]:
    """(name, value, detail) rows for `pyctr info`: each handler, its features and why."""
    rows = []
    for h in handlers.by_name.values():
        default = " (default)" if h.name == handlers.default else ""
        state = "yes" if h.usable else f"no: {h.unusable}"
        rows.append((f"runtime {h.name}", state, f"{h.path or h.binary} {h.version}{default}"))
        features = (("recursive-read-only", h.rro), ("idmapped-mounts", h.idmap),
                    ("user-namespaces", h.userns))  # fmt: skip
        for key, verdict in features:
            rows.append((f"runtime {h.name} {key}", "yes" if verdict.on else "no", verdict.reason))
    return rows


def single(runc_path: str | None, root: str, binary: str = "runc") -> Handlers:
    """Just runc, unprobed: a Context built without `probe` (tests, tools)."""
    missing = "" if runc_path else f"{binary!r} not found"
    return Handlers({"runc": Handler("runc", binary, runc_path, root, unusable=missing)})


def probe(config: Config, cgroups: Cgroups) -> Handlers:
    """The configured handlers, each with its binary found and features probed."""
    state = config.state_dir
    wanted: dict[str, tuple[str, str]] = {"runc": (config.runtime.runc, "")}
    if host.find_runc("crun") is not None:
        wanted["crun"] = ("crun", "")
    for name, h in config.cri.runtimes.items():
        base = wanted.get(name, ("", ""))
        wanted[name] = (h.binary or base[0] or name, h.root)
    handlers = {}
    for name, (binary, root) in wanted.items():
        handlers[name] = _probe_one(name, binary, root or str(state / name), cgroups)
    default = config.cri.default_runtime
    if default not in handlers:
        raise InvalidArgument(f"config: cri.default_runtime {default!r} is not a runtime handler")
    return Handlers(handlers, default)


def _probe_one(name: str, binary: str, root: str, cgroups: Cgroups) -> Handler:
    path = host.find_runc(binary)
    if path is None:
        return Handler(name, binary, None, root, unusable=f"{binary!r} not found")
    version = host.runc_version(path)
    features = _features_json(path)
    kind = os.path.basename(path)
    kernel = _mount_setattr()
    if features is not None:
        rro, idmap = _from_features(features)
    else:
        rro, idmap = _from_version(kind, version)
    if not kernel.on:
        rro = idmap = kernel
    unusable = ""
    if kind == "crun" and cgroups.version == "v1+v2" and _unified_controllers():
        # crun's own check (libcrun): a hybrid hierarchy whose cgroup2 mount
        # has controllers is refused at every create.
        unusable = "crun refuses cgroup v1+v2 hybrid hosts whose cgroup2 mount has controllers"
    return Handler(name, binary, path, root, version, rro, idmap, user_namespaces(), unusable)


def _features_json(path: str) -> dict[str, Any] | None:
    """`<runtime> features` (runc 1.1+, crun 1.9+), or None where it has no such command."""
    try:
        out = subprocess.run([path, "features"], capture_output=True, timeout=10, check=True)
        data = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _from_features(data: dict[str, Any]) -> tuple[Verdict, Verdict]:
    options = data.get("mountOptions") or []
    rro = (
        Verdict(True, "`features` lists the rro mount option")
        if "rro" in options
        else Verdict(False, "`features` does not list the rro mount option")
    )
    ext = ((data.get("linux") or {}).get("mountExtensions") or {}).get("idmap") or {}
    idmap = (
        Verdict(True, "`features`: linux.mountExtensions.idmap.enabled")
        if ext.get("enabled")
        else Verdict(False, "`features` has no linux.mountExtensions.idmap: no idmapped mounts")
    )
    return rro, idmap


def _version_tuple(version: str) -> tuple[int, ...]:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return tuple(int(x or 0) for x in m.groups()) if m else ()


def _from_version(kind: str, version: str) -> tuple[Verdict, Verdict]:
    """What a runtime without `features` does, by its version (checked in
    the guest lane for Debian's crun 1.8.1)."""
    v = _version_tuple(version)
    if kind == "crun" and v >= (1, 8):
        why = f"crun {'.'.join(map(str, v))} (no `features`; known since crun 1.8)"
        return Verdict(True, f"rro: {why}"), Verdict(True, f"idmap mount option: {why}")
    unknown = Verdict(False, f"{version or kind}: no `features` and no known support")
    return unknown, unknown


def _mount_setattr() -> Verdict:
    """Whether the kernel has mount_setattr(2) (5.12+), which rro and idmapped
    mounts are made with: an invalid call answers EBADF/EINVAL, not ENOSYS."""
    libc = ctypes.CDLL(None, use_errno=True)
    ret = libc.syscall(_SYS_MOUNT_SETATTR, -1, b"", 0, None, 0)
    err = ctypes.get_errno()
    if ret == -1 and err == errno.ENOSYS:
        return Verdict(False, "the kernel has no mount_setattr (needs Linux 5.12)")
    return Verdict(True, "kernel has mount_setattr")


def user_namespaces() -> Verdict:
    """Whether pods can have their own user namespace here: ID-mapped mounts
    (mount_setattr), overlayfs over ID-mapped layers (Linux 5.19), and
    `unshare` to make the namespace the mappings come from."""
    kernel = _mount_setattr()
    if not kernel.on:
        return kernel
    if _version_tuple(os.uname().release) < (5, 19):
        return Verdict(False, "overlayfs over ID-mapped layers needs Linux 5.19")
    if shutil.which("unshare") is None:
        return Verdict(False, "`unshare` (util-linux) is not installed")
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if int(f.read()) == 0:
                return Verdict(False, "user.max_user_namespaces is 0")
    except (OSError, ValueError):
        return Verdict(False, "the kernel has no user namespaces")
    return Verdict(True, "ID-mapped rootfs and volumes (mount_setattr, overlayfs on Linux 5.19+)")


def _unified_controllers() -> bool:
    try:
        with open("/sys/fs/cgroup/unified/cgroup.controllers") as f:
            return bool(f.read().split())
    except OSError:
        return False
