"""Where containers' cgroups go: the driver (systemd or cgroupfs) and the
hierarchy (v1, hybrid or v2), decided once at startup.

With the cgroupfs driver a cgroup parent is a path ("/pyctr",
"/kubepods/burstable/pod<uid>") and a container's cgroupsPath is
"<parent>/<id>". With the systemd driver a parent is a slice
("kubepods-burstable-pod<uid>.slice", as the kubelet names it) and the
cgroupsPath is "<slice>:pyctr:<id>": runc asks systemd for a transient
scope pyctr-<id>.scope in that slice, and systemd owns the cgroup. The
kubelet must use the same driver; it learns ours through RuntimeConfig.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pyctr.daemon.errors import InvalidArgument
from pyctr.shim.cgroups import cgroup_dir, slice_dir

SCOPE_PREFIX = "pyctr"  # scopes are pyctr-<id>.scope
DEFAULT_PARENTS = {"cgroupfs": "/pyctr", "systemd": "pyctr.slice"}
_PATH_RE = re.compile(r"^(/[A-Za-z0-9_.:@\-]+)+$")
_SLICE_RE = re.compile(r"^[A-Za-z0-9_.:@\-]+\.slice$")


def systemd_booted() -> bool:
    """systemd is PID 1 (its own test, sd_booted: this dir exists)."""
    return os.path.isdir("/run/systemd/system")


def cgroup_version() -> str:
    """ "v2" (unified only), "v1" (legacy) or "v1+v2" (hybrid)."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "v2"
    if os.path.exists("/sys/fs/cgroup/unified/cgroup.controllers"):
        return "v1+v2"
    return "v1" if os.path.isdir("/sys/fs/cgroup/memory") else "none"


@dataclass(frozen=True)
class Cgroups:
    driver: str  # "systemd" or "cgroupfs"
    reason: str  # why this driver, for `pyctr info` and the log
    version: str  # see cgroup_version
    default_parent: str  # for pods without a cgroup_parent, and native containers

    @classmethod
    def resolve(cls, configured: str, parent: str = "") -> Cgroups:
        """The setup for config values cri.cgroup_driver and runtime.cgroup_parent.

        Raises InvalidArgument when they cannot work on this host.
        """
        booted = systemd_booted()
        if configured == "auto":
            driver = "systemd" if booted else "cgroupfs"
            why = "systemd is PID 1" if booted else "systemd is not PID 1"
            reason = f"auto: {why}"
        else:
            driver, reason = configured, "set by cri.cgroup_driver"
            if driver == "systemd" and not booted:
                raise InvalidArgument(
                    'config: cri.cgroup_driver is "systemd" but systemd is not PID 1 '
                    '(no /run/systemd/system); use "cgroupfs" or "auto"'
                )
        setup = cls(driver, reason, cgroup_version(), "")
        default = parent or DEFAULT_PARENTS[driver]
        try:
            setup.check_parent(default)
        except InvalidArgument as e:
            raise InvalidArgument(f"config: runtime.cgroup_parent: {e}") from None
        return cls(driver, reason, setup.version, default)

    @property
    def systemd(self) -> bool:
        return self.driver == "systemd"

    @property
    def v2(self) -> bool:
        return self.version == "v2"

    def check_parent(self, parent: str) -> str:
        """A cgroup parent as this driver spells it, else InvalidArgument."""
        if self.systemd:
            if not _SLICE_RE.match(parent) or slice_dir(parent) is None:
                raise InvalidArgument(
                    f"cgroup parent {parent[:200]!r} is not a systemd slice name "
                    "(such as kubepods-burstable-pod<uid>.slice), as the systemd cgroup driver "
                    "needs: is the kubelet's cgroupDriver the runtime's?"
                )
        elif not _PATH_RE.match(parent) or "/../" in parent + "/" or "/./" in parent + "/":
            raise InvalidArgument(
                f"cgroup parent {parent[:200]!r} is not an absolute cgroup path "
                "(such as /kubepods/burstable/pod<uid>), as the cgroupfs cgroup driver needs: "
                "is the kubelet's cgroupDriver the runtime's?"
            )
        return parent

    def cgroups_path(self, parent: str, container_id: str) -> str:
        """The OCI linux.cgroupsPath of a container under parent."""
        if self.systemd:
            return f"{parent}:{SCOPE_PREFIX}:{container_id}"
        return f"{parent.rstrip('/')}/{container_id}"

    def directory(self, parent_or_path: str) -> str | None:
        """The cgroup (below each hierarchy's root) of a cgroupsPath or parent."""
        if self.systemd and ":" not in parent_or_path:
            return slice_dir(parent_or_path)
        return cgroup_dir(parent_or_path)

    def unit(self, container_id: str) -> str | None:
        """The systemd unit that holds a container's cgroup, if any."""
        return f"{SCOPE_PREFIX}-{container_id}.scope" if self.systemd else None
