"""The shim's command line (documented in proto/shim_api.md).

Parsed by hand: argparse imports re, gettext and more, about 1 MB per shim.
"""

from __future__ import annotations

import os

USAGE = (
    "usage: pyctr-shim --id ID --bundle DIR --state DIR [--runc PATH] [--runc-root DIR]\n"
    "                  [--log-path FILE] [--systemd-cgroup] [--tty] [--stdin] [--start] [--debug]\n"
    "                  [--ready-fd N]\n"
)
# Longest name the shim binds under its state dir; unix socket paths stop at 107 bytes.
_LONGEST_SOCKET = "/exec-999999.sock"


class UsageError(Exception):
    pass


class Options:
    def __init__(self) -> None:
        self.id = ""
        self.bundle = ""
        self.state = ""
        self.runc = "runc"
        self.runc_root: str | None = None
        self.log_path: str | None = None
        self.tty = False
        self.stdin = False
        self.debug = False
        self.start = False  # create and start at once (`runc run --detach`)
        self.systemd_cgroup = False  # runc --systemd-cgroup: cgroupsPath is slice:prefix:name
        self.ready_fd = -1
        self.serve = False  # internal: set on the re-exec'd, daemonized process


_VALUES = {
    "--id": "id",
    "--bundle": "bundle",
    "--state": "state",
    "--runc": "runc",
    "--runc-root": "runc_root",
    "--log-path": "log_path",
    "--ready-fd": "ready_fd",
}
_FLAGS = {
    "--tty": "tty",
    "--stdin": "stdin",
    "--debug": "debug",
    "--start": "start",
    "--systemd-cgroup": "systemd_cgroup",
    "--serve": "serve",
}
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-+")


def parse(argv: list[str]) -> Options:
    opts = Options()
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if name in _FLAGS and not eq:
            setattr(opts, _FLAGS[name], True)
        elif name in _VALUES:
            if not eq:
                if not args:
                    raise UsageError(f"{name} needs a value")
                value = args.pop(0)
            if name == "--ready-fd":
                if not value.isdigit():
                    raise UsageError("--ready-fd must be a file descriptor number")
                opts.ready_fd = int(value)
            else:
                setattr(opts, _VALUES[name], value)
        else:
            raise UsageError(f"unknown argument {arg!r}")
    _validate(opts)
    return opts


def _validate(opts: Options) -> None:
    for name in ("id", "bundle", "state"):
        if not getattr(opts, name):
            raise UsageError(f"--{name} is required")
    # runc's own rule for container ids; it also keeps ids safe in file names.
    if len(opts.id) > 1024 or not set(opts.id) <= _ID_CHARS or opts.id in (".", ".."):
        raise UsageError(f"invalid container id {opts.id!r}")
    for name in ("bundle", "state", "log_path", "runc_root"):
        value = getattr(opts, name)
        if value is not None and not os.path.isabs(value):
            raise UsageError(f"--{name.replace('_', '-')} must be an absolute path")
    if not os.path.isfile(os.path.join(opts.bundle, "config.json")):
        raise UsageError(f"no config.json in bundle {opts.bundle}")
    if len((opts.state + _LONGEST_SOCKET).encode()) > 107:
        raise UsageError(f"state dir path too long for unix sockets: {opts.state}")
