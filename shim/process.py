"""Processes the shim reaps: the container's init and each exec.

A process is over when it has been reaped *and* its output has been read to
the end (or a short grace has passed: a background child may hold the pipe
forever; for the container's init the shim kills such children first).
Only then is its exit final, so the last lines of output always reach the
log and attached clients before the exit does.
"""

from __future__ import annotations

import binascii
import os

from pyctr.shim.loop import Loop, Timer
from pyctr.shim.protocol import FRAME_STDERR, FRAME_STDOUT
from pyctr.shim.server import Connection
from pyctr.shim.stdio import Stdio

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and collections.abc cost memory at run time
    from collections.abc import Callable
    from typing import Any

    ExitInfo = dict[str, Any]

# Seconds to wait for output EOF after the process is reaped. For the
# container's init a safety net only: the shim kills what is left of the
# container at once (service.Shim.kill_leftovers), which ends the output.
OUTPUT_GRACE = 2.0
ATTACH_HIGH_WATER = 1 << 20  # exec attach: stop reading the process above this backlog
ATTACH_DROP = 4 << 20  # container attach: a client this far behind is dropped
DEFAULT_MAX_OUTPUT = 16 << 20


def exit_info(pid: int, status: int, exited_at: int) -> ExitInfo:
    """The exit record of a wait status; a signal death is 128+signal, as shells say."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        code = 128 + sig
    else:
        sig = 0
        code = os.WEXITSTATUS(status)
    return {
        "pid": pid,
        "exit_status": code,
        "signal": sig,
        "exited_at": exited_at,
        "oom_killed": False,
    }


class Proc:
    """A process of the container: its stdio, its exit, who waits for it."""

    def __init__(self, loop: Loop, pid: int, stdio: Stdio, exec_id: str | None = None) -> None:
        self.loop = loop
        self.pid = pid
        self.stdio = stdio
        self.exec_id = exec_id
        self.reaped: ExitInfo | None = None  # set when reaped, before output is finished
        self.exit: ExitInfo | None = None  # set when final
        self.waiters: list[Callable[[ExitInfo], None]] = []
        self.on_final: Callable[[Proc], None] | None = None
        self._grace: Timer | None = None
        stdio.on_eof = self._maybe_final

    @property
    def running(self) -> bool:
        return self.reaped is None

    def reap(self, status: int, now_ns: int) -> None:
        self.reaped = exit_info(self.pid, status, now_ns)
        # Usually the output's end is already there, behind the last lines.
        self.stdio.drain()
        if self.exit is None and not self.stdio.at_eof:
            self._grace = self.loop.call_later(OUTPUT_GRACE, self.finish)
        self._maybe_final()

    def _maybe_final(self) -> None:
        if self.reaped is not None and self.stdio.at_eof:
            self.finish()

    def finish(self) -> None:
        """Make the exit final now, with whatever output has arrived."""
        if self.exit is not None or self.reaped is None:
            return
        if self._grace is not None:
            self._grace.cancel()
        self.stdio.drain()
        self.exit = self.reaped
        if self.on_final is not None:
            self.on_final(self)
        self.stdio.close()
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter(self.exit)

    def when_final(self, callback: Callable[[ExitInfo], None]) -> None:
        if self.exit is not None:
            callback(self.exit)
        else:
            self.waiters.append(callback)


class ExecProc(Proc):
    """An exec: its output goes to a capture buffer, one attached client, or nowhere."""

    def __init__(
        self, loop: Loop, pid: int, stdio: Stdio, exec_id: str, mode: str, max_output: int
    ) -> None:
        super().__init__(loop, pid, stdio, exec_id)
        self.mode = mode
        self.max_output = max_output
        self.captured = {b"stdout": bytearray(), b"stderr": bytearray()}
        self.truncated = False
        self.timed_out = False
        self.timeout: Timer | None = None
        self.conn: Connection | None = None
        if mode == "capture":
            stdio.sinks.append(self._capture)

    def _capture(self, stream: bytes, data: bytes) -> None:
        buf = self.captured[stream]
        room = self.max_output - len(buf)
        if len(data) > room:
            self.truncated = True
            data = data[: max(0, room)]
        buf += data

    def attach(self, conn: Connection) -> None:
        """Stream this exec's output to conn, with backpressure on the process."""
        self.conn = conn

        def forward(stream: bytes, data: bytes) -> None:
            conn.send_frame(FRAME_STDOUT if stream == b"stdout" else FRAME_STDERR, data)
            if conn.backlog > ATTACH_HIGH_WATER:
                self.stdio.pause_output()

        def detach() -> None:
            # Output nobody reads any more must not keep the process blocked.
            if forward in self.stdio.sinks:
                self.stdio.sinks.remove(forward)
            self.stdio.resume_output()

        conn.on_drained = self.stdio.resume_output
        conn.on_close.append(detach)
        self.stdio.sinks.append(forward)

    def capture_result(self) -> dict[str, Any]:
        assert self.exit is not None
        return {
            "exec_id": self.exec_id,
            **self.exit,
            "stdout": _b64(self.captured[b"stdout"]),
            "stderr": _b64(self.captured[b"stderr"]),
            "truncated": self.truncated,
            "timed_out": self.timed_out,
        }

    def finish(self) -> None:
        if self.timeout is not None:
            self.timeout.cancel()
        super().finish()


def _b64(data: bytes | bytearray) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")
