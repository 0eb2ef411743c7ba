"""The daemon's side of pyctr-shim: start shims, talk to them, clean up after them.

Usage (the runtime manager):

    shim = await spawn_shim(ShimOptions(id=cid, bundle=b, state_dir=d, log_path=p))
    await shim.start()
    async for event in shim.events(): ...        # exit / exec_exit / oom / delete
    res = await shim.exec_sync("probe-1", process_json, timeout=5)
    info = await shim.delete()                  # then unmount info.rootfs yourself

After a daemon restart: `shim = await connect_shim(d)`; if that raises
Unavailable the shim is dead: `await cleanup_dead_shim(d, cid)` removes what
runc still holds and returns the exit record (read from disk, or synthesised).

Every error a shim reports is raised as a pyctr.daemon.errors class (runc's
own failures as RuncError, UNKNOWN), carrying the shim's message. The wire
protocol is in proto/shim_api.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyctr.shim
from pyctr.daemon import errors
from pyctr.daemon.runtime.zygote import ZYGOTE_MAIN, ShimZygote
from pyctr.shim import protocol
from pyctr.shim.protocol import (
    CONSOLE_SOCKET,
    EXIT_RECORD,
    FRAME_CLOSE_STDIN,
    FRAME_EXIT,
    FRAME_RESIZE,
    FRAME_STDERR,
    FRAME_STDIN,
    FRAME_STDOUT,
    PID_FILE,
    SHIM_LOG,
    SOCKET_NAME,
)

log = logging.getLogger("pyctr.runtime")
SHIM_MAIN = str(Path(pyctr.shim.__file__).resolve().parent / "main.py")
_READ_LIMIT = 96 << 20  # a captured exec's output arrives base64'd in one line
_STREAM_LIMIT = 256 << 10


class RuncError(errors.PyctrError):
    """runc refused or failed; the message is runc's own error text."""


_ERRORS: dict[str, type[errors.PyctrError]] = {
    "not_found": errors.NotFound,
    "invalid_argument": errors.InvalidArgument,
    "failed_precondition": errors.FailedPrecondition,
    "already_exists": errors.AlreadyExists,
    "unavailable": errors.Unavailable,
    "deadline_exceeded": errors.DeadlineExceeded,
    "unimplemented": errors.Unimplemented,
    "unsupported_version": errors.FailedPrecondition,
    "runc_failed": RuncError,
    "internal": errors.Internal,
}


def _error(err: Any) -> errors.PyctrError:
    if not isinstance(err, dict):
        return errors.Internal(f"malformed error from shim: {err!r}")
    cls = _ERRORS.get(str(err.get("code")), errors.Internal)
    return cls(str(err.get("message", "")))


# -- data ---------------------------------------------------------------------


@dataclass(frozen=True)
class ShimOptions:
    """What one shim is started with (its command line, see shim_command)."""

    id: str
    bundle: str
    state_dir: str
    runc: str = "runc"
    runc_root: str | None = None  # runc --root; None = runc's default (/run/runc)
    log_path: str | None = None  # CRI log file; None = output only to attached clients
    tty: bool = False
    stdin: bool = False
    debug: bool = False
    start: bool = False  # start the container too (one `runc run`): spawn returns it running
    systemd_cgroup: bool = False  # runc's systemd cgroup driver (cgroupsPath slice:prefix:name)


@dataclass(frozen=True)
class ExitRecord:
    pid: int
    exit_status: int  # 128+signal when killed by a signal
    signal: int  # 0 unless killed by a signal
    exited_at: int  # ns since the epoch
    oom_killed: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExitRecord:
        return cls(
            pid=int(d.get("pid", 0)),
            exit_status=int(d["exit_status"]),
            signal=int(d.get("signal", 0)),
            exited_at=int(d.get("exited_at", 0)),
            oom_killed=bool(d.get("oom_killed", False)),
        )


@dataclass(frozen=True)
class ExecStatus:
    exec_id: str
    pid: int
    running: bool
    exit: ExitRecord | None


@dataclass(frozen=True)
class ShimState:
    id: str
    pid: int
    status: str  # created | running | paused | stopped | deleted
    exit: ExitRecord | None
    shim_pid: int
    bundle: str
    tty: bool
    stdin: bool
    log_path: str | None
    log_dropped: int  # log records lost to write errors (disk full)
    log_error: str
    execs: list[ExecStatus] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShimState:
        execs = [
            ExecStatus(
                e["exec_id"],
                e["pid"],
                e["running"],
                ExitRecord.from_dict(e["exit"]) if e.get("exit") else None,
            )
            for e in d.get("execs", [])
        ]
        return cls(
            id=d["id"],
            pid=d["pid"],
            status=d["status"],
            exit=ExitRecord.from_dict(d["exit"]) if d.get("exit") else None,
            shim_pid=d["shim_pid"],
            bundle=d["bundle"],
            tty=d["tty"],
            stdin=d["stdin"],
            log_path=d.get("log_path"),
            log_dropped=d.get("log_dropped", 0),
            log_error=d.get("log_error", ""),
            execs=execs,
        )


@dataclass(frozen=True)
class ContainerStats:
    """From the container's cgroup; None where the kernel does not say."""

    timestamp: int
    cpu_usage_ns: int | None
    memory_usage: int | None
    memory_working_set: int | None
    memory_rss: int | None
    memory_limit: int | None
    page_faults: int | None
    major_page_faults: int | None
    pids_current: int | None
    pids_limit: int | None


@dataclass(frozen=True)
class ExecResult:
    exec_id: str
    exit: ExitRecord
    stdout: bytes
    stderr: bytes
    truncated: bool  # output beyond max_output was dropped
    timed_out: bool  # the shim killed it when the timeout passed

    @property
    def exit_code(self) -> int:
        return self.exit.exit_status


@dataclass(frozen=True)
class DeleteResult:
    exit: ExitRecord | None
    rootfs: str  # still mounted: unmounting it is the daemon's job
    rootfs_unmounted: bool


@dataclass(frozen=True)
class ShimEvent:
    kind: str  # exit | exec_exit | oom | delete
    container_id: str
    timestamp: int
    exec_id: str | None = None
    exit: ExitRecord | None = None


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
        raise _error(message.get("error"))
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


async def connect_shim(state_dir: str | Path, *, timeout: float = 5.0) -> ShimClient:
    """Connect to a running shim; Unavailable if there is none listening."""
    path = str(Path(state_dir) / SOCKET_NAME)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path, limit=_READ_LIMIT)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise errors.Unavailable(f"shim at {path} is not running: {exc.strerror}") from None
    except TimeoutError:
        raise errors.Unavailable(f"shim at {path} does not answer") from None
    except OSError as exc:
        raise errors.Unavailable(f"cannot reach shim at {path}: {exc}") from None
    client = ShimClient(str(state_dir), reader, writer)
    try:
        async with asyncio.timeout(timeout):
            hello = await client.call("hello")
    except BaseException:
        await client.close()
        raise
    try:
        protocol.check_version(hello.get("version"))
    except protocol.ProtocolError as exc:
        await client.close()
        raise errors.FailedPrecondition(str(exc)) from None
    client.container_id = hello["id"]
    client.shim_pid = hello["shim_pid"]
    return client


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


# -- the client ---------------------------------------------------------------


class ShimClient:
    """One connection to a shim; requests may be issued concurrently."""

    def __init__(
        self, state_dir: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.state_dir = state_dir
        self.socket_path = str(Path(state_dir) / SOCKET_NAME)
        self.container_id = ""
        self.shim_pid = 0
        self.pid = 0  # the container's init, as the shim reported it at spawn
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._closed = False
        self._read_task = asyncio.create_task(self._read_replies())

    async def _read_replies(self) -> None:
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                reply = json.loads(line)
                fut = self._pending.pop(reply.get("id"), None)
                if fut is None or fut.done():
                    continue
                if "error" in reply:
                    fut.set_exception(_error(reply["error"]))
                else:
                    fut.set_result(reply.get("result") or {})
        except (OSError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            self._closed = True
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(
                        errors.Unavailable(f"shim {self.container_id} closed the connection")
                    )
            self._pending.clear()

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request and wait for its reply (the raw protocol; see below)."""
        if self._closed:
            raise errors.Unavailable(f"connection to shim {self.container_id} is closed")
        req_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        line = protocol.encode_request(req_id, op, args)
        try:
            self._writer.write(line)
            await self._writer.drain()
        except OSError as exc:
            self._pending.pop(req_id, None)
            raise errors.Unavailable(f"shim {self.container_id}: {exc}") from None
        try:
            return await fut
        finally:
            self._pending.pop(req_id, None)

    async def close(self) -> None:
        self._closed = True
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        self._read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._read_task

    async def __aenter__(self) -> ShimClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- ops ---------------------------------------------------------------

    async def hello(self) -> dict[str, Any]:
        return await self.call("hello")

    async def state(self) -> ShimState:
        return ShimState.from_dict(await self.call("state"))

    async def start(self) -> int:
        """`runc start`; returns the container's pid."""
        return int((await self.call("start"))["pid"])

    async def kill(
        self, signal: int = signal.SIGTERM, *, all: bool = False, exec_id: str | None = None
    ) -> bool:
        """Signal the container (all its processes with all=True) or one exec.

        A process that already ended is not an error; returns whether it was
        still running.
        """
        reply = await self.call("kill", signal=int(signal), all=all or None, exec_id=exec_id)
        return bool(reply.get("running"))

    async def wait(self, exec_id: str | None = None) -> ExitRecord:
        """The exit of the container (or of an exec), once it has happened."""
        return ExitRecord.from_dict(await self.call("wait", exec_id=exec_id))

    async def pause(self) -> None:
        await self.call("pause")

    async def resume(self) -> None:
        await self.call("resume")

    async def update(self, resources: dict[str, Any]) -> None:
        """`runc update` with an OCI LinuxResources object."""
        await self.call("update", resources=resources)

    async def pids(self) -> list[dict[str, Any]]:
        """[{"pid": host pid, "exec_id": str | None}] of the container's processes."""
        return list((await self.call("pids"))["pids"])

    async def stats(self) -> ContainerStats:
        return ContainerStats(**(await self.call("stats")))

    async def reopen_log(self) -> None:
        await self.call("reopen_log")

    async def resize(self, width: int, height: int, exec_id: str | None = None) -> None:
        await self.call("resize", width=width, height=height, exec_id=exec_id)

    async def close_stdin(self, exec_id: str | None = None) -> None:
        await self.call("close_stdin", exec_id=exec_id)

    async def exec_sync(
        self,
        exec_id: str,
        process: dict[str, Any],
        *,
        timeout: float | None = None,
        max_output: int | None = None,
        tty: bool = False,
    ) -> ExecResult:
        """Run a process to its end and return its output (CRI ExecSync).

        With a timeout the shim kills the process (SIGKILL) when it passes and
        the result says timed_out.
        """
        r = await self.call(
            "exec",
            exec_id=exec_id,
            process=process,
            stdio="capture",
            timeout=timeout,
            max_output=max_output,
            tty=tty or None,
        )
        return ExecResult(
            exec_id=r["exec_id"],
            exit=ExitRecord.from_dict(r),
            stdout=base64.b64decode(r["stdout"]),
            stderr=base64.b64decode(r["stderr"]),
            truncated=r["truncated"],
            timed_out=r["timed_out"],
        )

    async def exec_detached(
        self, exec_id: str, process: dict[str, Any], *, timeout: float | None = None
    ) -> int:
        """Start an exec with no stdio; returns its pid (see wait, events)."""
        r = await self.call("exec", exec_id=exec_id, process=process, stdio="null", timeout=timeout)
        return int(r["pid"])

    async def exec(
        self,
        exec_id: str,
        process: dict[str, Any],
        *,
        tty: bool = False,
        stdin: bool = False,
        timeout: float | None = None,
    ) -> AttachStream:
        """Start an exec whose stdio is streamed (CRI Exec); on its own connection."""
        stream = await AttachStream.open(
            self.socket_path,
            "exec",
            exec_id=exec_id,
            process=process,
            stdio="attach",
            tty=tty or None,
            stdin=stdin or None,
            timeout=timeout,
        )
        return stream

    async def attach(self) -> AttachStream:
        """Stream the container's output from now on; send stdin, resize (CRI Attach)."""
        return await AttachStream.open(self.socket_path, "attach")

    async def events(self) -> AsyncIterator[ShimEvent]:
        """Events from now on, on a connection of their own; ends when the shim goes.

        The first item is the state at subscription time as a "state" event,
        so an exit that happened before subscribing is not missed.
        """
        reader, writer = await _open(self.socket_path)
        try:
            writer.write(protocol.encode_request(0, "subscribe", {}))
            await writer.drain()
            first = json.loads(await reader.readline() or b"null")
            if not isinstance(first, dict) or "error" in first:
                raise _error(first.get("error") if isinstance(first, dict) else first)
            state = ShimState.from_dict(first["result"])
            yield ShimEvent("state", state.id, time.time_ns(), exit=state.exit)
            while line := await reader.readline():
                yield _event(json.loads(line))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def delete(self, *, force: bool = False) -> DeleteResult:
        """`runc delete` (force: even if running); the shim exits afterwards.

        The rootfs stays mounted: the reply names it for the daemon to unmount.
        """
        r = await self.call("delete", force=force or None)
        return DeleteResult(
            exit=ExitRecord.from_dict(r["exit"]) if r.get("exit") else None,
            rootfs=r["rootfs"],
            rootfs_unmounted=r["rootfs_unmounted"],
        )

    async def shutdown(self, *, force: bool = False) -> None:
        """Make the shim exit (force: delete the container first if needed)."""
        await self.call("shutdown", force=force or None)


def _event(d: dict[str, Any]) -> ShimEvent:
    kind = d.get("event", "")
    exit = ExitRecord.from_dict(d) if kind in ("exit", "exec_exit") else None
    return ShimEvent(kind, d.get("id", ""), d.get("timestamp", 0), d.get("exec_id"), exit)


async def _open(
    path: str, limit: int = _READ_LIMIT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_unix_connection(path, limit=limit)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise errors.Unavailable(f"shim at {path} is not running") from None
        raise errors.Unavailable(f"cannot reach shim at {path}: {exc}") from None


class AttachStream:
    """A process's live stdio over a connection of its own.

    read() returns ("stdout" | "stderr", data) until the process ends (then
    None, with .exit set) or the shim goes away (None, .exit stays None).
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: dict[str, Any]
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.pid: int = int(reply.get("pid", 0))
        self.exec_id: str | None = reply.get("exec_id")
        self.exit: ExitRecord | None = None

    @classmethod
    async def open(cls, path: str, op: str, **args: Any) -> AttachStream:
        # A small buffer, so a reader that falls behind slows the process
        # (exec) instead of piling its output up in the daemon.
        reader, writer = await _open(path, _STREAM_LIMIT)
        try:
            writer.write(protocol.encode_request(0, op, args))
            await writer.drain()
            line = await reader.readline()
            if not line:
                raise errors.Unavailable("shim closed the connection")
            reply = json.loads(line)
            if "error" in reply:
                raise _error(reply["error"])
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, reply.get("result") or {})

    async def read(self) -> tuple[str, bytes] | None:
        while True:
            try:
                head = await self._reader.readexactly(5)
                payload = await self._reader.readexactly(int.from_bytes(head[1:], "big"))
            except (asyncio.IncompleteReadError, OSError):
                self._writer.close()  # the shim hung up: nothing more to send either
                return None
            kind = head[0]
            if kind == FRAME_STDOUT:
                return "stdout", payload
            if kind == FRAME_STDERR:
                return "stderr", payload
            if kind == FRAME_EXIT:
                self.exit = ExitRecord.from_dict(json.loads(payload))
                self._writer.close()
                return None

    def __aiter__(self) -> AttachStream:
        return self

    async def __anext__(self) -> tuple[str, bytes]:
        item = await self.read()
        if item is None:
            raise StopAsyncIteration
        return item

    async def _send(self, kind: int, payload: bytes) -> None:
        try:
            self._writer.write(bytes((kind,)) + len(payload).to_bytes(4, "big") + payload)
            await self._writer.drain()
        except OSError as exc:
            raise errors.Unavailable(f"attach stream closed: {exc}") from None

    async def write(self, data: bytes) -> None:
        """Send data to the process's stdin (in frames of at most 64 KiB)."""
        for i in range(0, len(data), 65536):
            await self._send(FRAME_STDIN, data[i : i + 65536])

    async def close_stdin(self) -> None:
        await self._send(FRAME_CLOSE_STDIN, b"")

    async def resize(self, width: int, height: int) -> None:
        await self._send(FRAME_RESIZE, json.dumps({"width": width, "height": height}).encode())

    async def close(self) -> None:
        """Detach; for an exec this closes its stdin."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
