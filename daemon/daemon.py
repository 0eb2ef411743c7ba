"""The running daemon: every store, manager and server, built in one place.

    daemon = Daemon(config, cgroups, config_file)
    await daemon.start()     # locks, stores, recovery, streaming, gRPC: in this order
    ...
    await daemon.stop()      # the same, torn down in reverse

`Config` (daemon/config.py) is what the daemon is asked to be; `Daemon` is the
daemon running it, and `Daemon.ctx` the typed `Context` its services share.
The build order is the dependency order:

1. the root and state dir locks, the socket path claimed;
2. metadata (SQLite), then the cgroup setup and runc found;
3. the image side (`open_images`): snapshotter (reconciled), content store,
   image manager (its first GC);
4. the runtime manager, which recovers the containers the last daemon left;
5. the sandbox manager, which recovers the pods (over the runtime);
5b. NRI: its socket, and the plugins installed with the daemon;
6. the streaming server (exec/attach/port-forward URLs, over the runtime);
7. the gRPC server, bound and started last so no call arrives before its
   services are ready.

Each step registers its teardown as it succeeds, so `stop` (and a start that
fails half-way) undoes exactly what was built, newest first.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pyctr.daemon import host
from pyctr.daemon.cgroups import Cgroups
from pyctr.daemon.config import Config
from pyctr.daemon.version import VERSION

if TYPE_CHECKING:
    from pyctr.daemon.context import Context
    from pyctr.daemon.images.manager import ImageManager

log = logging.getLogger("pyctr.daemon")

# How long in-flight calls get to finish on SIGTERM before they are cancelled.
SHUTDOWN_GRACE = 5.0


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


class Daemon:
    def __init__(self, config: Config, cgroups: Cgroups, config_file: Path | None = None) -> None:
        self.config = config
        self.cgroups = cgroups
        self.config_file = config_file
        self._stack = contextlib.AsyncExitStack()
        self._ctx: Context | None = None

    @property
    def ctx(self) -> Context:
        if self._ctx is None:
            raise RuntimeError("the daemon is not started")
        return self._ctx

    async def start(self) -> None:
        """Build and start everything; on failure, tear down what was built and raise."""
        try:
            await self._start(self._stack)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Tear down in reverse build order (idempotent)."""
        started = self._ctx is not None
        await self._stack.aclose()
        self._ctx = None
        if started:
            log.info("pyctrd stopped")

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        import asyncio

        from pyctr.daemon import server as server_mod
        from pyctr.daemon.context import Context
        from pyctr.daemon.errors import InvalidArgument, PyctrError
        from pyctr.daemon.metadata import Metadata
        from pyctr.daemon.nri.adaptation import Nri
        from pyctr.daemon.pods.manager import SandboxManager
        from pyctr.daemon.runtime.handlers import probe as probe_handlers
        from pyctr.daemon.runtime.manager import RuntimeManager
        from pyctr.daemon.streaming.backend import RuntimeBackend
        from pyctr.daemon.streaming.server import StreamingServer

        cfg, cgroups = self.config, self.cgroups
        root, state, address = cfg.root_dir, cfg.state_dir, Path(cfg.address)
        # Checked before anything is served: a bad group must not leave a socket up.
        socket_gid = _socket_gid(cfg.socket_group)
        # Everything pyctrd creates is private unless it says otherwise.
        os.umask(0o077)
        stack.enter_context(_lock_dir(root, "root"))
        stack.enter_context(_lock_dir(state, "state"))
        host.searchable_dir(state)  # user-namespaced pods pass through it
        address.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        _claim_socket(address)

        db = Metadata(root / "meta.db")
        stack.callback(db.close)
        try:
            handlers = await asyncio.to_thread(probe_handlers, cfg, cgroups)
        except InvalidArgument as e:
            raise StartupError(str(e)) from None
        for h in handlers.by_name.values():
            log.info(
                "runtime handler %s: %s %s%s", h.name, h.path or h.binary, h.version,
                f" (unusable: {h.unusable})" if h.unusable else "",
            )  # fmt: skip
        runc_path = handlers.by_name[handlers.default].path
        if runc_path is None:
            log.warning("runc %r not found: containers cannot run", cfg.runtime.runc)
        log.info("cgroup %s, driver %s (%s)", cgroups.version, cgroups.driver, cgroups.reason)
        ctx = Context(
            config=cfg, config_file=self.config_file, db=db, runc_path=runc_path, cgroups=cgroups,
            probed_handlers=handlers,
        )  # fmt: skip
        self._ctx = ctx
        await asyncio.to_thread(ctx.apparmor.load_default)
        log.info("apparmor: %s", ctx.apparmor.reason)

        await open_images(ctx, stack)

        ctx.runtime = RuntimeManager(ctx)
        stack.push_async_callback(ctx.runtime.close)
        await ctx.runtime.recover()

        ctx.sandboxes = SandboxManager(ctx)
        await ctx.sandboxes.recover()

        # NRI before the gRPC server: pre-installed plugins are synchronized
        # before the first pod can be asked for.
        ctx.nri = Nri(ctx)
        stack.push_async_callback(ctx.nri.stop)
        try:
            await ctx.nri.start()
        except (OSError, PyctrError) as e:
            raise StartupError(f"NRI: {e}") from None
        ctx.runtime.exit_hooks.append(ctx.nri.container_exited)

        streaming = StreamingServer(cfg.cri.streaming, RuntimeBackend(ctx.runtime))
        try:
            await streaming.start()
        except OSError as e:
            raise StartupError(str(e)) from None
        stack.push_async_callback(streaming.stop)
        ctx.streaming = streaming

        if cfg.metrics.address:
            from pyctr.daemon.metrics import MetricsServer

            try:
                metrics = MetricsServer(ctx, cfg.metrics.address)
                await metrics.start()
            except (OSError, InvalidArgument) as e:
                raise StartupError(f"metrics: {e}") from None
            stack.push_async_callback(metrics.stop)

        server = server_mod.build(ctx)
        # grpc binds the socket here: it is born 0660 (never briefly wider)
        # and gets its group before the server accepts the first client.
        os.umask(0o117)
        try:
            server.add_insecure_port(f"unix:{address}")
        finally:
            os.umask(0o077)
        stack.callback(address.unlink, missing_ok=True)
        _secure_socket(address, socket_gid)
        await server.start()
        stack.push_async_callback(server.stop, SHUTDOWN_GRACE)
        log.info(
            "pyctrd %s serving on %s (root %s, state %s, runc %s)",
            VERSION,
            address,
            root,
            state,
            runc_path or "missing",
        )


async def open_images(ctx: Context, stack: contextlib.AsyncExitStack) -> ImageManager:
    """The image side over `ctx.db`: snapshotter, content store, image manager.

    Sets them on `ctx` and registers their teardown on `stack`. The daemon's
    start calls it; so do tests that need the image side alone.
    """
    import asyncio

    from pyctr.daemon.images.content import ContentStore
    from pyctr.daemon.images.manager import ImageManager
    from pyctr.daemon.images.volumes import ImageVolumes
    from pyctr.daemon.snapshots import open_snapshots

    cfg = ctx.config
    snapshots = open_snapshots(cfg.snapshotter.backend, ctx.db, cfg.root_dir)
    # Interrupted extractions and half-made snapshots of the last run go first.
    await asyncio.to_thread(snapshots.reconcile)
    ctx.snapshotter = snapshots
    ctx.image_volumes = ImageVolumes(snapshots, cfg.state_dir / "image-volumes")
    ctx.content = ContentStore(cfg.root_dir / "content")
    images = ImageManager(ctx)
    stack.push_async_callback(images.close)
    ctx.images = images
    await images.start()
    return images


@contextlib.contextmanager
def _lock_dir(directory: Path, what: str) -> Iterator[None]:
    """Hold an exclusive flock on DIR/pyctrd.lock for the daemon's lifetime."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o711)
    path = directory / "pyctrd.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise StartupError(
                f"another pyctrd (pid {other}) is using the {what} dir {directory}; "
                "stop it first or pick another with --root/--state"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _claim_socket(path: Path) -> None:
    """Remove a stale socket file; refuse if a live server answers on it."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise StartupError(
            f"{path} exists and is not a socket; remove it or pick another --address"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise StartupError(f"cannot check socket {path}: {e.strerror}") from None
        path.unlink(missing_ok=True)  # stale: its server is gone
        return
    finally:
        probe.close()
    raise StartupError(f"another pyctrd is already serving on {path}")


def _socket_gid(group: str) -> int:
    if not group:
        return 0
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise StartupError(f"socket_group {group!r} does not exist") from None


def _secure_socket(path: Path, gid: int) -> None:
    os.chown(path, 0, gid)
    os.chmod(path, 0o660)
    if gid:
        # The group must be able to reach the socket: give its dir search
        # permission (never read or write), which our umask took away.
        parent = path.parent
        mode = stat.S_IMODE(parent.stat().st_mode)
        if mode & 0o011 != 0o011:
            os.chmod(parent, mode | 0o011)
