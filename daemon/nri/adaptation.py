"""NRI, the runtime side: plugins are called at every pod and container event.

    nri = Nri(ctx); await nri.start()     # socket up, pre-installed plugins started
    async with nri.sync_blocked():        # around a create, so a plugin being
        await nri.create_container(...)   #   synchronized cannot miss it
    await nri.stop()

One event at a time goes through the plugins, in index order (containerd
serializes them the same way), so each pod's and container's events reach a
plugin in lifecycle order. Blocking events (RunPodSandbox, CreateContainer,
StartContainer, UpdateContainer) fail the CRI call when a plugin answers with
an error; notifications only log it. A plugin that times out or hangs up is
disconnected and the event goes on without it.

A new plugin is configured, then synchronized with every CRI pod and
container: while that runs, creates wait (`sync_blocked`), and the plugin
joins the event list in the same step, so nothing falls between the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyctr.daemon.errors import FailedPrecondition, NotFound, PyctrError, Unavailable
from pyctr.daemon.nri import adjust, convert
from pyctr.daemon.nri.plugin import (
    INDEX_RE,
    NAME_RE,
    RUNTIME_SERVICES,
    VALID_EVENTS,
    Plugin,
    PluginFailed,
    PluginGone,
)
from pyctr.daemon.nri.ttrpc import Connection, TtrpcError
from pyctr.daemon.pods.updates import apply_resources
from pyctr.daemon.runtime.records import Container, CriContainer, Sandbox
from pyctr.daemon.version import VERSION
from pyctr.proto import nri_pb2 as nri

if TYPE_CHECKING:
    from pyctr.daemon.context import Context

log = logging.getLogger("pyctr.nri")

# Pods and containers per Synchronize message, well under ttrpc's 4 MiB.
SYNC_CHUNK_BYTES = 1 << 20
SHUTDOWN_TIMEOUT = 1.0


class Nri:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.config = ctx.config.nri
        self.enabled = self.config.enable
        self.socket_path = Path(self.config.socket_path)
        self.timeout = self.config.plugin_request_timeout
        self.plugins: list[Plugin] = []  # synchronized, in call order
        self._connected: set[Plugin] = set()  # all, from accept to hang-up
        self._events = asyncio.Lock()  # one event through the plugins at a time
        self._gate = asyncio.Condition()
        self._blockers = 0
        self._syncing = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.socket_error = ""  # why the socket is not served, if it is not
        self._stopped: set[str] = set()  # containers whose StopContainer is sent or going
        self._stopping: dict[str, asyncio.Task[None]] = {}  # sent on exit, in the background

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        if not self.enabled:
            return
        if not self.config.disable_connections:
            try:
                await self._listen()
            except Unavailable as e:
                # Another runtime's NRI (containerd on the same node, say): run
                # without the socket, unless plugins are required to run pods.
                if self.config.required_plugins:
                    raise
                self.socket_error = str(e)
                log.error("NRI: %s; external plugins cannot connect", e)
        await self._launch_installed()

    async def _listen(self) -> None:
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise Unavailable(f"NRI socket {path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # a dead runtime's socket
            else:
                raise Unavailable(f"NRI socket {path} is served by another process")
            finally:
                probe.close()
        old = os.umask(0o177)  # plugins run as root: the socket is root's alone
        try:
            self._server = await asyncio.start_unix_server(self._accept, str(path))
        finally:
            os.umask(old)
        log.info("NRI: listening on %s", path)

    async def _launch_installed(self) -> None:
        """Start the plugins in plugin_path (files named <idx>-<name>), in order."""
        directory = Path(self.config.plugin_path)
        if not directory.is_dir():
            return
        for entry in sorted(directory.iterdir()):
            idx, _, name = entry.name.partition("-")
            if not (INDEX_RE.match(idx) and NAME_RE.match(name)):
                log.warning("NRI: ignoring %s (not <two-digit index>-<name>)", entry)
                continue
            if not (entry.is_file() and os.access(entry, os.X_OK)):
                log.warning("NRI: ignoring %s (not an executable file)", entry)
                continue
            try:
                await self._launch(entry, idx, name)
            except Exception as e:
                log.error("NRI: plugin %s did not start: %s", entry.name, e)

    async def _launch(self, path: Path, idx: str, name: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            fd = theirs.fileno()
            if fd == 3:
                os.set_inheritable(fd, True)  # dup2 onto itself keeps close-on-exec
            env = {
                "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "NRI_PLUGIN_NAME": name, "NRI_PLUGIN_IDX": idx, "NRI_PLUGIN_SOCKET": "3",
            }  # fmt: skip
            # The plugin's end of the pair becomes its fd 3, as NRI launches plugins.
            pid = os.posix_spawn(
                str(path), [str(path)], env,
                file_actions=[(os.POSIX_SPAWN_DUP2, fd, 3)], setsid=True,
            )  # fmt: skip
        finally:
            theirs.close()
        plugin = Plugin(external=False, pid=pid)
        plugin.name, plugin.idx = name, idx
        plugin.config = _plugin_config(Path(self.config.plugin_config_path), idx, name)
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        self._admit(plugin, reader, writer)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        for p in list(self.plugins):
            with contextlib.suppress(PyctrError, PluginGone):
                await p.call("Shutdown", nri.Empty(), nri.Empty, SHUTDOWN_TIMEOUT)
        for p in list(self._connected):
            p.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- connections -------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._admit(Plugin(external=True), reader, writer)

    def _admit(
        self, plugin: Plugin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        async def handle(service: str, method: str, payload: bytes) -> bytes:
            return await self._runtime_call(plugin, service, method, payload)

        plugin.conn = Connection(reader, writer, handle)
        plugin.conn.start()
        self._connected.add(plugin)
        task = asyncio.ensure_future(self._serve(plugin))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, plugin: Plugin) -> None:
        """Register, configure and synchronize the plugin; forget it when it hangs up."""
        try:
            await self._setup(plugin)
            await plugin.conn.wait_closed()
        except asyncio.CancelledError:
            raise
        except (PluginGone, PyctrError, TimeoutError, ConnectionError) as e:
            log.error("NRI plugin %s: %s", plugin.full_name, e)
        except Exception:
            log.exception("NRI plugin %s", plugin.full_name)
        finally:
            plugin.close()
            self._connected.discard(plugin)
            if plugin in self.plugins:
                self.plugins.remove(plugin)
                log.info("NRI plugin %s disconnected", plugin.full_name)
            await plugin.reap()

    async def _setup(self, plugin: Plugin) -> None:
        try:
            async with asyncio.timeout(self.config.plugin_registration_timeout):
                await asyncio.shield(plugin.registered)
        except TimeoutError:
            raise PluginGone("did not register in time") from None
        if any(
            p.full_name == plugin.full_name
            for p in self._connected
            if p is not plugin and p.is_registered
        ):
            raise PluginGone("a plugin of that index and name is already connected")
        reply = await plugin.call(
            "Configure",
            nri.ConfigureRequest(
                config=plugin.config, runtime_name="pyctr", runtime_version=VERSION,
                registration_timeout=int(self.config.plugin_registration_timeout * 1000),
                request_timeout=int(self.timeout * 1000),
            ),
            nri.ConfigureResponse, self.timeout,
        )  # fmt: skip
        events = reply.events or VALID_EVENTS
        if events & ~VALID_EVENTS:
            raise PluginGone(f"subscribed to unknown events (mask {events:#x})")
        plugin.events = events
        async with self._exclusive(), self._events:
            await self._synchronize(plugin)
            plugin.synchronized = True
            self.plugins.append(plugin)
            self.plugins.sort(key=lambda p: p.sort_key)
        log.info(
            "NRI plugin %s (%s, pid %s) connected, events %s",
            plugin.full_name, "external" if plugin.external else "launched",
            plugin.info()["pid"], ",".join(plugin.info()["events"]),
        )  # fmt: skip

    async def _synchronize(self, plugin: Plugin) -> None:
        store = self.ctx.runtime.store
        pods = [convert.pod(sb) for sb in store.list_of(Sandbox)]
        containers = [convert.container(c) for c in store.list_of(CriContainer)]
        chunks: list[nri.SynchronizeRequest] = []
        current, size = nri.SynchronizeRequest(), 0
        for kind, items in (("pods", pods), ("containers", containers)):
            for item in items:
                getattr(current, kind).append(item)
                size += item.ByteSize() + 8  # the field's tag and length, at most
                if size > SYNC_CHUNK_BYTES:
                    chunks.append(current)
                    current, size = nri.SynchronizeRequest(), 0
        chunks.append(current)
        for i, req in enumerate(chunks):
            req.more = i < len(chunks) - 1
            reply = await plugin.call("Synchronize", req, nri.SynchronizeResponse, self.timeout)
            if req.more and (reply.update or not reply.more):
                raise PluginGone("does not take a synchronization in parts")
        failed = await self._apply_updates(plugin, reply.update)
        if failed:
            log.warning("NRI plugin %s: sync updates failed for %s", plugin.full_name, failed)

    async def _runtime_call(
        self, plugin: Plugin, service: str, method: str, payload: bytes
    ) -> bytes:
        """The Runtime service, as the plugin calls it."""
        api = RUNTIME_SERVICES.get(service)
        if api is None:
            raise TtrpcError(12, f"unknown service {service[:100]!r}")
        if method == "RegisterPlugin":
            req = nri.RegisterPluginRequest.FromString(payload)
            plugin.register(req, api)
            return nri.Empty().SerializeToString()
        if method == "UpdateContainers":
            if not plugin.synchronized:
                raise TtrpcError(9, "the plugin is not synchronized yet")
            ureq = nri.UpdateContainersRequest.FromString(payload)
            failed = await self._apply_updates(plugin, ureq.update)
            await self._evict(plugin, ureq.evict)
            return nri.UpdateContainersResponse(failed=failed).SerializeToString()
        raise TtrpcError(12, f"unknown method {method[:100]!r}")

    # -- the gate between creates and a synchronization ------------------------

    @contextlib.asynccontextmanager
    async def sync_blocked(self) -> AsyncIterator[None]:
        """Hold off synchronizing new plugins while a pod or container is made."""
        if not self.enabled:
            yield
            return
        async with self._gate:
            await self._gate.wait_for(lambda: self._syncing == 0)
            self._blockers += 1
        try:
            yield
        finally:
            async with self._gate:
                self._blockers -= 1
                self._gate.notify_all()

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        async with self._gate:
            self._syncing += 1
            try:
                await self._gate.wait_for(lambda: self._blockers == 0)
            except BaseException:
                self._syncing -= 1
                self._gate.notify_all()
                raise
        try:
            yield
        finally:
            async with self._gate:
                self._syncing -= 1
                self._gate.notify_all()

    def missing_plugins(self) -> list[str]:
        """The required plugins not connected (and synchronized) now."""
        if not self.enabled:
            return []
        present = {p.full_name for p in self.plugins} | {p.name for p in self.plugins}
        return [name for name in self.config.required_plugins if name not in present]

    def require_plugins(self) -> None:
        """Unavailable while a plugin the config requires is not connected."""
        missing = self.missing_plugins()
        if missing:
            raise Unavailable(f"required NRI plugins not connected: {', '.join(missing)}")

    # -- events ------------------------------------------------------------------

    def _subscribed(self, event: int) -> list[Plugin]:
        return [p for p in self.plugins if p.subscribed(event)]

    async def _state_change(
        self, event: int, sb: Sandbox, c: Container | None, blocking: bool
    ) -> None:
        if not self._subscribed(event):
            return
        async with self._events:
            req = nri.StateChangeEvent(event=event, pod=convert.pod(sb))  # type: ignore[arg-type]
            if c is not None:
                req.container.CopyFrom(convert.container(c))
            for p in self._subscribed(event):
                try:
                    await p.call("StateChange", req, nri.Empty, self.timeout)
                except PluginGone:
                    continue
                except PyctrError as e:
                    if blocking:
                        raise
                    log.warning("%s", e)

    async def run_pod(self, sb: Sandbox) -> None:
        await self._state_change(nri.RUN_POD_SANDBOX, sb, None, blocking=True)

    async def update_pod(
        self, sb: Sandbox, overhead: dict[str, Any], resources: dict[str, Any]
    ) -> None:
        """UpdatePodSandboxResources: the plugins may refuse it (the kubelet has
        resized the pod cgroup already; this tells them the new sizes)."""
        if not self._subscribed(nri.UPDATE_POD_SANDBOX):
            return
        async with self._events:
            req = nri.UpdatePodSandboxRequest(
                pod=convert.pod(sb),
                overhead_linux_resources=convert.resources(overhead),
                linux_resources=convert.resources(resources),
            )
            for p in self._subscribed(nri.UPDATE_POD_SANDBOX):
                try:
                    await p.call(
                        "UpdatePodSandbox", req, nri.UpdatePodSandboxResponse, self.timeout
                    )
                except PluginGone:
                    continue
                except PluginFailed as e:
                    if e.status != 12:  # UNIMPLEMENTED: a stub older than the event
                        raise

    async def post_update_pod(self, sb: Sandbox) -> None:
        await self._state_change(nri.POST_UPDATE_POD_SANDBOX, sb, None, blocking=False)

    async def stop_pod(self, sb: Sandbox) -> None:
        await self._state_change(nri.STOP_POD_SANDBOX, sb, None, blocking=False)

    async def remove_pod(self, sb: Sandbox) -> None:
        await self._state_change(nri.REMOVE_POD_SANDBOX, sb, None, blocking=False)

    async def create_container(self, sb: Sandbox, c: CriContainer) -> None:
        """Let the plugins adjust c.spec (in place) before runc sees it, the
        validators check the result, then apply the updates and evictions of
        other containers the plugins asked for."""
        adjusters = self._subscribed(nri.CREATE_CONTAINER)
        validators = self._subscribed(nri.VALIDATE_CONTAINER_ADJUSTMENT)
        if not adjusters and not validators:
            return
        async with self._events:
            owners = adjust.Owners()
            pod = convert.pod(sb)
            pristine = convert.container(c)
            merged = nri.ContainerAdjustment()
            asked: list[tuple[Plugin, nri.CreateContainerResponse]] = []
            for p in adjusters:
                req = nri.CreateContainerRequest(pod=pod, container=convert.container(c))
                try:
                    reply = await p.call(
                        "CreateContainer", req, nri.CreateContainerResponse, self.timeout
                    )
                except PluginGone:
                    continue
                if reply.HasField("adjust"):
                    adjust.apply(c.spec, reply.adjust, p.full_name, owners)
                    merged.MergeFrom(reply.adjust)
                asked.append((p, reply))
            if validators:
                await self._validate(pod, pristine, merged, owners, asked, validators)
            for p, reply in asked:
                failed = await self._apply_updates(p, reply.update)
                if failed:
                    names = ", ".join(u.container_id[:12] for u in failed)
                    raise Unavailable(f"NRI plugin {p.full_name}: updating {names} failed")
                await self._evict(p, reply.evict)

    async def _validate(
        self,
        pod: nri.PodSandbox,
        pristine: nri.Container,
        merged: nri.ContainerAdjustment,
        owners: adjust.Owners,
        asked: list[tuple[Plugin, nri.CreateContainerResponse]],
        validators: list[Plugin],
    ) -> None:
        """ValidateContainerAdjustment: any validator may reject the whole result."""
        req = nri.ValidateContainerAdjustmentRequest(
            pod=pod, container=pristine, adjust=merged,
            update=[u for _, reply in asked for u in reply.update],
            owners=owners.to_proto(pristine.id),
            plugins=[nri.PluginInstance(name=p.name, index=p.idx) for p, _ in asked],
        )  # fmt: skip
        for v in validators:
            try:
                answer = await v.call(
                    "ValidateContainerAdjustment", req,
                    nri.ValidateContainerAdjustmentResponse, self.timeout,
                )  # fmt: skip
            except PluginGone:
                continue
            if answer.reject:
                raise FailedPrecondition(
                    f"NRI plugin {v.full_name} rejected the adjustments: {answer.reason[:1000]}"
                )

    async def post_create_container(self, sb: Sandbox, c: Container) -> None:
        await self._state_change(nri.POST_CREATE_CONTAINER, sb, c, blocking=False)

    async def start_container(self, sb: Sandbox, c: Container) -> None:
        await self._state_change(nri.START_CONTAINER, sb, c, blocking=True)

    async def post_start_container(self, sb: Sandbox, c: Container) -> None:
        await self._state_change(nri.POST_START_CONTAINER, sb, c, blocking=False)

    async def update_container(
        self, sb: Sandbox, c: CriContainer, resources: dict[str, Any]
    ) -> dict[str, Any]:
        """The OCI resources to apply for an UpdateContainerResources asking
        for `resources`: the plugins may change them and update others."""
        if not self._subscribed(nri.UPDATE_CONTAINER):
            return resources
        async with self._events:
            for p in self._subscribed(nri.UPDATE_CONTAINER):
                req = nri.UpdateContainerRequest(
                    pod=convert.pod(sb), container=convert.container(c),
                    linux_resources=convert.resources(resources),
                )  # fmt: skip
                try:
                    reply = await p.call(
                        "UpdateContainer", req, nri.UpdateContainerResponse, self.timeout
                    )
                except PluginGone:
                    continue
                others = []
                for u in reply.update:
                    if u.container_id == c.id:
                        _check_classes(p, u.linux.resources)
                        resources = convert.merge_resources(
                            resources, convert.oci_resources(u.linux.resources)
                        )
                    else:
                        others.append(u)
                failed = await self._apply_updates(p, others)
                if failed:
                    raise Unavailable(f"NRI plugin {p.full_name}: updating other containers failed")
                await self._evict(p, reply.evict)
        return resources

    async def post_update_container(self, sb: Sandbox, c: Container) -> None:
        await self._state_change(nri.POST_UPDATE_CONTAINER, sb, c, blocking=False)

    async def stop_container(self, sb: Sandbox, c: Container) -> None:
        """StopContainer, once per container: when it exited (by a stop or by
        itself); the plugins may update the containers left."""
        if c.id in self._stopped:
            return
        self._stopped.add(c.id)
        if not self._subscribed(nri.STOP_CONTAINER):
            return
        async with self._events:
            req = nri.StopContainerRequest(pod=convert.pod(sb), container=convert.container(c))
            for p in self._subscribed(nri.STOP_CONTAINER):
                try:
                    reply = await p.call(
                        "StopContainer", req, nri.StopContainerResponse, self.timeout
                    )
                except PluginGone:
                    continue
                except PyctrError as e:
                    log.warning("%s", e)
                    continue
                await self._apply_updates(p, reply.update)

    def container_exited(self, c: Container) -> None:
        """The runtime's exit hook (synchronous): StopContainer for a CRI
        container, delivered in the background but before its removal."""
        if not self.enabled or not isinstance(c, CriContainer) or c.id in self._stopped:
            return
        try:
            sb = self.ctx.runtime.store.get_as(c.sandbox_id, Sandbox)
        except NotFound:
            return
        task = asyncio.ensure_future(self.stop_container(sb, c))
        self._stopping[c.id] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def remove_container(self, sb: Sandbox, c: Container) -> None:
        pending = self._stopping.pop(c.id, None)
        if pending is not None:  # its StopContainer goes first
            await asyncio.gather(pending, return_exceptions=True)
        self._stopped.discard(c.id)
        await self._state_change(nri.REMOVE_CONTAINER, sb, c, blocking=False)

    # -- updates a plugin asks for ----------------------------------------------

    async def _apply_updates(self, plugin: Plugin, updates: Any) -> list[nri.ContainerUpdate]:
        """Apply resource updates to containers; the ones that failed (and did
        not say ignore_failure) are returned."""
        failed: list[nri.ContainerUpdate] = []
        for u in updates:
            try:
                _check_classes(plugin, u.linux.resources)
                change = convert.oci_resources(u.linux.resources)
                await apply_resources(self.ctx, u.container_id, change, replace=False)
            except PyctrError as e:
                log.warning(
                    "NRI plugin %s: update of %s: %s", plugin.full_name, u.container_id[:12], e
                )
                if not u.ignore_failure:
                    failed.append(u)
        return failed

    async def _evict(self, plugin: Plugin, evictions: Any) -> None:
        for e in evictions:
            log.warning(
                "NRI plugin %s evicts %s: %s", plugin.full_name, e.container_id[:12], e.reason
            )
            try:
                c = self.ctx.sandboxes.get_container(e.container_id)
            except NotFound:
                continue
            task = asyncio.ensure_future(self._stop_evicted(c.id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _stop_evicted(self, cid: str) -> None:
        try:
            await self.ctx.runtime.stop(cid, 0)
        except NotFound:
            pass
        except Exception as e:
            log.error("NRI: evicting %s: %s", cid[:12], e)

    # -- what `pyctr info` and `pyctr nri ls` show -------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "socket": str(self.socket_path) if self.enabled and self._server else "",
            "missing": self.missing_plugins(),
            "socket_error": self.socket_error,
            "plugins": [
                p.info()
                for p in sorted(self._connected, key=lambda p: p.sort_key)
                if p.is_registered
            ],
        }


def _check_classes(plugin: Plugin, r: nri.LinuxResources) -> None:
    unsupported = adjust.resource_classes(r)
    if unsupported:
        raise FailedPrecondition(
            f"NRI plugin {plugin.full_name} asks for {', '.join(unsupported)},"
            " which pyctr does not support"
        )


def _plugin_config(directory: Path, idx: str, name: str) -> str:
    """A launched plugin's config: <idx>-<name>.conf, else <name>.conf, else ""."""
    for candidate in (directory / f"{idx}-{name}.conf", directory / f"{name}.conf"):
        with contextlib.suppress(FileNotFoundError):
            return candidate.read_text()
    return ""
