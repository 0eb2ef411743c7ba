"""pyctrd: the daemon's command line.

`main` reads the config and the cgroup setup, then `serve` runs a `Daemon`
(daemon/daemon.py: what is built, in which order) until a signal asks it to
stop. A second daemon on the same root, state dir or socket refuses to start
and leaves the first one serving.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from pyctr.daemon import config as config_mod
from pyctr.daemon.cgroups import Cgroups
from pyctr.daemon.config import Config
from pyctr.daemon.daemon import StartupError
from pyctr.daemon.errors import PyctrError
from pyctr.daemon.version import VERSION

log = logging.getLogger("pyctr.daemon")


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


async def serve(cfg: Config, config_file: Path | None, cgroups: Cgroups) -> None:
    """Run the daemon until SIGTERM or SIGINT, then stop it gracefully."""
    from pyctr.daemon.daemon import Daemon

    stop = asyncio.Event()
    received: list[int] = []
    daemon = Daemon(cfg, cgroups, config_file)
    # Handlers first: the socket answers before start() returns. A signal
    # while it starts (recovery can take a while) cancels the start, which
    # undoes what it built; the next start recovers the rest.
    starting = asyncio.ensure_future(daemon.start())

    def on_signal(sig: int) -> None:
        received.append(sig)
        stop.set()
        starting.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await starting
    except asyncio.CancelledError:
        if not received:
            raise
        log.info("received %s while starting, stopped", signal.Signals(received[0]).name)
        return
    try:
        await stop.wait()
        log.info("received %s, shutting down", signal.Signals(received[0]).name)
    finally:
        await daemon.stop()


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
