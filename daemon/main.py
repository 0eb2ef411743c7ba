"""pyctrd: the daemon's command line and lifecycle.

`serve` reads as the lifecycle: config → locks → stores → server → wait for a
signal → graceful shutdown. A second daemon on the same root, state dir or
socket refuses to start and leaves the first one serving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import grp
import logging
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pyctr.daemon import config as config_mod
from pyctr.daemon import host
from pyctr.daemon.cgroups import Cgroups
from pyctr.daemon.config import Config
from pyctr.daemon.errors import PyctrError
from pyctr.daemon.version import VERSION

log = logging.getLogger("pyctr.daemon")

# How long in-flight calls get to finish on SIGTERM before they are cancelled.
SHUTDOWN_GRACE = 5.0


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


class _Formatter(logging.Formatter):
    """One line per event: UTC time with ms, level, logger, message."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        t = time.gmtime(record.created)
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record)} {record.levelname.lower():<7} {record.name}: "
        line += record.getMessage()
        if record.exc_info:
            # Tracebacks go to the log (never to clients), folded on one line
            # per event would hide them; keep them but indent.
            line += "\n  " + self.formatException(record.exc_info).replace("\n", "\n  ")
        return line


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc's own logger is chatty at debug; keep it at warning.
    logging.getLogger("grpc").setLevel(logging.WARNING)


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


async def serve(cfg: Config, config_file: Path | None, cgroups: Cgroups) -> None:
    from pyctr.daemon import server as server_mod
    from pyctr.daemon.context import Context
    from pyctr.daemon.events import EventBus
    from pyctr.daemon.images.manager import ImageManager
    from pyctr.daemon.metadata import Metadata
    from pyctr.daemon.pods.manager import SandboxManager
    from pyctr.daemon.runtime.manager import RuntimeManager
    from pyctr.daemon.streaming import start_streaming

    root, state, address = cfg.root_dir, cfg.state_dir, Path(cfg.address)
    # Checked before anything is served: a bad group must not leave a socket up.
    socket_gid = _socket_gid(cfg.socket_group)
    # Everything pyctrd creates is private unless it says otherwise.
    os.umask(0o077)
    with _lock_dir(root, "root"), _lock_dir(state, "state"):
        address.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        _claim_socket(address)
        db = Metadata(root / "meta.db")
        runc_path = host.find_runc(cfg.runtime.runc)
        if runc_path is None:
            log.warning("runc %r not found: containers cannot run", cfg.runtime.runc)
        log.info("cgroup %s, driver %s (%s)", cgroups.version, cgroups.driver, cgroups.reason)
        ctx = Context(
            config=cfg, config_file=config_file, db=db, runc_path=runc_path, cgroups=cgroups
        )
        ctx.events = EventBus()
        images = await ImageManager.open(ctx)  # also opens the snapshotter if unset
        runtime = RuntimeManager(ctx)
        ctx.runtime = runtime
        await runtime.recover()
        ctx.sandboxes = SandboxManager(ctx)
        await ctx.sandboxes.recover()
        streaming = await start_streaming(ctx)
        server = server_mod.build(ctx)
        server.add_insecure_port(f"unix:{address}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        received: list[int] = []

        def on_signal(sig: int) -> None:
            received.append(sig)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            # The socket is born 0660 (never briefly wider), then given its group.
            os.umask(0o117)
            try:
                await server.start()
            finally:
                os.umask(0o077)
            _secure_socket(address, socket_gid)
            log.info(
                "pyctrd %s serving on %s (root %s, state %s, runc %s)",
                VERSION,
                address,
                root,
                state,
                runc_path or "missing",
            )
            await stop.wait()
            log.info("received %s, shutting down", signal.Signals(received[0]).name)
        finally:
            await server.stop(SHUTDOWN_GRACE)
            await streaming.stop()
            await runtime.close()
            await images.close()
            address.unlink(missing_ok=True)
            db.close()
            log.info("pyctrd stopped")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyctrd", description="pyctr container runtime daemon (Kubernetes CRI v1)"
    )
    p.add_argument("--version", action="version", version=f"pyctrd {VERSION}")
    p.add_argument(
        "--config",
        type=Path,
        default=config_mod.DEFAULT_CONFIG_PATH,
        help="TOML config file (default %(default)s; optional)",
    )
    p.add_argument("--root", help="persistent state dir (default /var/lib/pyctr)")
    p.add_argument("--state", help="runtime state dir (default /run/pyctr)")
    p.add_argument("--address", help="gRPC unix socket (default /run/pyctr/pyctr.sock)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    cfg = sub.add_parser("config", help="configuration helpers")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    cfg_sub.add_parser("default", help="print the full default config with comments")
    cfg_sub.add_parser("dump", help="print the effective config (file + flags)")
    return p


def main(argv: list[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    overrides = {
        "root": opts.root,
        "state": opts.state,
        "address": opts.address,
        "log_level": opts.log_level,
    }
    if opts.command == "config" and opts.config_command == "default":
        sys.stdout.write(config_mod.render_default())
        return 0
    try:
        cfg = config_mod.load(opts.config, overrides)
        # Checked here, not at the first pod: a driver that cannot work here
        # is a configuration error.
        cgroups = Cgroups.resolve(cfg.cri.cgroup_driver, cfg.runtime.cgroup_parent)
    except PyctrError as e:
        print(f"pyctrd: {e}", file=sys.stderr)
        return 2
    if opts.command == "config":
        sys.stdout.write(config_mod.render(cfg))
        return 0
    setup_logging(cfg.log_level)
    if os.geteuid() != 0:
        print("pyctrd: must run as root (it mounts filesystems and runs runc)", file=sys.stderr)
        return 1
    config_file = opts.config if opts.config.exists() else None
    try:
        asyncio.run(serve(cfg, config_file, cgroups))
    except StartupError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
