"""pyctr's records and OCI specs as NRI sees them, and NRI resources as OCI's.

A plugin is shown a container as its OCI spec says it will run (args, env,
mounts, hooks, devices, resources), the way containerd builds its NRI view
from the spec; a pod as its record and its pause container's spec.
"""

from __future__ import annotations

from typing import Any

from pyctr.daemon.runtime.records import Container, CriContainer, Sandbox
from pyctr.daemon.runtime.states import Status
from pyctr.proto import nri_pb2 as nri

_STATES = {
    Status.CREATED: nri.CONTAINER_CREATED,
    Status.RUNNING: nri.CONTAINER_RUNNING,
    Status.EXITED: nri.CONTAINER_STOPPED,
}
# OCI hook lists by their NRI Hooks field.
HOOK_KINDS = {
    "prestart": "prestart",
    "create_runtime": "createRuntime",
    "create_container": "createContainer",
    "start_container": "startContainer",
    "poststart": "poststart",
    "poststop": "poststop",
}


def pod(sb: Sandbox) -> nri.PodSandbox:
    linux = sb.spec.get("linux") or {}
    config_linux = (sb.config.get("linux") or {}) if sb.config else {}
    msg = nri.PodSandbox(
        id=sb.id,
        name=sb.metadata.name,
        uid=sb.metadata.uid,
        namespace=sb.metadata.namespace,
        labels=sb.labels,
        annotations=sb.annotations,
        runtime_handler=sb.runtime_handler,
        pid=sb.pid if sb.status is Status.RUNNING else 0,
        ips=sb.ips,
    )
    msg.linux.cgroup_parent = sb.cgroup_parent
    msg.linux.cgroups_path = str(linux.get("cgroupsPath") or "")
    for ns in linux.get("namespaces") or []:
        msg.linux.namespaces.add(type=ns.get("type", ""), path=ns.get("path", ""))
    if linux.get("resources"):
        msg.linux.resources.CopyFrom(resources(linux["resources"]))
    for key, field in (("overhead", "pod_overhead"), ("resources", "pod_resources")):
        if config_linux.get(key):
            getattr(msg.linux, field).CopyFrom(_cri_json_resources(config_linux[key]))
    return msg


def container(c: Container) -> nri.Container:
    spec = c.spec
    process = spec.get("process") or {}
    linux = spec.get("linux") or {}
    name = c.metadata.name if isinstance(c, CriContainer) else c.name
    msg = nri.Container(
        id=c.id,
        pod_sandbox_id=c.sandbox_id,
        name=name,
        state=_STATES.get(c.status, nri.CONTAINER_UNKNOWN),
        labels=c.labels,
        annotations=spec.get("annotations") or {},
        args=process.get("args") or [],
        env=process.get("env") or [],
        pid=c.pid if c.status is Status.RUNNING else 0,
        created_at=c.created_at,
        started_at=c.started_at,
        finished_at=c.finished_at,
        exit_code=c.exit_code,
        status_reason=c.reason,
        status_message=c.message,
    )
    for m in spec.get("mounts") or []:
        msg.mounts.add(
            destination=m.get("destination", ""),
            type=m.get("type", ""),
            source=m.get("source", ""),
            options=m.get("options") or [],
        )
    hooks = spec.get("hooks") or {}
    for field, kind in HOOK_KINDS.items():
        for h in hooks.get(kind) or []:
            hook = getattr(msg.hooks, field).add(
                path=h.get("path", ""), args=h.get("args") or [], env=h.get("env") or []
            )
            if "timeout" in h:
                hook.timeout.value = int(h["timeout"])
    for r in process.get("rlimits") or []:
        msg.rlimits.add(type=r.get("type", ""), hard=int(r["hard"]), soft=int(r["soft"]))
    user = process.get("user") or {}
    msg.user.uid = int(user.get("uid", 0))
    msg.user.gid = int(user.get("gid", 0))
    msg.user.additional_gids.extend(int(g) for g in user.get("additionalGids") or [])
    for ns in linux.get("namespaces") or []:
        msg.linux.namespaces.add(type=ns.get("type", ""), path=ns.get("path", ""))
    for d in linux.get("devices") or []:
        dev = msg.linux.devices.add(
            path=d.get("path", ""), type=d.get("type", ""),
            major=int(d.get("major", 0)), minor=int(d.get("minor", 0)),
        )  # fmt: skip
        if "fileMode" in d:
            dev.file_mode.value = int(d["fileMode"])
        if "uid" in d:
            dev.uid.value = int(d["uid"])
        if "gid" in d:
            dev.gid.value = int(d["gid"])
    if linux.get("resources"):
        msg.linux.resources.CopyFrom(resources(linux["resources"]))
    if "oomScoreAdj" in process:
        msg.linux.oom_score_adj.value = int(process["oomScoreAdj"])
    msg.linux.cgroups_path = str(linux.get("cgroupsPath") or "")
    msg.linux.sysctl.update(linux.get("sysctl") or {})
    return msg


def resources(res: dict[str, Any]) -> nri.LinuxResources:
    """OCI linux.resources -> NRI LinuxResources (what is set, set)."""
    out = nri.LinuxResources()
    memory = res.get("memory") or {}
    for key, field in _MEMORY.items():
        if memory.get(key) is not None:
            getattr(out.memory, field).value = memory[key]
    cpu = res.get("cpu") or {}
    for key, field in _CPU.items():
        if cpu.get(key) is not None:
            getattr(out.cpu, field).value = cpu[key]
    out.cpu.cpus = str(cpu.get("cpus") or "")
    out.cpu.mems = str(cpu.get("mems") or "")
    for h in res.get("hugepageLimits") or []:
        out.hugepage_limits.add(page_size=h["pageSize"], limit=int(h["limit"]))
    out.unified.update(res.get("unified") or {})
    for d in res.get("devices") or []:
        rule = out.devices.add(
            allow=bool(d.get("allow")), type=d.get("type", ""), access=d.get("access", "")
        )
        if d.get("major") is not None:
            rule.major.value = int(d["major"])
        if d.get("minor") is not None:
            rule.minor.value = int(d["minor"])
    if (res.get("pids") or {}).get("limit") is not None:
        out.pids.limit = int(res["pids"]["limit"])
    return out


# OCI key -> NRI field, for the optional scalars of memory and cpu.
_MEMORY = {
    "limit": "limit", "reservation": "reservation", "swap": "swap", "kernel": "kernel",
    "kernelTCP": "kernel_tcp", "swappiness": "swappiness",
    "disableOOMKiller": "disable_oom_killer", "useHierarchy": "use_hierarchy",
}  # fmt: skip
_CPU = {
    "shares": "shares", "quota": "quota", "period": "period",
    "realtimeRuntime": "realtime_runtime", "realtimePeriod": "realtime_period",
}  # fmt: skip


def oci_resources(r: nri.LinuxResources) -> dict[str, Any]:
    """NRI LinuxResources -> the OCI linux.resources keys it sets (a partial
    dict, merged over what the container has). Fields NRI can set that OCI
    has no place for (classes) are the caller's to refuse."""
    out: dict[str, Any] = {}
    memory = {
        key: getattr(r.memory, field).value
        for key, field in _MEMORY.items()
        if r.HasField("memory") and r.memory.HasField(field)  # type: ignore[arg-type]
    }
    if memory:
        out["memory"] = memory
    cpu: dict[str, Any] = {
        key: getattr(r.cpu, field).value
        for key, field in _CPU.items()
        if r.HasField("cpu") and r.cpu.HasField(field)  # type: ignore[arg-type]
    }
    if r.cpu.cpus:
        cpu["cpus"] = r.cpu.cpus
    if r.cpu.mems:
        cpu["mems"] = r.cpu.mems
    if cpu:
        out["cpu"] = cpu
    if r.hugepage_limits:
        out["hugepageLimits"] = [
            {"pageSize": h.page_size, "limit": h.limit} for h in r.hugepage_limits
        ]
    if r.unified:
        out["unified"] = dict(r.unified)
    if r.HasField("pids"):
        out["pids"] = {"limit": r.pids.limit}
    return out


def merge_resources(current: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """`current` with `change`'s keys over it, one level into memory/cpu/unified."""
    merged = dict(current)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _cri_json_resources(res: dict[str, Any]) -> nri.LinuxResources:
    """A PodSandboxConfig's overhead/resources (CRI JSON) as NRI resources."""
    out = nri.LinuxResources()
    if "cpuShares" in res:
        out.cpu.shares.value = int(res["cpuShares"])
    if "cpuQuota" in res:
        out.cpu.quota.value = int(res["cpuQuota"])
    if "cpuPeriod" in res:
        out.cpu.period.value = int(res["cpuPeriod"])
    if "memoryLimitInBytes" in res:
        out.memory.limit.value = int(res["memoryLimitInBytes"])
    out.cpu.cpus = str(res.get("cpusetCpus") or "")
    out.cpu.mems = str(res.get("cpusetMems") or "")
    return out
