"""NRI container adjustments applied to an OCI spec, with one owner per field.

Plugins are consulted in index order and each sees the container as the ones
before it left it. Every field a plugin sets (or removes) becomes that
plugin's: a second plugin touching the same annotation, mount destination,
env variable, device, rlimit or resource is refused, naming both, as NRI
does, rather than letting the last one silently win.

A key with a leading "-" (annotations, mount destinations, env names, device
paths, namespace types, sysctls) asks for removal. Adjustments with no place
in the spec pyctr runs (CDI devices, block I/O and RDT classes, I/O priority,
scheduler, net devices, memory policy, seccomp policy, cgroups path) are
refused by name, never dropped quietly.
"""

from __future__ import annotations

from typing import Any

from pyctr.daemon.errors import FailedPrecondition, InvalidArgument
from pyctr.daemon.nri import convert
from pyctr.proto import nri_pb2 as nri

# NRI's Field enum (pkg/api/api.proto): the numbers validators see ownership by.
FIELDS = {
    "annotation": 1, "mount": 2, "hooks": 3, "device": 4, "env": 6, "args": 7,
    "resources memory.limit": 8, "resources memory.reservation": 9, "resources memory.swap": 10,
    "resources memory.kernel": 11, "resources memory.kernelTCP": 12,
    "resources memory.swappiness": 13, "resources memory.disableOOMKiller": 14,
    "resources memory.useHierarchy": 15, "resources cpu.shares": 16, "resources cpu.quota": 17,
    "resources cpu.period": 18, "resources cpu.realtimeRuntime": 19,
    "resources cpu.realtimePeriod": 20, "resources cpu.cpus": 21, "resources cpu.mems": 22,
    "resources pids.limit": 23, "resources hugepageLimits": 24, "resources unified": 27,
    "oom_score_adj": 29, "rlimit": 30, "namespace": 33, "sysctl": 34,
}  # fmt: skip


class Owners:
    """Which plugin set which field (and which entry of a map or list field)."""

    def __init__(self) -> None:
        self._owner: dict[tuple[str, str | None], str] = {}

    def claim(self, field: str, key: str | None, plugin: str) -> None:
        other = self._owner.setdefault((field, key), plugin)
        if other != plugin:
            what = f"{field} {key}" if key is not None else field
            raise FailedPrecondition(f"NRI plugins {other} and {plugin} both adjust {what}")

    def note(self, field: str, plugin: str) -> None:
        """A field plugins add to together (hooks): the last one is named."""
        self._owner[(field, None)] = plugin

    def to_proto(self, cid: str) -> nri.OwningPlugins:
        out = nri.OwningPlugins()
        owners = out.owners[cid]
        for (field, key), plugin in self._owner.items():
            number = FIELDS[field]
            if key is None:
                owners.simple[number] = plugin
            else:
                owners.compound[number].owners[key] = plugin
        return out


def _removal(key: str) -> tuple[str, bool]:
    return (key[1:], True) if key.startswith("-") else (key, False)


def apply(spec: dict[str, Any], adj: nri.ContainerAdjustment, plugin: str, owners: Owners) -> None:
    """Apply one plugin's adjustment to `spec` in place."""
    _refuse_unsupported(adj, plugin)
    process = spec.setdefault("process", {})
    linux = spec.setdefault("linux", {})
    _adjust_map(spec, "annotations", adj.annotations, "annotation", plugin, owners)
    for m in adj.mounts:
        dest, remove = _removal(m.destination)
        if not dest.startswith("/"):
            raise InvalidArgument(
                f"NRI plugin {plugin}: mount destination {dest!r} is not absolute"
            )
        owners.claim("mount", dest, plugin)
        mounts = [x for x in spec.get("mounts") or [] if x.get("destination") != dest]
        if not remove:
            mounts.append(
                {"destination": dest, "type": m.type or "bind", "source": m.source,
                 "options": list(m.options)}
            )  # fmt: skip
        spec["mounts"] = mounts
    for kv in adj.env:
        name, remove = _removal(kv.key)
        owners.claim("env", name, plugin)
        env = [e for e in process.get("env") or [] if e.split("=", 1)[0] != name]
        if not remove:
            env.append(f"{name}={kv.value}")
        process["env"] = env
    if adj.HasField("hooks"):
        hooks = spec.setdefault("hooks", {})
        for field, kind in convert.HOOK_KINDS.items():
            for h in getattr(adj.hooks, field):
                hook: dict[str, Any] = {"path": h.path, "args": list(h.args), "env": list(h.env)}
                if h.HasField("timeout"):
                    hook["timeout"] = h.timeout.value
                hooks.setdefault(kind, []).append(hook)  # hooks add up: no conflict
                owners.note("hooks", plugin)
    for r in adj.rlimits:
        owners.claim("rlimit", r.type, plugin)
        rlimits = [x for x in process.get("rlimits") or [] if x.get("type") != r.type]
        rlimits.append({"type": r.type, "hard": r.hard, "soft": r.soft})
        process["rlimits"] = rlimits
    if adj.args:
        owners.claim("args", None, plugin)
        process["args"] = list(adj.args)
    if adj.HasField("linux"):
        _apply_linux(linux, process, adj.linux, plugin, owners)


def _apply_linux(
    linux: dict[str, Any],
    process: dict[str, Any],
    adj: nri.LinuxContainerAdjustment,
    plugin: str,
    owners: Owners,
) -> None:
    resources = linux.setdefault("resources", {})
    for d in adj.devices:
        path, remove = _removal(d.path)
        owners.claim("device", path, plugin)
        devices = [x for x in linux.get("devices") or [] if x.get("path") != path]
        if not remove:
            if d.type not in ("c", "b", "u", "p"):
                raise InvalidArgument(f"NRI plugin {plugin}: device {path} has type {d.type!r}")
            dev: dict[str, Any] = {"path": path, "type": d.type, "major": d.major, "minor": d.minor}
            if d.HasField("file_mode"):
                dev["fileMode"] = d.file_mode.value
            if d.HasField("uid"):
                dev["uid"] = d.uid.value
            if d.HasField("gid"):
                dev["gid"] = d.gid.value
            devices.append(dev)
            # The device cgroup must let the container use it, as for CRI devices.
            resources.setdefault("devices", []).append(
                {"allow": True, "type": "b" if d.type == "b" else "c",
                 "major": d.major, "minor": d.minor, "access": "rwm"}
            )  # fmt: skip
        linux["devices"] = devices
    if adj.HasField("resources"):
        change = convert.oci_resources(adj.resources)
        for key, value in change.items():
            if key == "unified":
                for name in value:
                    owners.claim("resources unified", name, plugin)
            elif key == "hugepageLimits":
                for h in value:
                    owners.claim("resources hugepageLimits", h["pageSize"], plugin)
            else:
                for sub in value:
                    owners.claim(f"resources {key}.{sub}", None, plugin)
        linux["resources"] = convert.merge_resources(resources, change)
    if adj.HasField("oom_score_adj"):
        owners.claim("oom_score_adj", None, plugin)
        process["oomScoreAdj"] = adj.oom_score_adj.value
    for ns in adj.namespaces:
        kind, remove = _removal(ns.type)
        owners.claim("namespace", kind, plugin)
        namespaces = [x for x in linux.get("namespaces") or [] if x.get("type") != kind]
        if not remove:
            namespaces.append({"type": kind, **({"path": ns.path} if ns.path else {})})
        linux["namespaces"] = namespaces
    _adjust_map(linux, "sysctl", adj.sysctl, "sysctl", plugin, owners)


def _adjust_map(
    parent: dict[str, Any], key: str, changes: Any, what: str, plugin: str, owners: Owners
) -> None:
    """Set or ("-name") remove entries of the map parent[key]."""
    for name, value in changes.items():
        name, remove = _removal(name)
        owners.claim(what, name, plugin)
        target = parent.setdefault(key, {})
        if remove:
            target.pop(name, None)
        else:
            target[name] = value


def _refuse_unsupported(adj: nri.ContainerAdjustment, plugin: str) -> None:
    unsupported = []
    if adj.CDI_devices:
        unsupported.append("CDI devices")
    if adj.HasField("linux"):
        linux = adj.linux
        for field in ("io_priority", "seccomp_policy", "scheduler", "rdt", "memory_policy"):
            if linux.HasField(field):  # type: ignore[arg-type]
                unsupported.append(field)
        if linux.net_devices:
            unsupported.append("net_devices")
        if linux.cgroups_path:
            unsupported.append("cgroups_path")
        if linux.HasField("resources"):
            unsupported.extend(resource_classes(linux.resources))
    if unsupported:
        raise FailedPrecondition(
            f"NRI plugin {plugin} asks for {', '.join(unsupported)}, which pyctr does not support"
        )


def resource_classes(r: nri.LinuxResources) -> list[str]:
    """The parts of NRI resources OCI has no place for (refused by callers)."""
    return [f for f in ("blockio_class", "rdt_class") if r.HasField(f)]  # type: ignore[arg-type]
