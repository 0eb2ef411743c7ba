"""The connected shim: one client per shim, requests issued concurrently.

    shim = await connect_shim(state_dir)        # Unavailable if none listens
    await shim.start()
    async for event in shim.events(): ...        # exit / exec_exit / oom / delete
    res = await shim.exec_sync("probe-1", process_json, timeout=5)
    info = await shim.delete()                  # then unmount info.rootfs yourself

Requests and replies are JSON lines on the shim's socket; events and live
stdio (shim_attach) each use a connection of their own. See
proto/shim_api.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pyctr.daemon import errors
from pyctr.daemon.runtime.shim_attach import AttachStream, open_shim_socket
from pyctr.daemon.runtime.shim_types import (
    ContainerStats,
    DeleteResult,
    ExecResult,
    ExitRecord,
    ShimEvent,
    ShimState,
    shim_error,
)
from pyctr.shim import protocol
from pyctr.shim.protocol import SOCKET_NAME

READ_LIMIT = 96 << 20  # a captured exec's output arrives base64'd in one line


async def connect_shim(state_dir: str | Path, *, timeout: float = 5.0) -> ShimClient:
    """Connect to a running shim; Unavailable if there is none listening."""
    path = str(Path(state_dir) / SOCKET_NAME)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path, limit=READ_LIMIT)
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
                    fut.set_exception(shim_error(reply["error"]))
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
        reader, writer = await open_shim_socket(self.socket_path, READ_LIMIT)
        try:
            writer.write(protocol.encode_request(0, "subscribe", {}))
            await writer.drain()
            first = json.loads(await reader.readline() or b"null")
            if not isinstance(first, dict) or "error" in first:
                raise shim_error(first.get("error") if isinstance(first, dict) else first)
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
