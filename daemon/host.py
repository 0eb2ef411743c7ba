"""Probes of the host: runc, kernel features, cgroups, CNI.

Used by `Info`, CRI `Status` and the startup log line, so an operator sees at a
glance what pyctr found. Each probe is cheap (a file read or one exec) and its
result is cached by the caller where it is on a hot path.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyctr.snapshotter.overlay import overlay_supported

if TYPE_CHECKING:
    from pyctr.daemon.cgroups import Cgroups


@dataclass(frozen=True)
class Feature:
    name: str
    value: str
    detail: str = ""


def searchable_dir(path: Path) -> Path:
    """`path` made (with its parents) and set to 0711 whatever the umask:
    others may pass through but not list it. The root of a pod with its own
    user namespace is an unprivileged host ID that must reach its rootfs,
    pod files and volumes below the state dir."""
    path.mkdir(parents=True, exist_ok=True, mode=0o711)
    os.chmod(path, 0o711)
    return path


def find_runc(runc: str) -> str | None:
    """Absolute path of the runc binary named in the config, or None."""
    if os.sep in runc:
        return runc if os.access(runc, os.X_OK) else None
    return shutil.which(runc)


def runc_version(path: str | None) -> str:
    if path is None:
        return ""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0] if out else ""


def cni_configs(conf_dir: str) -> list[str]:
    try:
        names = sorted(os.listdir(conf_dir))
    except OSError:
        return []
    return [n for n in names if n.endswith((".conf", ".conflist", ".json"))]


def features(conf_dir: str, bin_dir: str, cgroups: Cgroups) -> list[Feature]:
    configs = cni_configs(conf_dir)
    cni_detail = ", ".join(configs) if configs else f"no network config in {conf_dir}"
    plugins = sorted(os.listdir(bin_dir)) if os.path.isdir(bin_dir) else []
    return [
        Feature("overlayfs", "yes" if overlay_supported() else "no"),
        Feature("cgroup", cgroups.version),
        Feature("cgroup-driver", cgroups.driver, cgroups.reason),
        Feature("cni", "yes" if configs else "no", cni_detail),
        Feature("cni-plugins", str(len(plugins)), bin_dir),
        Feature("arch", platform.machine()),
    ]
