"""AppArmor: the profile a CRI container (and its pod's pause) runs under.

The kubelet sends a SecurityProfile (RuntimeDefault unless the pod says
otherwise) and, for containers, the old `apparmor_profile` string
("runtime/default", "unconfined", "localhost/<name>"); the SecurityProfile
wins. RuntimeDefault is pyctr's own profile below, loaded with
apparmor_parser when the daemon starts; Localhost names a profile the node
has loaded (checked at CreateContainer, so a missing one creates nothing);
Unconfined is none. A privileged container asking for RuntimeDefault runs
unconfined, as in containerd and CRI-O.

Detected at start: the kernel has AppArmor on and apparmor_parser is there.
Elsewhere (this project's development hosts, most non-Debian nodes) the
fields are accepted and nothing is applied, which is what the kubelet
expects of a node without AppArmor.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyctr.daemon.errors import FailedPrecondition, InvalidArgument
from pyctr.proto import cri_pb2 as cri

log = logging.getLogger(__name__)

DEFAULT_PROFILE = "pyctr-default"
ENABLED_FILE = Path("/sys/module/apparmor/parameters/enabled")
PROFILES_FILE = Path("/sys/kernel/security/apparmor/profiles")

# Written for what a container needs: files, network, capabilities and
# signals among its own processes are allowed; what reaches past the
# container through kernel interfaces (mounts, most of /proc and /sys) is not.
PROFILE_TEXT = f"""\
profile {DEFAULT_PROFILE} flags=(attach_disconnected,mediate_deleted) {{
  file,
  network,
  capability,
  unix,
  umount,
  signal (send, receive) peer={DEFAULT_PROFILE},
  signal (receive) peer=unconfined,
  ptrace (read, readby, trace, tracedby) peer={DEFAULT_PROFILE},

  # No mounts of its own: the runtime set up every mount before the exec.
  deny mount,
  deny pivot_root,

  # /proc: writes only below the container's own process dirs (and shm limits).
  deny /proc/* w,
  deny /proc/{{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}}/** w,
  deny /proc/sys/[^k]** w,
  deny /proc/sys/kernel/{{?,??,[^s][^h][^m]**}} w,
  deny /proc/sysrq-trigger rwklx,
  deny /proc/kcore rwklx,

  # /sys: read-only but for its cgroups; firmware and the LSMs' files not at all.
  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
}}
"""


@dataclass
class AppArmor:
    enabled: bool
    parser: str | None
    reason: str  # why it is off, or how it is on
    default_loaded: bool = False

    @classmethod
    def detect(cls) -> AppArmor:
        try:
            on = ENABLED_FILE.read_text().strip().upper().startswith("Y")
        except OSError:
            return cls(False, None, "the kernel has no AppArmor")
        if not on:
            return cls(False, None, "AppArmor is disabled in the kernel")
        parser = shutil.which("apparmor_parser") or shutil.which("/sbin/apparmor_parser")
        if parser is None:
            return cls(False, None, "apparmor_parser not found (Debian package apparmor)")
        return cls(True, parser, f"enabled, default profile {DEFAULT_PROFILE}")

    def load_default(self) -> None:
        """Load (or replace) pyctr's default profile; blocking, once at start."""
        if not self.enabled or self.parser is None:
            return
        try:
            subprocess.run(
                [self.parser, "--replace", "--quiet"],
                input=PROFILE_TEXT.encode(),
                capture_output=True,
                check=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", b"") or b""
            self.reason = f"could not load {DEFAULT_PROFILE}: {e} {detail.decode(errors='replace')}"
            log.warning("apparmor: %s", self.reason)
            return
        self.default_loaded = True

    @staticmethod
    def loaded(name: str) -> bool:
        """Is a profile of this name loaded in the kernel?"""
        try:
            lines = PROFILES_FILE.read_text().splitlines()
        except OSError:
            return False
        return any(line.rsplit(" (", 1)[0] == name for line in lines)

    def resolve(
        self, profile: cri.SecurityProfile | None, legacy: str, privileged: bool
    ) -> str | None:
        """The profile name for the OCI spec, or None for none (unconfined)."""
        if profile is None:
            profile = _from_legacy(legacy)
        if profile.profile_type not in (
            cri.SecurityProfile.RuntimeDefault,
            cri.SecurityProfile.Unconfined,
            cri.SecurityProfile.Localhost,
        ):
            raise InvalidArgument(f"unknown AppArmor profile type {profile.profile_type}")
        if profile.profile_type == cri.SecurityProfile.Localhost:
            name = profile.localhost_ref.removeprefix("localhost/")
            if not name or len(name) > 4096 or "\0" in name:
                raise InvalidArgument("an AppArmor Localhost profile needs a profile name")
        if not self.enabled:
            return None  # nothing to enforce with: accepted, as the kubelet expects
        if profile.profile_type == cri.SecurityProfile.Unconfined:
            return None
        if profile.profile_type == cri.SecurityProfile.RuntimeDefault:
            if privileged:
                return None
            if not self.default_loaded:
                raise FailedPrecondition(f"AppArmor RuntimeDefault: {self.reason}")
            return DEFAULT_PROFILE
        if not self.loaded(name):
            raise FailedPrecondition(f"AppArmor profile {name[:200]!r} is not loaded on this node")
        return name


def _from_legacy(value: str) -> cri.SecurityProfile:
    if value in ("", "runtime/default"):  # empty: the default, as kubelets expect
        return cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault)
    if value == "unconfined":
        return cri.SecurityProfile(profile_type=cri.SecurityProfile.Unconfined)
    if value.startswith("localhost/"):
        return cri.SecurityProfile(profile_type=cri.SecurityProfile.Localhost, localhost_ref=value)
    raise InvalidArgument(f"unknown AppArmor profile {value[:200]!r}")
