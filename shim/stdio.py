"""The shim's ends of a process's stdio: output pumped to sinks, stdin queued.

A process has either pipes (stdout, stderr, optional stdin) or one pty master
that carries output and input both. Output is read as it comes and handed to
every sink (the CRI log, attached clients, an exec's capture buffer); stdin
data is queued and written when the pipe has room, so a process that does not
read its stdin never blocks the shim.
"""

from __future__ import annotations

import os
import sys

from pyctr.shim.loop import Loop

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and collections.abc cost memory at run time
    from collections.abc import Callable

    Sink = Callable[[bytes, bytes], None]

READ_SIZE = 65536


def read_some(fd: int, size: int = READ_SIZE) -> bytes | None:
    """One read of a non-blocking fd: None if nothing is there yet, b"" at EOF.

    EIO (a pty master whose every slave side is closed and read) counts as EOF.
    """
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return None
    except OSError:
        return b""


STDIN_HIGH_WATER = 1 << 20


class Stdio:
    def __init__(
        self, loop: Loop, outputs: list[tuple[bytes, int]], stdin: int = -1, master: int = -1
    ) -> None:
        """outputs: (stream name, fd) pairs; stdin: our write end of the process's stdin.

        For a tty, master is the pty master: the one output and, if the
        process has stdin, its stdin too. It stays open until close() so the
        window can be resized.
        """
        self.loop = loop
        self.master = master
        self.tty = master >= 0
        self.sinks: list[Sink] = []
        self.on_eof: Callable[[], None] | None = None
        self.on_stdin_drained: Callable[[], None] | None = None
        self._open: dict[int, bytes] = {}  # output fds not at EOF yet
        self._paused = False
        self.stdin = stdin
        self._stdin_queue = bytearray()
        self._stdin_closing = False
        for stream, fd in outputs:
            os.set_blocking(fd, False)
            self._open[fd] = stream
            self._watch(fd)
        if stdin >= 0:
            os.set_blocking(stdin, False)

    @property
    def at_eof(self) -> bool:
        return not self._open

    @property
    def stdin_open(self) -> bool:
        return self.stdin >= 0 and not self._stdin_closing

    @property
    def stdin_backlog(self) -> int:
        return len(self._stdin_queue)

    # -- output ------------------------------------------------------------

    def _watch(self, fd: int) -> None:
        def readable() -> None:
            self._read_once(fd)

        self.loop.add_reader(fd, readable)

    def _read_once(self, fd: int) -> bool:
        """Hand what one read gives to the sinks; False if there was nothing."""
        data = read_some(fd)
        if data is None:
            return False
        if data:
            stream = self._open[fd]
            for sink in list(self.sinks):
                sink(stream, data)
        else:
            self._eof(fd)
        return True

    def _eof(self, fd: int) -> None:
        self.loop.remove_reader(fd)
        del self._open[fd]
        if fd != self.master:  # the pty master stays open until close()
            os.close(fd)
        if not self._open and self.on_eof is not None:
            self.on_eof()

    def pause_output(self) -> None:
        """Stop reading output (a slow attached client); the process blocks on a full pipe."""
        if not self._paused:
            self._paused = True
            for fd in self._open:
                self.loop.remove_reader(fd)

    def resume_output(self) -> None:
        if self._paused:
            self._paused = False
            for fd in self._open:
                self._watch(fd)

    def drain(self) -> None:
        """Read whatever output is buffered right now, without waiting for more."""
        for fd in list(self._open):
            while fd in self._open and self._read_once(fd):
                pass

    # -- stdin -------------------------------------------------------------

    def write_stdin(self, data: bytes) -> bool:
        """Queue data for the process; False if stdin is closed."""
        if not self.stdin_open:
            return False
        if data:
            self._stdin_queue += data
            self._flush_stdin()
        return True

    def close_stdin(self) -> None:
        """EOF for the process once queued data is written (^D on a tty)."""
        if not self.stdin_open:
            return
        if self.tty:
            # A tty has no EOF of its own: the line discipline turns ^D into one.
            self._stdin_queue += b"\x04"
        self._stdin_closing = True
        self._flush_stdin()

    def _flush_stdin(self) -> None:
        fd = self.stdin
        while self._stdin_queue:
            try:
                n = os.write(fd, self._stdin_queue[:READ_SIZE])
            except BlockingIOError:
                self.loop.add_writer(fd, self._flush_stdin)
                return
            except OSError:  # EPIPE/EIO: the reader is gone, nothing more can be delivered
                self._stdin_queue.clear()
                break
            del self._stdin_queue[:n]
        self.loop.remove_writer(fd)
        if self._stdin_closing and not self.tty:
            self._close_stdin_fd()
        if self.on_stdin_drained is not None:
            self.on_stdin_drained()

    def _close_stdin_fd(self) -> None:
        fd, self.stdin = self.stdin, -1
        if fd >= 0:
            self.loop.forget(fd)
            os.close(fd)

    def resize(self, width: int, height: int) -> None:
        """Set the pty's window size; the process gets SIGWINCH."""
        import fcntl  # only tty processes pay for these two small modules
        import termios

        winsize = b"".join(v.to_bytes(2, sys.byteorder) for v in (height, width, 0, 0))
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, winsize)

    # -- teardown ----------------------------------------------------------

    def close(self) -> None:
        for fd in list(self._open):
            self.loop.forget(fd)
            if fd != self.master:
                os.close(fd)
        self._open.clear()
        self._stdin_queue.clear()
        if self.stdin >= 0 and self.stdin != self.master:
            self.loop.forget(self.stdin)
            os.close(self.stdin)
        self.stdin = -1
        if self.master >= 0:
            self.loop.forget(self.master)
            os.close(self.master)
            self.master = -1
        self.sinks.clear()
