"""pyctr-shim: the process that stays with one container for its whole life.

Started by the daemon (see pyctr.daemon.runtime.shim_launch.spawn_shim), in two stages:

1. Launcher (this process): check the arguments, fork; the parent exits at
   once so the daemon can reap it. The child leaves the daemon's session
   (setsid) so it outlives a daemon restart or kill -9, makes itself a child
   subreaper so the container's processes become its children once runc
   exits, and re-executes itself as stage 2. The subreaper flag survives
   execve; ctypes, needed for prctl(), does not: stage 2 never imports it.
2. Server (`--serve`): run `runc create`, report readiness (or runc's error)
   on --ready-fd, then serve the API on <state>/shim.sock until the container
   is deleted.

The daemon runs this file as `python -I -S .../shim/main.py`: no site import,
no environment-driven paths. Modules are then loaded from this folder as the
`pyctr.shim` package (set up by _as_package) and nothing beyond the standard
library's low-level modules is imported, to keep the memory paid per
container small (see proto/shim_api.md for the numbers).
"""

# ruff: noqa: SIM105  (contextlib.suppress would import contextlib: memory per shim)

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyctr.shim.options import Options
    from pyctr.shim.service import Shim

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str] | None = None) -> int:
    from pyctr.shim.options import USAGE, UsageError, parse

    args = sys.argv[1:] if argv is None else argv
    try:
        opts = parse(args)
    except UsageError as exc:
        sys.stderr.write(f"pyctr-shim: {exc}\n{USAGE}")
        ready_fd = _ready_fd_of(args)
        if ready_fd >= 0:
            _report(
                ready_fd, {"ok": False, "error": {"code": "invalid_argument", "message": str(exc)}}
            )
        return 2
    if opts.serve:
        return serve(opts)
    return launch(opts, args)


def launch(opts: Options, args: list[str]) -> int:
    """Stage 1: detach from the caller, become subreaper, exec stage 2."""
    if os.fork() > 0:
        return 0  # the caller waits for readiness on --ready-fd, not for us
    try:
        os.setsid()
        _become_subreaper()
        keep = opts.ready_fd
        # Only stdio and the readiness pipe travel on: nothing the daemon
        # leaked to us should stay open for the container's lifetime.
        if keep >= 3:
            os.closerange(3, keep)
            os.closerange(keep + 1, 65536)
            os.set_inheritable(keep, True)
        else:
            os.closerange(3, 65536)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir("/")
        me = os.path.abspath(__file__)
        os.execv(sys.executable, [sys.executable, "-I", "-S", me, "--serve", *args])
    except BaseException as exc:  # never return into the caller's code as a forked copy
        sys.stderr.write(f"pyctr-shim: cannot start: {exc}\n")
        if opts.ready_fd >= 0:
            _report(
                opts.ready_fd, {"ok": False, "error": {"code": "internal", "message": str(exc)}}
            )
    os._exit(1)


def _become_subreaper() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def serve(opts: Options) -> int:
    """Stage 2: create the container, report, serve until it is deleted."""
    from pyctr.shim.loop import Loop
    from pyctr.shim.protocol import PID_FILE, SOCKET_NAME
    from pyctr.shim.runc import RuncError
    from pyctr.shim.service import Shim

    ready_fd = opts.ready_fd
    if ready_fd >= 0:
        os.set_inheritable(ready_fd, False)  # runc and the container must not hold it
    os.makedirs(opts.state, mode=0o700, exist_ok=True)
    _write_file(os.path.join(opts.state, PID_FILE), b"%d\n" % os.getpid())
    loop = Loop()
    loop.on_error = lambda exc: log(f"error: {type(exc).__name__}: {exc}")
    shim: Shim | None = None
    try:
        shim = Shim(opts, loop, log)
        pid = shim.create()
        shim.serve()
    except (RuncError, OSError) as exc:
        code = exc.code if isinstance(exc, RuncError) else "internal"
        log(f"create failed: {exc}")
        # Clean up before reporting, so the daemon never sees leftovers.
        if shim is not None:
            _cleanup_failed(shim)
        _unlink(os.path.join(opts.state, PID_FILE))
        _report(ready_fd, {"ok": False, "error": {"code": code, "message": str(exc)}})
        return 1
    log(f"container {opts.id} {'started' if opts.start else 'created'}, pid {pid}")
    socket = os.path.join(opts.state, SOCKET_NAME)
    report = {"ok": True, "pid": pid, "shim_pid": os.getpid(), "socket": socket}
    _report(ready_fd, {**report, "status": shim.status})
    loop.run()
    shim.close()
    _unlink(os.path.join(opts.state, PID_FILE))
    log("shim exits")
    return 0


def _cleanup_failed(shim: Shim) -> None:
    """A failed create may leave runc state behind (a timeout, say): remove it."""
    try:
        shim.runc.run("delete", "--force", shim.opts.id, check=False, timeout=10.0)
    except Exception as exc:
        log(f"cleanup after failed create: {exc}")
    if shim.server is not None:
        shim.server.close()
    shim.close()
    shim.reap()


def _report(fd: int, message: dict[str, object]) -> None:
    if fd < 0:
        return
    from pyctr.shim import jsonlite

    try:
        os.write(fd, jsonlite.dumps(message).encode() + b"\n")
    except OSError:
        pass  # the daemon gave up waiting; the state dir still tells
    try:
        os.close(fd)
    except OSError:
        pass


def _ready_fd_of(args: list[str]) -> int:
    for i, arg in enumerate(args):
        value = arg.partition("=")[2] if arg.startswith("--ready-fd=") else None
        if arg == "--ready-fd" and i + 1 < len(args):
            value = args[i + 1]
        if value is not None and value.isdigit():
            return int(value)
    return -1


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def log(message: str) -> None:
    """One line to stderr: the shim.log file the daemon opened for us."""
    import time

    ns = time.time_ns()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))
    try:
        os.write(2, f"{stamp}.{ns % 1_000_000_000:09d}Z [{os.getpid()}] {message}\n".encode())
    except OSError:
        pass


def _as_package() -> None:
    """Make `pyctr.shim` importable from this file's folder without site-packages.

    Under `python -I -S`, the editable or installed `pyctr` is not on the
    path. Registering the two package modules by hand lets every shim module
    use the same absolute imports as in tests and in the daemon.
    """
    module = type(sys)
    here = os.path.dirname(os.path.abspath(__file__))
    if "pyctr" not in sys.modules:
        root = module("pyctr")
        root.__path__ = []
        sys.modules["pyctr"] = root
    if "pyctr.shim" not in sys.modules:
        pkg = module("pyctr.shim")
        pkg.__path__ = [here]
        pkg.__package__ = "pyctr.shim"
        sys.modules["pyctr.shim"] = pkg
        sys.modules["pyctr"].shim = pkg  # type: ignore[attr-defined]


if __name__ == "__main__":
    if not __package__:
        _as_package()
    sys.exit(main())
