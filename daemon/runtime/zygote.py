"""The daemon's side of the shim zygote: start it, fork shims through it, restart it.

    zygote = ShimZygote(state_dir)
    await zygote.start()          # optional: fork() starts it when needed
    forked = await zygote.fork(shim_args, ready_w, log_fd)
    await zygote.close()          # at daemon exit; shims keep running

A launched shim costs two Python start-ups before `runc create` (~100 ms on
a busy 2-core node) and a private copy of the interpreter's heap; a shim
forked from the zygote (pyctr/shim/zygote.py) costs a fork and shares those
pages (see docs/profiling.md for the figures). `fork` returns False whenever
the zygote cannot take the request (not running and cannot be restarted, or
it refused), and the caller then launches the shim the classic way: the
zygote is an optimisation, never a dependency.

The zygote is the daemon's child in a session of its own. It exits when the
daemon's end of the socketpair closes (daemon stopped or killed); the shims
it forked are not its children and outlive it as they outlive the daemon.
A dead zygote is restarted on the next fork, at most every RETRY_AFTER
seconds.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pyctr.shim

log = logging.getLogger("pyctr.shim_zygote")

ZYGOTE_MAIN = str(Path(pyctr.shim.__file__).resolve().parent / "zygote.py")
ZYGOTE_LOG = "shim-zygote.log"
START_TIMEOUT = 20.0
REPLY_TIMEOUT = 10.0
RETRY_AFTER = 10.0  # after a failed start, launch shims classically this long


class ShimZygote:
    def __init__(self, state_dir: str | Path, *, python: str = sys.executable) -> None:
        self.state_dir = Path(state_dir)
        self.python = python
        self._proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._lock = asyncio.Lock()
        self._retry_at = 0.0
        self.pid = 0
        self.starts = 0  # how many times a zygote was started (tests, stats)

    @property
    def running(self) -> bool:
        return self._sock is not None and self._proc is not None and self._proc.returncode is None

    async def start(self) -> bool:
        """Start the zygote if it is not running; False if it could not be."""
        async with self._lock:
            return await self._ensure()

    async def fork(self, args: list[str], ready_w: int, log_fd: int) -> bool:
        """Ask the zygote for a shim running with `args`, readiness on ready_w.

        True: the request was handed over; the outcome arrives on the ready
        pipe as for a launched shim (if the zygote died meanwhile, it holds
        ready_w no longer, and the pipe says so). False: no shim was forked;
        launch one instead.
        """
        async with self._lock:
            if not await self._ensure():
                return False
            assert self._sock is not None
            message = json.dumps({"args": args}).encode()
            fds = array.array("i", [ready_w, log_fd])
            try:
                self._sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            except OSError as e:  # dead, or wedged (a full buffer): nothing was sent
                log.warning("shim zygote %d cannot take requests (%s); restarting it", self.pid, e)
                await self._stop()
                return False
            try:
                async with asyncio.timeout(REPLY_TIMEOUT):
                    data = await asyncio.get_running_loop().sock_recv(self._sock, 4096)
            except (TimeoutError, OSError) as e:
                data = b""
                log.warning("shim zygote %d did not answer (%s)", self.pid, e or "timeout")
            if not data:
                # Forked or not, the ready pipe tells once the zygote is gone.
                await self._stop()
                return True
            reply = _parse(data)
            if reply.get("ok"):
                return True
            log.warning("shim zygote %d refused: %s", self.pid, reply.get("error"))
            return False

    async def close(self) -> None:
        """Stop the zygote (its shims keep running)."""
        async with self._lock:
            await self._stop()

    # -- the process ------------------------------------------------------

    async def _ensure(self) -> bool:
        if self.running:
            return True
        if self._proc is not None or self._sock is not None:
            log.warning("shim zygote %d died; starting another", self.pid)
            await self._stop()
        if time.monotonic() < self._retry_at:
            return False
        try:
            await self._start()
            return True
        except Exception as e:
            log.error("cannot start the shim zygote (shims are launched instead): %s", e)
            await self._stop()
            self._retry_at = time.monotonic() + RETRY_AFTER
            return False

    async def _start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with open(self.state_dir / ZYGOTE_LOG, "ab") as zlog:
                cmd = [self.python, "-I", "-S", ZYGOTE_MAIN, "--control-fd", str(theirs.fileno())]
                self._proc = await asyncio.create_subprocess_exec(
                    *cmd, "--state", str(self.state_dir),
                    stdin=asyncio.subprocess.DEVNULL, stdout=zlog, stderr=zlog,
                    pass_fds=(theirs.fileno(),), start_new_session=True,
                )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self.pid = self._proc.pid
        self.starts += 1
        async with asyncio.timeout(START_TIMEOUT):
            data = await asyncio.get_running_loop().sock_recv(ours, 4096)
        if not _parse(data).get("ready"):
            raise RuntimeError(f"the zygote exited or said {data[:200]!r}")
        log.info("shim zygote %d ready", self.pid)

    async def _stop(self) -> None:
        sock, self._sock = self._sock, None
        proc, self._proc = self._proc, None
        if sock is not None:
            sock.close()  # the zygote reads EOF and exits
        if proc is None:
            return
        try:
            async with asyncio.timeout(5.0):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()


def _parse(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data.decode(errors="replace"))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
