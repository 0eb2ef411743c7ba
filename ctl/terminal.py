"""The client side of an attached process: terminal, stdin, output, signals.

`IOSession.run` drives one Attach or Exec stream (grpc.aio) to its end:
output chunks go to our stdout/stderr, our stdin goes to the process (with
`stdin`), SIGWINCH becomes a resize (with `tty`), SIGINT/SIGTERM/SIGHUP are
forwarded through `forward_signal` when one is given. With a tty on our side
and `tty`, the local terminal is in raw mode for the session, so keys like
Ctrl-C and Ctrl-D reach the container's terminal as bytes, and it is always
restored on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import signal
import struct
import sys
import termios
import threading
import tty
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc

from pyctr.proto import containers_pb2 as pb
from pyctr.shim.stdio import read_some

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
READ_SIZE = 32 * 1024


def terminal_size(fd: int) -> tuple[int, int] | None:
    """(width, height) of the terminal on fd, None if it is not one (or reports 0x0)."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (cols, rows) if cols and rows else None


def local_size() -> tuple[int, int] | None:
    for stream in (sys.stdout, sys.stdin, sys.stderr):
        with contextlib.suppress(ValueError, OSError):
            size = terminal_size(stream.fileno())
            if size:
                return size
    return None


@contextlib.contextmanager
def raw_terminal(tty_process: bool, raw_input: bool) -> Iterator[None]:
    """Our terminal set up for a process that has a terminal of its own.

    raw_input: our stdin goes raw (keys go to the process as typed). Either
    way our stdout stops post-processing output (the process's terminal
    already turned "\n" into "\r\n"). The old settings come back at the end.
    """
    saved: list[tuple[int, list[Any]]] = []
    try:
        if tty_process:
            in_fd, out_fd = sys.stdin.fileno(), sys.stdout.fileno()
            if raw_input and os.isatty(in_fd):
                saved.append((in_fd, termios.tcgetattr(in_fd)))
                tty.setraw(in_fd, termios.TCSANOW)
            if os.isatty(out_fd) and not (saved and _same_file(in_fd, out_fd)):
                attrs = termios.tcgetattr(out_fd)
                saved.append((out_fd, list(attrs)))
                attrs[1] &= ~termios.OPOST
                termios.tcsetattr(out_fd, termios.TCSANOW, attrs)
        yield
    finally:
        for fd, attrs in reversed(saved):
            with contextlib.suppress(termios.error):
                termios.tcsetattr(fd, termios.TCSADRAIN, attrs)


def _same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino, sa.st_rdev) == (sb.st_dev, sb.st_ino, sb.st_rdev)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            import select

            select.select([], [fd], [])
            continue
        view = view[n:]


class IOSession:
    """One attached stream, from its `ready` reply to its `exit`."""

    def __init__(
        self,
        call: Any,
        make_request: Callable[..., Any],
        *,
        tty: bool,
        stdin: bool,
        forward_signal: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.call = call
        self.make_request = make_request  # e.g. pb.ContainerExecRequest
        self.tty = tty
        self.stdin = stdin
        self.forward_signal = forward_signal
        self.exit: pb.ContainerExit | None = None
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()

    async def run(self) -> pb.ContainerExit | None:
        """Pump until the process exits (its exit) or the stream ends (None)."""
        loop = asyncio.get_running_loop()
        writer = asyncio.create_task(self._write_requests())
        cleanups: list[Callable[[], object]] = []
        try:
            with raw_terminal(self.tty, self.stdin):
                if self.stdin:
                    cleanups.append(self._read_stdin(loop))
                if self.tty:
                    loop.add_signal_handler(signal.SIGWINCH, self._resized)
                    cleanups.append(lambda: loop.remove_signal_handler(signal.SIGWINCH))
                if self.forward_signal is not None:
                    for sig in FORWARDED_SIGNALS:
                        loop.add_signal_handler(sig, self._signalled, sig)
                        cleanups.append(functools.partial(loop.remove_signal_handler, sig))
                await self._read_output()
        finally:
            for cleanup in reversed(cleanups):
                with contextlib.suppress(Exception):
                    cleanup()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        return self.exit

    async def _read_output(self) -> None:
        out, err = sys.stdout.fileno(), sys.stderr.fileno()
        sys.stdout.flush()
        while True:
            msg = await self.call.read()
            if msg is None or msg is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            kind = msg.WhichOneof("response")
            if kind == "stdout":
                write_all(out, msg.stdout)
            elif kind == "stderr":
                write_all(err, msg.stderr)
            elif kind == "exit":
                self.exit = msg.exit
                return

    async def _write_requests(self) -> None:
        while True:
            request = await self._outbox.get()
            if request is None:
                return
            await self.call.write(request)

    def _send(self, **fields: Any) -> None:
        self._outbox.put_nowait(self.make_request(**fields))

    def _resized(self) -> None:
        size = local_size()
        if size:
            self._send(resize=pb.ContainerResize(width=size[0], height=size[1]))

    def _signalled(self, sig: int) -> None:
        if self.forward_signal is not None:
            asyncio.ensure_future(self.forward_signal(sig))

    def _read_stdin(self, loop: asyncio.AbstractEventLoop) -> Callable[[], object]:
        """Forward our stdin; returns how to stop. EOF closes the process's stdin."""
        fd = sys.stdin.fileno()

        def got(data: bytes) -> None:
            if data:
                self._send(stdin=data)
            else:
                self._send(close_stdin=True)

        def readable() -> None:
            data = read_some(fd, READ_SIZE)
            if data is None:
                return
            if not data:
                loop.remove_reader(fd)
            got(data)

        try:
            loop.add_reader(fd, readable)
        except (PermissionError, ValueError, OSError):
            # A regular file (epoll refuses those): read it in a thread.
            def pump() -> None:
                while True:
                    data = os.read(fd, READ_SIZE)
                    loop.call_soon_threadsafe(got, data)
                    if not data:
                        return

            threading.Thread(target=pump, daemon=True).start()
            return lambda: None
        return lambda: loop.remove_reader(fd)
