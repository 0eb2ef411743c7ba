"""CNI network config: which conflist in the config dir is *the* network,
and whether it is usable; pyctr.daemon.pods.cni runs its plugins.

    config = NetworkConfig(conf_dir, bin_dirs)
    ready, why = config.status()    # re-reads only when the files changed
    net = config.network()          # or NetworkNotReady

Which config: the files in conf_dir ending .conflist, .conf or .json, in
lexical order; the first that loads as a network (a JSON object with a name
and either a plugin list or a single plugin's `type`, which is wrapped into a
list) is *the* network, the kubelet/containerd convention. Files that do not
load are skipped, and named in the status message if none loads. The chosen
network must then also be usable (supported cniVersion, every plugin binary
present in bin_dir), or the network is not ready: a missing plugin never
silently moves pods onto a later, different network.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyctr.daemon.errors import FailedPrecondition

log = logging.getLogger("pyctr.daemon.pods.cni")  # the CNI log lines keep one logger

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
CONFIG_SUFFIXES = (".conflist", ".conf", ".json")
MAX_CONFIG_BYTES = 1 << 20

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
PLUGIN_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


class NetworkNotReady(FailedPrecondition):
    """No usable CNI network: setup cannot run."""


@dataclass(frozen=True)
class Network:
    """A loaded network config, always in conflist form."""

    path: str
    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    disable_check: bool
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_conflist(cls, raw: dict[str, Any], path: str) -> Network:
        return cls(
            path=path,
            name=str(raw.get("name", "")),
            cni_version=str(raw.get("cniVersion", "")),
            plugins=tuple(raw["plugins"]),
            disable_check=raw.get("disableCheck") is True,
            raw=raw,
        )


def version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        return (0,)


def load_network_file(path: Path) -> Network:
    """Parse one config file into a Network; ValueError says why it cannot."""
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError("larger than 1 MiB")
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    if not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ValueError('no "name"')
    if "plugins" in raw:
        plugins = raw["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise ValueError('"plugins" is not a non-empty list')
        if not all(isinstance(p, dict) for p in plugins):
            raise ValueError('"plugins" holds something other than objects')
        return Network.from_conflist(raw, str(path))
    if "type" in raw:  # a single-plugin .conf: the list is just that plugin
        wrapped = {"cniVersion": raw.get("cniVersion", ""), "name": raw["name"], "plugins": [raw]}
        return Network.from_conflist(wrapped, str(path))
    raise ValueError('neither "plugins" nor "type"')


def find_plugin(plugin_type: str, bin_dirs: Sequence[str]) -> str | None:
    for d in bin_dirs:
        candidate = os.path.join(d, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def network_problem(net: Network, bin_dirs: Sequence[str]) -> str | None:
    """Why a loaded network cannot be used, or None if it can."""
    where = f"CNI network {net.name!r} ({net.path})"
    if not NAME_RE.match(net.name):
        return f"{where}: invalid network name"
    if net.cni_version not in SUPPORTED_VERSIONS:
        return (
            f"{where}: cniVersion {net.cni_version!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_VERSIONS)})"
        )
    missing = []
    for i, plugin in enumerate(net.plugins):
        ptype = plugin.get("type")
        if not isinstance(ptype, str) or not PLUGIN_RE.match(ptype):
            return f"{where}: plugin {i} has no valid type ({ptype!r})"
        if find_plugin(ptype, bin_dirs) is None:
            missing.append(ptype)
    if missing:
        return f"{where}: CNI plugin binary {', '.join(missing)} not found in {':'.join(bin_dirs)}"
    return None


class NetworkConfig:
    """The network chosen from `conf_dir`, cached until the files change."""

    def __init__(self, conf_dir: str, bin_dirs: Sequence[str]) -> None:
        self.conf_dir = conf_dir
        self.bin_dirs = list(bin_dirs)
        self._status_key: tuple[Any, ...] | None = None
        self._status: tuple[Network | None, str] = (None, "")
        self._plugin_types: tuple[str, ...] = ()

    def _stat_key(self) -> tuple[Any, ...]:
        """What the status depends on: the dirs' mtimes and each config file's
        identity, so edits in place and new plugin binaries are both seen."""
        parts: list[Any] = []
        for d in [self.conf_dir, *self.bin_dirs]:
            try:
                parts.append(os.stat(d).st_mtime_ns)
            except OSError:
                parts.append(None)
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(self.conf_dir)):
                if name.endswith(CONFIG_SUFFIXES):
                    with contextlib.suppress(OSError):
                        st = os.stat(os.path.join(self.conf_dir, name))
                        parts.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
        # The chosen network's plugin binaries: a chmod or an in-place upgrade
        # does not change their dir's mtime.
        for ptype in self._plugin_types:
            for d in self.bin_dirs:
                try:
                    st = os.stat(os.path.join(d, ptype))
                    parts.append((d, ptype, st.st_mode, st.st_mtime_ns, st.st_ino))
                except OSError:
                    parts.append((d, ptype, None))
        return tuple(parts)

    def _load(self) -> tuple[Network | None, str]:
        self._plugin_types = ()
        try:
            names = sorted(os.listdir(self.conf_dir))
        except OSError as e:
            return None, f"cannot read CNI config dir {self.conf_dir}: {e.strerror}"
        skipped: list[str] = []
        for name in names:
            if not name.endswith(CONFIG_SUFFIXES):
                continue
            path = Path(self.conf_dir) / name
            try:
                net = load_network_file(path)
            except (OSError, ValueError) as e:
                skipped.append(f"{name}: {e}")
                continue
            self._plugin_types = tuple(
                p["type"] for p in net.plugins if isinstance(p.get("type"), str)
            )
            problem = network_problem(net, self.bin_dirs)
            if problem:
                return None, problem
            return net, f"CNI network {net.name!r} ({path}) is ready"
        if skipped:
            return None, f"no valid CNI network config in {self.conf_dir}: " + "; ".join(skipped)
        return None, f"no CNI network config found in {self.conf_dir}"

    def _current(self) -> tuple[Network | None, str]:
        key = self._stat_key()
        if key != self._status_key:
            # The key was taken before loading, so a change made while loading
            # is seen next time (and so is a new plugin list: one extra load).
            self._status = self._load()
            self._status_key = key
            if self._status[0] is None:
                log.warning("CNI network not ready: %s", self._status[1])
        return self._status

    def status(self) -> tuple[bool, str]:
        """(ready, message): cheap, the config is re-read only when it changed."""
        net, message = self._current()
        return net is not None, message

    def network(self) -> Network:
        """The usable network, or NetworkNotReady saying why there is none."""
        net, message = self._current()
        if net is None:
            raise NetworkNotReady(f"network not ready: {message}")
        return net
