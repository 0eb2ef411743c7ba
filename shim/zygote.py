"""pyctr-shim's zygote: one pre-loaded Python process that forks shims.

Starting a shim with `python shim/main.py` costs two interpreter start-ups
(the launcher and stage 2) and the shim's imports, about 100 ms before
`runc create` even begins, and each shim then holds its own copy of the
interpreter's heap. The daemon instead starts one zygote
(pyctr.daemon.runtime.zygote), which imports the shim's modules once, freezes
them out of the garbage collector, and forks a shim per request:

    zygote --fork--> intermediate --fork--> shim (setsid, subreaper, serve)
                     (exits at once, reaped by the zygote)

The shim is thus nobody's child but init's (or the nearest subreaper's), in
a session of its own, exactly like a shim started by the launcher: it
outlives the daemon and the zygote. It runs `main.serve` directly, without
exec, so its interpreter pages are shared copy-on-write with the zygote and
with every other shim (gc.freeze keeps the collector from writing to them).

The zygote has no threads (fork-safety) and holds nothing but its control
socket, a SOCK_SEQPACKET socketpair with the daemon; it exits when the
daemon's end closes (daemon stopped or killed). One request at a time:

    daemon -> zygote   {"args": [shim arguments]} + SCM_RIGHTS [ready_w, log]
    zygote -> daemon   {"ok": true} | {"ok": false, "error": "..."}

`ready_w` becomes the shim's --ready-fd and `log` its stdout and stderr, so
readiness and errors travel exactly as for a launched shim (see main.py). On
start the zygote sends {"ready": true, "pid": PID} once its imports are done.
"""

# ruff: noqa: SIM105  (contextlib.suppress would import contextlib: memory per shim)

from __future__ import annotations

import _socket
import gc
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

PR_SET_CHILD_SUBREAPER = 36
MAX_MESSAGE = 64 << 10
_FD_SPACE = _socket.CMSG_SPACE(2 * 4)

_prctl: Callable[..., int] | None = None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # --state only names the daemon's state dir on the command line, which
    # every forked shim shares: `ps` and sweeps find them by it.
    if len(args) not in (2, 4) or args[0] != "--control-fd" or not args[1].isdigit():
        sys.stderr.write("usage: zygote.py --control-fd N [--state DIR]\n")
        return 2
    control = _socket.socket(fileno=int(args[1]))
    os.set_inheritable(control.fileno(), False)
    _preload()
    _set_comm(b"pyctr-zygote")
    from pyctr.shim import jsonlite

    # Everything imported so far is shared with the shims: keep the collector
    # from touching (and so un-sharing) those pages in every child.
    gc.collect()
    gc.freeze()
    _send(control, {"ready": True, "pid": os.getpid()})
    while True:
        try:
            data, ancdata, _, _ = control.recvmsg(MAX_MESSAGE, _FD_SPACE)
        except InterruptedError:
            continue
        except OSError:
            return 0
        fds = _fds_of(ancdata)
        if not data:  # the daemon is gone; its shims are not our children
            for fd in fds:
                os.close(fd)
            return 0
        try:
            request = jsonlite.loads(data.decode("utf-8", "replace"))
            if len(fds) != 2 or not isinstance(request, dict):
                raise ValueError("a request is {'args': [...]} with two fds")
            shim_args = request.get("args")
            if not isinstance(shim_args, list) or not all(isinstance(a, str) for a in shim_args):
                raise ValueError("'args' must be a list of strings")
            fork_shim(shim_args, fds[0], fds[1])
            reply: dict[str, object] = {"ok": True}
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        _send(control, reply)


def _preload() -> None:
    """Import (and warm) everything a shim uses, so children share it."""
    global _prctl
    import ctypes
    import fcntl  # noqa: F401  (tty shims import these two lazily)
    import termios  # noqa: F401

    import pyctr.shim.main  # noqa: F401
    import pyctr.shim.options  # noqa: F401
    import pyctr.shim.service  # noqa: F401
    from pyctr.shim import jsonlite

    jsonlite.loads(jsonlite.dumps({"warm": [1, 2.5, True, None, "x"]}))
    _prctl = ctypes.CDLL(None, use_errno=True).prctl


def fork_shim(args: list[str], ready_fd: int, log_fd: int) -> None:
    """Fork a shim serving `args` (the shim's command line without --ready-fd).

    Returns once the intermediate process exited, i.e. the shim exists; its
    readiness (or failure) arrives on ready_fd as for a launched shim.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the intermediate and the shim
        code = 1
        try:
            # The intermediate exits at once: the shim is left nobody's child.
            code = _become_shim(args, ready_fd, log_fd) if os.fork() == 0 else 0
        except BaseException as exc:
            _report_failure(ready_fd, exc)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise OSError(f"could not fork a shim (status {status})")


def _become_shim(args: list[str], ready_fd: int, log_fd: int) -> int:  # pragma: no cover
    """In the shim: what the launcher does, then serve without exec."""
    from pyctr.shim import main as shim_main
    from pyctr.shim.options import UsageError, parse

    os.setsid()
    assert _prctl is not None
    if _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_CHILD_SUBREAPER) failed")
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # Only stdio and the readiness pipe stay: not the zygote's control socket.
    os.closerange(3, ready_fd)
    os.closerange(ready_fd + 1, 65536)
    os.chdir("/")
    _set_comm(b"pyctr-shim")
    try:
        opts = parse([*args, "--ready-fd", str(ready_fd)])
    except UsageError as exc:
        shim_main.log(f"bad arguments: {exc}")
        shim_main._report(
            ready_fd, {"ok": False, "error": {"code": "invalid_argument", "message": str(exc)}}
        )
        return 2
    return shim_main.serve(opts)


def _report_failure(ready_fd: int, exc: BaseException) -> None:  # pragma: no cover
    from pyctr.shim import main as shim_main

    shim_main.log(f"cannot start: {type(exc).__name__}: {exc}")
    shim_main._report(ready_fd, {"ok": False, "error": {"code": "internal", "message": str(exc)}})


def _send(control: _socket.socket, message: dict[str, object]) -> None:
    from pyctr.shim import jsonlite

    try:
        control.send(jsonlite.dumps(message).encode())
    except OSError:
        pass  # the daemon is gone: the next recvmsg says so


def _fds_of(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds += [int.from_bytes(data[i : i + 4], sys.byteorder) for i in range(0, usable, 4)]
    return fds


def _set_comm(name: bytes) -> None:
    """The name `ps -o comm` and `top` show: every fork shares the zygote's cmdline."""
    try:
        fd = os.open("/proc/self/comm", os.O_WRONLY)
        try:
            os.write(fd, name)
        finally:
            os.close(fd)
    except OSError:
        pass


def _as_package() -> None:
    """Make `pyctr.shim` importable from this folder as main.py does: its
    source is run here as pyctr.shim.main (which the zygote imports anyway;
    exec keeps importlib.util and its imports out of the forked shims)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "main.py")
    main = type(sys)("pyctr.shim.main")
    main.__file__ = path
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), main.__dict__)
    main._as_package()
    sys.modules["pyctr.shim.main"] = main


if __name__ == "__main__":
    if not __package__:
        _as_package()
    sys.exit(main())
