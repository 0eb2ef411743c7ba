"""Pod sandboxes: the namespaces, network and files a pod's containers share.

    sandboxes = SandboxManager(ctx)            # after ctx.runtime exists
    await sandboxes.recover()                  # at start, after runtime.recover()
    sb = await sandboxes.run(config, "")       # RunPodSandbox
    c = await sandboxes.create_container(sb.id, container_config)
    await sandboxes.start_container(c.id)
    await sandboxes.stop(sb.id); await sandboxes.remove(sb.id)

A sandbox is a record of kind "sandbox" in the container store whose process
is the pause container, run through the runtime manager like any other
(its own shim, cgroup `<cgroup_parent>/<id>`). Around it the manager keeps:

- the network namespace, pinned at `<state>/netns/<id>` and handed to the CNI
  plugins (ADD on run, DEL on stop, DEL on any failure of run);
- the pod's files under `<state>/pods/<id>`: hostname, hosts, resolv.conf and
  shm/ (a 64 MiB tmpfs, the pod's /dev/shm), bind-mounted into containers.

Stop kills every container and the pause process, tears the network down,
removes the namespace and unmounts shm; it is idempotent, and so is remove.
A pod is READY while its pause process runs and it has not been stopped.

Names are reserved from the first moment of a create, so a second
RunPodSandbox or CreateContainer with the same metadata gets ALREADY_EXISTS
naming the first one's ID (the kubelet relies on this). Lifecycle calls on
one pod, and on its containers' create and start, are serialised by a
per-pod lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from pyctr.daemon.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pyctr.daemon.images.reference import parse
from pyctr.daemon.images.store import Image
from pyctr.daemon.images.volumes import resolve_in_image
from pyctr.daemon.pods import netns
from pyctr.daemon.pods.cni import CniManager, PodNetwork, PortMapping
from pyctr.daemon.pods.files import HOSTNAME_RE, PodFiles, resolv_conf
from pyctr.daemon.runtime.records import (
    ContainerMetadata,
    CriContainer,
    ImageSpec,
    Namespaces,
    PodMetadata,
    R,
    Sandbox,
    StatusMount,
    UserNamespace,
)
from pyctr.daemon.runtime.states import PodState
from pyctr.daemon.runtime.store import ID_RE, new_id
from pyctr.daemon.spec.cri import (
    NODE,
    POD,
    TARGET,
    ContainerPlan,
    PodView,
    container_options,
    host_mount,
    image_mount,
    request_devices,
    sandbox_options,
    user_namespace,
)
from pyctr.proto import cri_pb2 as cri

if TYPE_CHECKING:
    from pyctr.daemon.context import Context

log = logging.getLogger("pyctr.sandbox")

_META_RE = re.compile(r"^[^\x00-\x1f/]{1,253}$")


def sandbox_name(md: cri.PodSandboxMetadata) -> str:
    return f"{md.name}_{md.namespace}_{md.uid}_{md.attempt}"


def container_name(md: cri.ContainerMetadata, pod: PodMetadata) -> str:
    return f"{md.name}_{pod.name}_{pod.namespace}_{pod.uid}_{md.attempt}"


def _check_meta(value: str, what: str, required: bool = True) -> str:
    if (value or required) and not _META_RE.match(value):
        raise InvalidArgument(f"{what} {value[:80]!r} is empty, too long or has bad characters")
    return value


def is_ready(sb: Sandbox) -> bool:
    return sb.ready


async def _settled(task: asyncio.Task[Any]) -> None:
    """Wait for task to finish, whatever its outcome (it is reported elsewhere)."""
    with contextlib.suppress(BaseException):
        await task


def container_log_path(log_directory: str, log_path: str) -> str:
    """The container's log file: CRI's log_path, relative to the pod's log dir."""
    if not log_directory or not log_path:
        return ""
    parts = log_path.split("/")
    if os.path.isabs(log_path) or ".." in parts or "\0" in log_path:
        raise InvalidArgument(f"log_path {log_path[:200]!r} must stay inside the log directory")
    return os.path.join(log_directory, log_path)


def status_image_name(image: Any, spec: cri.ImageSpec) -> str:
    """The name ContainerStatus reports for the image (the kubelet shows it as
    the pod's containerStatuses[].image): a tag of the image, as containerd
    gives, preferring the one the pod spec named; "" if it has none. The
    kubelet creates containers from the image ID, which says little to a user."""
    tags: list[str] = image.repo_tags
    with contextlib.suppress(InvalidArgument):
        wanted = parse(spec.user_specified_image or spec.image).tagged_name
        if wanted in tags:
            return wanted
    return tags[0] if tags else ""


class SandboxManager:
    def __init__(self, ctx: Context) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self.runtime = ctx.runtime
        self.cni = CniManager(cfg.cri.cni.conf_dir, cfg.cri.cni.bin_dir, cfg.root_dir / "cni")
        self.files = PodFiles(cfg.state_dir / "pods")
        self.netns_dir = cfg.state_dir / "netns"
        self.userns_dir = cfg.state_dir / "userns"  # pods with their own user namespace
        self.cgroups = ctx.cgroups
        self.restrict_oom = cfg.cri.restrict_oom_score_adj
        self.pod_cidr = ""  # from UpdateRuntimeConfig; informational
        self._reserved: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.creating: set[str] = set()  # pods in RunPodSandbox: not listed yet

    @property
    def store(self) -> Any:
        return self.runtime.store

    # -- lookups ----------------------------------------------------------------

    def _resolve(self, ref: str, cls: type[R]) -> R:
        """By full ID or an ID prefix unique among records of type `cls` (as
        crictl users type them); NotFound otherwise, InvalidArgument if ambiguous."""
        what = "pod sandbox" if cls is Sandbox else "container"
        if not ID_RE.match(ref or ""):
            raise NotFound(f"{what} {ref[:80]!r} not found")
        if len(ref) == 64:
            with contextlib.suppress(NotFound):
                c = self.store.get(ref)
                if isinstance(c, cls):
                    return c
            raise NotFound(f"{what} {ref} not found")
        found = [c for c in self.store.list_of(cls) if c.id.startswith(ref)]
        if len(found) > 1:
            raise InvalidArgument(f"{what} ID prefix {ref!r} is ambiguous")
        if not found:
            raise NotFound(f"{what} {ref!r} not found")
        return found[0]

    def get(self, ref: str) -> Sandbox:
        """A sandbox by ID or unique ID prefix; NotFound otherwise."""
        return self._resolve(ref, Sandbox)

    def get_container(self, ref: str) -> CriContainer:
        """A CRI container (one that belongs to a pod) by ID or unique prefix."""
        return self._resolve(ref, CriContainer)

    def pod_dir(self, sid: str) -> Path:
        return self.files.path(sid)

    def view(self, sb: Sandbox) -> PodView:
        ns, md = sb.namespaces, sb.metadata
        return PodView(
            id=sb.id,
            pid=sb.pid,
            netns=sb.netns,
            host_network=ns.network == NODE,
            host_pid=ns.pid == NODE,
            host_ipc=ns.ipc == NODE,
            hostname=sb.hostname,
            files=self.pod_dir(sb.id),
            cgroup_parent=sb.cgroup_parent,
            privileged=sb.privileged,
            name=md.name,
            namespace=md.namespace,
            uid=md.uid,
            userns=sb.userns,
            userns_path=str(self.userns_dir / sb.id) if sb.userns else "",
        )

    def _lock(self, sid: str) -> asyncio.Lock:
        return self._locks.setdefault(sid, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def _new_pod_lock(self, sid: str) -> AsyncIterator[None]:
        """The lock of a pod being made; forgotten again if making it fails."""
        async with self._lock(sid):
            try:
                yield
            except BaseException:
                self._locks.pop(sid, None)
                raise

    @contextlib.contextmanager
    def _reservation(self, name: str, cid: str) -> Iterator[None]:
        """Hold `name` for `cid` while it is created; AlreadyExists if taken."""
        holder = self._reserved.get(name)
        if holder is None:
            rows = self.ctx.db.query("SELECT id FROM containers WHERE name = ?", (name,))
            holder = rows[0]["id"] if rows else None
        if holder is not None:
            raise AlreadyExists(f"name {name!r} is reserved for {holder}")
        self._reserved[name] = cid
        try:
            yield
        finally:
            self._reserved.pop(name, None)

    @contextlib.contextmanager
    def _creating(self, sid: str) -> Iterator[None]:
        self.creating.add(sid)
        try:
            yield
        finally:
            self.creating.discard(sid)

    def _new_id(self) -> str:
        cid = new_id()
        while self.runtime.task_dir(cid).exists():  # a 16-hex prefix collision
            cid = new_id()
        return cid

    def _require_ready(self, sb: Sandbox) -> None:
        if not is_ready(sb):
            raise FailedPrecondition(f"pod sandbox {sb.id[:12]} is not ready")
        # The pause PID must still be the pause process: compare the
        # namespaces recorded at start, so a reused PID is never joined.
        for kind, ino in sb.ns_inodes.items():
            try:
                same = os.stat(f"/proc/{sb.pid}/ns/{kind}").st_ino == ino
            except OSError:
                same = False
            if not same:
                raise FailedPrecondition(f"pod sandbox {sb.id[:12]}: its pause process is gone")

    # -- run --------------------------------------------------------------------

    async def run(self, config: cri.PodSandboxConfig, runtime_handler: str = "") -> Sandbox:
        md = config.metadata
        for value, what in ((md.name, "name"), (md.namespace, "namespace"), (md.uid, "uid")):
            _check_meta(value, f"pod sandbox metadata {what}")
        handler = self.ctx.handlers.choose(runtime_handler)
        ns = config.linux.security_context.namespace_options
        if ns.pid == TARGET or ns.ipc == TARGET or ns.network == TARGET:
            raise InvalidArgument("a pod sandbox cannot use namespace mode TARGET")
        userns = pod_user_namespace(ns, "pod sandbox")
        if userns is not None:
            if NODE in (ns.network, ns.pid, ns.ipc):
                raise InvalidArgument(
                    "a pod with its own user namespace cannot share host namespaces"
                )
            if not handler.userns.on:
                raise FailedPrecondition(
                    f"runtime handler {handler.name!r} cannot run pods with their own user"
                    f" namespace: {handler.userns.reason}"
                )
        sc = config.linux.security_context
        apparmor = self.ctx.apparmor.resolve(
            sc.apparmor if sc.HasField("apparmor") else None, "", sc.privileged
        )
        host_network = ns.network == NODE
        hostname = config.hostname or (socket.gethostname() if host_network else md.name[:63])
        if not HOSTNAME_RE.match(hostname):
            raise InvalidArgument(f"invalid hostname {hostname[:80]!r}")
        cgroup_parent = self.cgroups.check_parent(
            config.linux.cgroup_parent or self.cgroups.default_parent
        )
        resolv = resolv_conf(config.dns_config)
        if config.log_directory and not os.path.isabs(config.log_directory):
            raise InvalidArgument(f"log_directory {config.log_directory[:200]!r} is not absolute")
        mappings = [
            PortMapping(
                p.container_port, p.host_port, cri.Protocol.Name(p.protocol).lower(), p.host_ip
            )
            for p in config.port_mappings
        ]
        if not host_network:
            self.cni.network()  # NetworkNotReady before any work is done
        nri = self.ctx.nri
        nri.require_plugins()
        sid = self._new_id()
        with self._reservation(sandbox_name(md), sid), self._creating(sid):
            image = await self._sandbox_image()
            async with (
                nri.sync_blocked(),
                self._new_pod_lock(sid),
                contextlib.AsyncExitStack() as undo,
            ):
                undo.callback(self.files.remove, sid)
                self.files.create(sid, hostname, resolv, host_network=host_network)
                if ns.ipc != NODE:
                    await asyncio.to_thread(self.files.mount_shm, sid)
                netns_path = ""
                network: asyncio.Task[PodNetwork] | None = None
                if not host_network:
                    netns_path = str(self.netns_dir / sid)
                    if userns is None:
                        await asyncio.to_thread(netns.create, netns_path)
                    else:
                        userns_path = self.userns_dir / sid
                        await asyncio.to_thread(
                            netns.pin_pod_namespaces, userns, userns_path, Path(netns_path)
                        )
                        undo.callback(netns.remove, userns_path)
                    undo.push_async_callback(self._release_network, sid, netns_path)
                    # CNI ADD and the pause container only need the netns: the
                    # plugins run while the pause container is made and started.
                    network = asyncio.create_task(
                        self.cni.setup(
                            sid, netns_path, namespace=md.namespace, name=md.name, uid=md.uid,
                            port_mappings=mappings,
                        )
                    )  # fmt: skip
                    # On failure, DEL (above) only once ADD has finished.
                    undo.push_async_callback(_settled, network)
                record = Sandbox(
                    id=sid,
                    name=sandbox_name(md),
                    image=self.ctx.config.cri.sandbox_image,
                    labels=dict(config.labels),
                    annotations=dict(config.annotations),
                    metadata=PodMetadata(
                        name=md.name, uid=md.uid, namespace=md.namespace, attempt=md.attempt
                    ),
                    hostname=hostname,
                    log_directory=config.log_directory,
                    runtime_handler=runtime_handler,
                    runtime=handler.name,
                    namespaces=Namespaces(network=ns.network, pid=ns.pid, ipc=ns.ipc),
                    netns=netns_path,
                    ips=[],  # once CNI ADD is done
                    cgroup_parent=cgroup_parent,
                    own_cgroup_parent=bool(config.linux.cgroup_parent),
                    privileged=config.linux.security_context.privileged,
                    userns=userns,
                    state=PodState.READY,
                    config=json_format.MessageToDict(config),
                )
                view = self.view(record)

                def build(rootfs: Path, image_config: dict[str, Any]) -> Any:
                    return sandbox_options(
                        rootfs, image_config, config, view,
                        cgroups=self.cgroups, restrict_oom=self.restrict_oom, apparmor=apparmor,
                    )  # fmt: skip

                await self.runtime.create(record, build, image_ref=image.id)
                undo.push_async_callback(self._remove_record, sid)

                async def finish(pid: int) -> dict[str, Any]:
                    ips = list((await network).ips) if network is not None else []
                    if ips:
                        self.files.set_pod_ip(sid, ips[0], hostname)
                    inodes = {}
                    for kind in ("ipc", "uts", "pid", "net"):
                        with contextlib.suppress(OSError):
                            inodes[kind] = os.stat(f"/proc/{pid}/ns/{kind}").st_ino
                    return {"ips": ips, "ns_inodes": inodes}

                # Recorded running with its IPs and namespaces in one commit.
                started = await self.runtime.start(sid, finish)
                assert isinstance(started, Sandbox)
                await nri.run_pod(started)  # a plugin's error undoes the pod
                undo.pop_all()
        log.info("pod sandbox %s (%s) ready, ips %s", sid[:12], started.name, started.ips)
        return started

    async def _sandbox_image(self) -> Any:
        images = self.ctx.images
        ref = self.ctx.config.cri.sandbox_image
        image = images.store.find(ref)
        if image is None:
            log.info("pulling sandbox image %s", ref)
            image = await images.pull(ref)
        return image

    async def _release_network(self, sid: str, netns_path: str) -> None:
        await self.cni.teardown(sid, netns_path)
        await asyncio.to_thread(netns.remove, netns_path)

    async def _remove_record(self, sid: str) -> None:
        with contextlib.suppress(NotFound):
            await self.runtime.remove(sid, force=True)

    # -- stop and remove ------------------------------------------------------

    async def stop(self, ref: str) -> Sandbox:
        """Kill the pod's containers and pause process, release its network."""
        sb = self.get(ref)
        async with self._lock(sb.id):
            containers = self.store.list(kind="container", sandbox_id=sb.id)
            results = await asyncio.gather(
                *(self.runtime.stop(c.id, 0) for c in containers if c.status.can_stop),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException) and not isinstance(result, NotFound):
                    raise result
            sb = self.store.get_as(sb.id, Sandbox)
            if sb.status.can_stop:
                await self.runtime.stop(sb.id, 0)
                sb = self.store.get_as(sb.id, Sandbox)
            if sb.netns:
                await self._release_network(sb.id, sb.netns)
            await asyncio.to_thread(self.files.unmount_shm, sb.id)
            if sb.state is not PodState.NOTREADY or sb.ips:
                first = sb.state is not PodState.NOTREADY
                sb = self.store.update(sb.id, state=PodState.NOTREADY, ips=[])
                if first:
                    await self.ctx.nri.stop_pod(sb)
        return sb

    async def remove(self, ref: str) -> None:
        """Stop if needed, then remove the pod's containers and itself. Idempotent."""
        try:
            sb = self.get(ref)
        except NotFound:
            return
        sb = await self.stop(sb.id)
        async with self._lock(sb.id):
            for c in self.store.list_of(CriContainer, sandbox_id=sb.id):
                await self._remove_container(sb, c)
            await self._remove_record(sb.id)
            await asyncio.to_thread(self.files.remove, sb.id)
            await asyncio.to_thread(netns.remove, self.userns_dir / sb.id)
        self._locks.pop(sb.id, None)
        await self.ctx.nri.remove_pod(sb)
        log.info("pod sandbox %s removed", sb.id[:12])

    async def remove_container(self, ref: str) -> None:
        """RemoveContainer: stop if need be, remove; an unknown one is no error."""
        try:
            c = self.get_container(ref)
            sb = self.store.get_as(c.sandbox_id, Sandbox)
        except NotFound:
            with contextlib.suppress(NotFound):  # a container whose pod is gone
                await self.runtime.remove(ref, force=True)
            return
        await self._remove_container(sb, c)

    async def _remove_container(self, sb: Sandbox, c: CriContainer) -> None:
        with contextlib.suppress(NotFound):  # removed meanwhile
            if c.status.can_stop:
                c = self.store.get_as((await self.runtime.stop(c.id, 0)).id, CriContainer)
            await self.runtime.remove(c.id, force=True)
            await self.ctx.nri.remove_container(sb, c)

    # -- containers ---------------------------------------------------------

    async def create_container(self, sandbox_ref: str, config: cri.ContainerConfig) -> CriContainer:
        sb = self.get(sandbox_ref)
        md = config.metadata
        _check_meta(md.name, "container metadata name")
        if not config.image.image:
            raise InvalidArgument("container config has no image")
        self.ctx.nri.require_plugins()
        async with self._lock(sb.id):
            sb = self.store.get_as(sb.id, Sandbox)
            self._require_ready(sb)
            pod = self.view(sb)
            cid = self._new_id()
            name = container_name(md, sb.metadata)
            with self._reservation(name, cid):
                image = self.ctx.images.store.get(config.image.image)
                handler = self.ctx.handlers.of(sb.runtime)
                ns = config.linux.security_context.namespace_options
                if (
                    ns.HasField("userns_options")
                    and pod_user_namespace(ns, "container") != sb.userns
                ):
                    raise InvalidArgument("the container's user namespace is not its pod's")
                volumes = {
                    i: self.ctx.images.store.get(m.image.image)
                    for i, m in enumerate(config.mounts)
                    if m.HasField("image") and m.image.image
                }
                try:
                    return await self._create_container(
                        sb, config, pod, cid, name, image, handler.rro.on, volumes
                    )
                except BaseException:
                    if volumes:  # the views this call mounted, unless others use them
                        await self.runtime.release_image_volumes()
                    raise

    async def _create_container(
        self,
        sb: Sandbox,
        config: cri.ContainerConfig,
        pod: PodView,
        cid: str,
        name: str,
        image: Image,
        rro: bool,
        volumes: dict[int, Image],
    ) -> CriContainer:
        md = config.metadata
        sc = config.linux.security_context
        apparmor = self.ctx.apparmor.resolve(
            sc.apparmor if sc.HasField("apparmor") else None, sc.apparmor_profile, sc.privileged
        )
        plan = await asyncio.to_thread(self._plan, config, rro, volumes, sb.userns)
        pid_mode = config.linux.security_context.namespace_options.pid
        if pid_mode == TARGET:
            plan.target_pid = self._target_pid(sb, config)
        log_path = container_log_path(sb.log_directory, config.log_path)
        stop_signal = int(config.stop_signal)
        record = CriContainer(
            id=cid,
            name=name,
            sandbox_id=sb.id,
            image=config.image.image,
            labels=dict(config.labels),
            annotations=dict(config.annotations),
            metadata=ContainerMetadata(name=md.name, attempt=md.attempt),
            image_spec=ImageSpec(
                image=config.image.image,
                annotations=dict(config.image.annotations),
                user_specified_image=config.image.user_specified_image,
                runtime_handler=config.image.runtime_handler,
            ),
            image_ref=image.repo_digests[0] if image.repo_digests else image.id,
            image_name=status_image_name(image, config.image),
            log_path=log_path,
            tty=config.tty,
            stdin=config.stdin,
            stdin_once=config.stdin_once,
            mounts=[StatusMount(**m) for m in plan.status_mounts],
            stop_signal=stop_signal,
            image_stop_signal="",
            runtime=sb.runtime or "runc",  # "": a pod from before handlers
            userns=sb.userns,
        )
        cgroups, restrict = self.cgroups, self.restrict_oom

        def build(rootfs: Path, image_config: dict[str, Any]) -> Any:
            record.image_stop_signal = str(image_config.get("StopSignal") or "")
            return container_options(
                rootfs, image_config, config, pod, plan,
                cid=cid, cgroups=cgroups, restrict_oom=restrict, apparmor=apparmor,
            )  # fmt: skip

        async def adjust(c: Any) -> None:  # NRI plugins, before the bundle is written
            await self.ctx.nri.create_container(sb, c)

        async with self.ctx.nri.sync_blocked():
            await self.runtime.create(record, build, image_ref=image.id, adjust=adjust)
        await self.ctx.nri.post_create_container(sb, record)
        return record

    def _plan(
        self,
        config: cri.ContainerConfig,
        rro: bool,
        volumes: dict[int, Image],
        userns: UserNamespace | None,
    ) -> ContainerPlan:
        """The container's mounts and devices; `volumes`: the images of its
        image volumes by mount index, mounted here (in a worker thread)."""
        plan = ContainerPlan()
        seen: set[str] = set()
        for i, m in enumerate(config.mounts):
            if i in volumes:
                root = self.ctx.image_volumes.acquire(volumes[i])
                source = resolve_in_image(root, m.image_sub_path)
                mount, status = image_mount(m, source, volumes[i].id)
            else:
                mount, status = host_mount(m, rro, userns)
            if mount.destination in seen:
                raise InvalidArgument(f"two mounts at {mount.destination}")
            seen.add(mount.destination)
            plan.mounts.append(mount)
            plan.status_mounts.append(status)
        plan.devices, plan.device_rules = request_devices(list(config.devices))
        return plan

    def _target_pid(self, sb: Sandbox, config: cri.ContainerConfig) -> int:
        target_id = config.linux.security_context.namespace_options.target_id
        try:
            target = self.get_container(target_id)
        except NotFound:
            raise NotFound(f"target container {target_id!r} not found") from None
        if target.sandbox_id != sb.id:
            raise InvalidArgument(f"target container {target_id!r} is in another pod")
        if not target.status.is_running:
            raise FailedPrecondition(f"target container {target_id[:12]} is not running")
        return target.pid

    async def start_container(self, ref: str) -> CriContainer:
        c = self.get_container(ref)
        async with self._lock(c.sandbox_id):
            try:
                sb = self.store.get_as(c.sandbox_id, Sandbox)
            except NotFound:
                raise FailedPrecondition(f"the pod of container {c.id[:12]} is gone") from None
            self._require_ready(sb)
            await self.ctx.nri.start_container(sb, c)
            started = await self.runtime.start(c.id)
            assert isinstance(started, CriContainer)
        await self.ctx.nri.post_start_container(sb, started)
        return started

    # -- restart ------------------------------------------------------------

    async def recover(self) -> None:
        """Release what pods that no record owns left: network, netns, files;
        give a ready pod whose run was interrupted after CNI ADD its IPs."""
        sandboxes = self.store.list_of(Sandbox)
        known = {sb.id for sb in sandboxes}
        for sb in sandboxes:
            # ADD runs alongside the pause container and its IPs are recorded
            # with the start: a crash in between leaves them in the CNI cache.
            if sb.ready and sb.netns and not sb.ips:
                net = self.cni.pod_network(sb.id)
                if net is not None and net.ips:
                    self.store.update(sb.id, ips=list(net.ips))
        for pod_id in self.cni.cached_pods():
            if pod_id not in known:
                log.warning("releasing the network of unknown pod %s", pod_id[:12])
                with contextlib.suppress(Exception):
                    await self.cni.teardown(pod_id, str(self.netns_dir / pod_id))
        leftovers = (
            (self.netns_dir, netns.remove),
            (self.userns_dir, netns.remove),
            (self.files.pods_dir, None),
        )
        for directory, cleanup in leftovers:
            if not directory.is_dir():
                continue
            for entry in directory.iterdir():
                if entry.name in known:
                    continue
                log.warning("removing %s of an unknown pod", entry)
                try:
                    if cleanup is not None:
                        await asyncio.to_thread(cleanup, entry)
                    else:
                        await asyncio.to_thread(self.files.remove, entry.name)
                except Exception:
                    log.exception("cleaning up %s", entry)


def pod_user_namespace(ns: cri.NamespaceOption, what: str) -> UserNamespace | None:
    """The user namespace a NamespaceOption asks for: None for the host's
    (NODE, or unset); mode POD with the pod's ranges; others refused."""
    if not ns.HasField("userns_options") or ns.userns_options.mode == NODE:
        return None
    opts = ns.userns_options
    if opts.mode == POD and not opts.uids and not opts.gids:
        return None  # POD is the enum's zero: an empty option says nothing
    if opts.mode != POD:
        mode = cri.NamespaceMode.Name(opts.mode)
        raise InvalidArgument(f"{what}: user namespace mode {mode} is not supported (POD or NODE)")
    return user_namespace(opts.uids, opts.gids, f"{what} user namespace")
