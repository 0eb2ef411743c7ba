"""Starting shims and cleaning up after dead ones.

    shim = await spawn_shim(ShimOptions(id=cid, bundle=b, state_dir=d, log_path=p))
    ...                                         # shim is a connected ShimClient
    record = await cleanup_dead_shim(d, cid)    # after connect_shim raised Unavailable

A shim is forked from the zygote when there is one, launched otherwise; it
reports on a pipe once `runc create` (or `runc run`) succeeded or failed.
cleanup_dead_shim removes what runc still holds after a shim died and returns
the exit record (read from disk, or synthesised). The task dir's files
(pid file, exit record, shim log) are read here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pyctr.shim
from pyctr.daemon import errors
from pyctr.daemon.runtime.shim_rpc import ShimClient, connect_shim
from pyctr.daemon.runtime.shim_types import ExitRecord, RuncError, ShimOptions, shim_error
from pyctr.daemon.runtime.zygote import ZYGOTE_MAIN, ShimZygote
from pyctr.shim import protocol
from pyctr.shim.protocol import CONSOLE_SOCKET, EXIT_RECORD, PID_FILE, SHIM_LOG, SOCKET_NAME

log = logging.getLogger("pyctr.runtime")
SHIM_MAIN = str(Path(pyctr.shim.__file__).resolve().parent / "main.py")


# -- files ---------------------------------------------------------------------


def shim_command(opts: ShimOptions, ready_fd: int = -1, python: str = sys.executable) -> list[str]:
    """The lean command line: no site import, nothing from the environment."""
    cmd = [python, "-I", "-S", SHIM_MAIN, *shim_args(opts)]
    if ready_fd >= 0:
        cmd += ["--ready-fd", str(ready_fd)]
    return cmd


def shim_args(opts: ShimOptions) -> list[str]:
    """The shim's arguments (without --ready-fd), as launched or forked by the zygote."""
    cmd = ["--id", opts.id, "--bundle", opts.bundle]
    cmd += ["--state", opts.state_dir, "--runc", opts.runc]
    if opts.runc_root:
        cmd += ["--runc-root", opts.runc_root]
    if opts.log_path:
        cmd += ["--log-path", opts.log_path]
    flags = (
        ("--tty", opts.tty),
        ("--stdin", opts.stdin),
        ("--start", opts.start),
        ("--systemd-cgroup", opts.systemd_cgroup),
    )
    cmd += [flag for flag, on in flags if on]
    if opts.debug:
        cmd.append("--debug")
    return cmd


def read_exit_record(state_dir: str | Path) -> ExitRecord | None:
    """The exit record a shim wrote when its container ended, if any.

    One that cannot be used (torn by a crash mid-write, another version) is
    logged and treated as missing: the caller then records the exit as lost.
    """
    try:
        data = protocol.read_exit_record(str(Path(state_dir) / EXIT_RECORD))
    except protocol.ExitRecordError as exc:
        log.warning("%s", exc)
        return None
    return None if data is None else ExitRecord.from_dict(data)


def read_shim_pid(state_dir: str | Path) -> int | None:
    """The shim's PID if its pid file names a live shim process for this state dir."""
    try:
        pid = int((Path(state_dir) / PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    # The pid may have been reused since: check it is a shim of this state dir.
    if str(Path(state_dir)).encode() in cmdline and b"--serve" in cmdline:
        return pid  # launched: its own command line names the state dir
    # Forked by the zygote: it shares the zygote's command line, and its
    # stderr is the shim log the daemon opened in this state dir.
    try:
        log_fd = os.readlink(f"/proc/{pid}/fd/2")
    except OSError:
        return None
    if ZYGOTE_MAIN.encode() in cmdline and log_fd == os.path.realpath(Path(state_dir) / SHIM_LOG):
        return pid
    return None


def _write_exit_record(state_dir: Path, record: ExitRecord, container_id: str) -> None:
    path = str(state_dir / EXIT_RECORD)
    protocol.write_exit_record(path, {"id": container_id, **record.__dict__})


def _log_tail(state_dir: str, limit: int = 2000) -> str:
    try:
        with open(Path(state_dir) / SHIM_LOG, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


# -- starting and finding shims -------------------------------------------------


async def spawn_shim(
    opts: ShimOptions,
    *,
    python: str = sys.executable,
    timeout: float = 60.0,
    zygote: ShimZygote | None = None,
) -> ShimClient:
    """Start a shim for a written bundle; returns once `runc create` succeeded
    (with opts.start: once the container runs; its pid is `client.pid`).

    With a zygote the shim is forked from it (no Python start-up); without
    one, or when it cannot take the request, the shim is launched.
    Raises RuncError with runc's message if the container cannot be created,
    InvalidArgument for a bad bundle or id, DeadlineExceeded if the shim does
    not report in time (it is then killed and the runc state removed).
    """
    state = Path(opts.state_dir)
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    ready_r, ready_w = os.pipe()
    proc: asyncio.subprocess.Process | None = None
    try:
        with open(state / SHIM_LOG, "ab") as log:
            forked = zygote is not None and await zygote.fork(
                shim_args(opts), ready_w, log.fileno()
            )
            if not forked:
                proc = await asyncio.create_subprocess_exec(
                    *shim_command(opts, ready_w, python),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(ready_w,),
                )
    except BaseException:
        os.close(ready_r)
        os.close(ready_w)
        raise
    os.close(ready_w)  # the shim holds the only write end now: EOF means it is done
    try:
        async with asyncio.timeout(timeout):
            message = await _read_ready(ready_r)
    except TimeoutError:
        await _abandon(opts)
        raise errors.DeadlineExceeded(
            f"shim for {opts.id} did not report within {timeout:g}s"
        ) from None
    finally:
        if proc is not None:
            await proc.wait()  # the launcher exits right after forking
    if message is None:
        tail = _log_tail(opts.state_dir)
        raise errors.Internal(f"shim for {opts.id} exited without reporting: {tail}")
    if not message.get("ok"):
        raise shim_error(message.get("error"))
    client = await connect_shim(opts.state_dir)
    client.pid = int(message.get("pid") or 0)
    return client


async def _read_ready(fd: int) -> dict[str, Any] | None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        data = await reader.read()
    finally:
        transport.close()
    for line in data.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            if isinstance(message, dict):
                return message
    return None


async def _abandon(opts: ShimOptions) -> None:
    pid = read_shim_pid(opts.state_dir)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    await _runc_delete(opts.id, opts.runc, opts.runc_root, opts.systemd_cgroup)


async def cleanup_dead_shim(
    state_dir: str | Path,
    container_id: str,
    *,
    runc: str = "runc",
    runc_root: str | None = None,
    systemd_cgroup: bool = False,
) -> ExitRecord:
    """After a shim died: kill what is left, remove runc's state, return the exit.

    The container's processes outlived their shim (they were re-parented);
    `runc delete --force` kills them and removes the cgroup and runc's state.
    The exit record is the shim's if it wrote one, otherwise one is written
    now (status 255, as the real status was lost with the shim).
    """
    state = Path(state_dir)
    pid = read_shim_pid(state)
    if pid is not None:  # alive but not answering: it must not race us
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    await _runc_delete(container_id, runc, runc_root, systemd_cgroup)
    record = read_exit_record(state)
    if record is None:
        record = ExitRecord(pid=0, exit_status=255, signal=0, exited_at=time.time_ns())
        if state.is_dir():
            _write_exit_record(state, record, container_id)
    for name in (SOCKET_NAME, PID_FILE, CONSOLE_SOCKET):
        with contextlib.suppress(FileNotFoundError):
            (state / name).unlink()
    return record


async def _runc_delete(
    container_id: str, runc: str, runc_root: str | None, systemd_cgroup: bool = False
) -> None:
    argv = [runc] + (["--root", runc_root] if runc_root else [])
    argv += ["--systemd-cgroup"] if systemd_cgroup else []
    argv += ["delete", "--force"]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        container_id,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    text = err.decode(errors="replace").strip()
    if proc.returncode != 0 and "does not exist" not in text:
        raise RuncError(f"runc delete {container_id}: {text}")
