"""Starting the container's processes through runc, with the shim holding their stdio.

`runc create` and `runc exec --detach` hand their own stdio on to the process
they start, so the shim runs them with pipes whose other ends it keeps; for a
tty, runc sends the pty master over a console socket instead. Either way the
result is a Stdio the shim pumps, and the pid runc wrote.
"""

# ruff: noqa: SIM105  (contextlib.suppress would import contextlib: memory per shim)

from __future__ import annotations

import os

from pyctr.shim import jsonlite
from pyctr.shim.loop import Loop
from pyctr.shim.protocol import CONSOLE_SOCKET, INIT_PID_FILE
from pyctr.shim.runc import ConsoleSocket, Runc, RuncError
from pyctr.shim.stdio import Stdio

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs memory at run time
    from typing import Any


def create_container(
    runc: Runc,
    loop: Loop,
    container_id: str,
    bundle: str,
    state_dir: str,
    tty: bool,
    stdin: bool,
    *,
    run: bool = False,
) -> tuple[int, Stdio]:
    """`runc create` (run: `runc run --detach`); returns the init pid and its stdio."""
    pid_file = os.path.join(state_dir, INIT_PID_FILE)
    args = ["run", "--detach"] if run else ["create"]
    args += ["--bundle", bundle, "--pid-file", pid_file]
    if tty:
        stdio = _run_with_console(runc, loop, args, container_id, state_dir, CONSOLE_SOCKET, stdin)
    else:
        stdio = _run_with_pipes(runc, loop, args, container_id, stdin, -1)
    return read_pid(pid_file), stdio


def start_exec(
    runc: Runc,
    loop: Loop,
    container_id: str,
    state_dir: str,
    seq: int,
    process: dict[str, Any],
    *,
    tty: bool,
    stdin: bool,
    discard: bool,
) -> tuple[int, Stdio]:
    """`runc exec --detach` of an OCI process object; returns its pid and stdio.

    discard: the process gets /dev/null for stdio (a tty still gets a pty).
    """
    spec_file = os.path.join(state_dir, f"exec-{seq}.json")
    pid_file = os.path.join(state_dir, f"exec-{seq}.pid")
    fd = os.open(spec_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as f:
        f.write(jsonlite.dumps(process))
    args = ["exec", "--detach", "--process", spec_file, "--pid-file", pid_file]
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    try:
        if tty:
            sock = f"exec-{seq}.sock"
            stdio = _run_with_console(runc, loop, args, container_id, state_dir, sock, stdin)
        elif discard:
            runc.run(*args, container_id, stdin=null, stdout=null, stderr=null)
            stdio = Stdio(loop, [])
        else:
            stdio = _run_with_pipes(runc, loop, args, container_id, stdin, null)
        return read_pid(pid_file), stdio
    finally:
        os.close(null)
        for path in (spec_file, pid_file):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _run_with_console(
    runc: Runc,
    loop: Loop,
    args: list[str],
    container_id: str,
    state_dir: str,
    name: str,
    stdin: bool,
) -> Stdio:
    console = ConsoleSocket(os.path.join(state_dir, name))
    try:
        runc.run(*args, "--console-socket", console.path, container_id)
        master = console.receive_master()
    finally:
        console.close()
    return Stdio(loop, [(b"stdout", master)], master if stdin else -1, master)


def _run_with_pipes(
    runc: Runc, loop: Loop, args: list[str], container_id: str, stdin: bool, null: int
) -> Stdio:
    """null: the fd for a closed stdin (-1: runc's default, /dev/null)."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    in_r, in_w = os.pipe2(os.O_CLOEXEC) if stdin else (-1, -1)
    try:
        runc.run(
            *args,
            container_id,
            stdin=in_r if stdin else (null if null >= 0 else None),
            stdout=out_w,
            stderr=err_w,
        )
    except BaseException:
        for fd in (out_r, err_r, in_w):
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        # Only the process may hold these ends, or EOF never comes.
        for fd in (out_w, err_w, in_r):
            if fd >= 0:
                os.close(fd)
    return Stdio(loop, [(b"stdout", out_r), (b"stderr", err_r)], in_w)


def read_pid(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return int(f.read().strip())
    except (OSError, ValueError) as exc:
        raise RuncError(f"runc left no usable pid file {path}: {exc}") from None
