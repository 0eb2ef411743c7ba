"""Changing a CRI container's resources: UpdateContainerResources and NRI.

The kubelet's UpdateContainerResources names the container's whole set of
CPU, memory, hugepage and unified limits (`replace`); an NRI plugin's update
names only what it changes, merged over the rest. A running container gets
the change in its live cgroup (through its shim); one not started yet gets
it in the bundle runc will create it from. Either way the record's spec
follows, so ContainerStatus reports what applies.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from pyctr.daemon.nri import convert
from pyctr.daemon.runtime.records import CriContainer, Sandbox
from pyctr.daemon.runtime.states import Op, require
from pyctr.daemon.spec.cri import oci_resources
from pyctr.daemon.spec.oci import write_bundle_config
from pyctr.proto import cri_pb2 as cri

if TYPE_CHECKING:
    from pyctr.daemon.context import Context

# The keys an UpdateContainerResources request owns in linux.resources.
CRI_KEYS = ("cpu", "memory", "hugepageLimits", "unified")


async def update_container_resources(
    ctx: Context, ref: str, linux: cri.LinuxContainerResources
) -> None:
    """UpdateContainerResources: the plugins see (and may change) it first."""
    c = ctx.sandboxes.get_container(ref)
    new = oci_resources(linux, ctx.cgroups.v2)
    sb = ctx.runtime.store.get_as(c.sandbox_id, Sandbox)
    new = await ctx.nri.update_container(sb, c, new)
    c = await apply_resources(ctx, c.id, new, replace=True)
    await ctx.nri.post_update_container(sb, c)


async def apply_resources(
    ctx: Context, cid: str, change: dict[str, Any], replace: bool
) -> CriContainer:
    runtime = ctx.runtime
    async with runtime.lock(cid):
        c = runtime.store.get_as(cid, CriContainer)
        spec = copy.deepcopy(c.spec)
        resources = spec.setdefault("linux", {}).setdefault("resources", {})
        if replace:
            for key in CRI_KEYS:
                resources.pop(key, None)
            resources.update(change)
        else:
            resources = convert.merge_resources(resources, change)
            spec["linux"]["resources"] = resources
        require(c.status, Op.UPDATE_RESOURCES, c.id)
        if c.status.can_signal:  # running: the live cgroup
            await runtime.shim(c.id).update(change if replace else resources)
        else:  # not started: the bundle runc will create it from
            write_bundle_config(runtime.task_dir(c.id), spec)
        runtime.store.update(c.id, spec=spec)
        return runtime.store.get_as(c.id, CriContainer)
