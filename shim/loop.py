"""A minimal epoll loop: fd callbacks, timers and a signal wakeup.

asyncio costs several MB per process (it imports ssl, subprocess, socket,
concurrent.futures...). A shim watches a handful of fds, so a plain epoll
loop with callbacks is enough and keeps each shim small.
"""

# ruff: noqa: SIM105  (contextlib.suppress would import contextlib: memory per shim)

from __future__ import annotations

import _signal  # `signal` wraps this in enums, which costs ~0.9 MB
import heapq
import os
import select
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and collections.abc cost memory at run time
    from collections.abc import Callable

    Callback = Callable[[], None]

_IN = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP
_OUT = select.EPOLLOUT
# What a cgroup v2 file such as memory.events reports when its content changes.
_PRI = select.EPOLLPRI | select.EPOLLERR


class Timer:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when


class Loop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._readers: dict[int, Callback] = {}
        self._writers: dict[int, Callback] = {}
        self._changes: dict[int, Callback] = {}
        self._registered: dict[int, int] = {}
        self._timers: list[Timer] = []
        self.stopped = False
        # Where exceptions escaping callbacks go; the loop itself carries on.
        self.on_error: Callable[[BaseException], None] | None = None

    def report(self, exc: BaseException) -> None:
        if self.on_error is not None:
            self.on_error(exc)

    # -- fds ---------------------------------------------------------------

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._readers[fd] = callback
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._writers[fd] = callback
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    def add_change_watch(self, fd: int, callback: Callback) -> None:
        """Call back when a kernfs file (a cgroup's memory.events) changes.

        Such a file always polls readable; a change shows as EPOLLPRI until
        the file is read again.
        """
        self._changes[fd] = callback
        self._update(fd)

    def forget(self, fd: int) -> None:
        """Drop every callback of fd (call before closing it)."""
        self._readers.pop(fd, None)
        self._writers.pop(fd, None)
        self._changes.pop(fd, None)
        self._update(fd)

    def _update(self, fd: int) -> None:
        mask = (_IN if fd in self._readers else 0) | (_OUT if fd in self._writers else 0)
        mask |= _PRI if fd in self._changes else 0
        old = self._registered.get(fd)
        if mask == old:
            return
        if not mask:
            if old is None:
                return
            del self._registered[fd]
            try:
                self._epoll.unregister(fd)
            except OSError:  # already closed elsewhere
                pass
        elif old is None:
            self._epoll.register(fd, mask)
            self._registered[fd] = mask
        else:
            self._epoll.modify(fd, mask)
            self._registered[fd] = mask

    # -- timers ------------------------------------------------------------

    def call_later(self, delay: float, callback: Callback) -> Timer:
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, timer)
        return timer

    # -- signals -----------------------------------------------------------

    def watch_signals(self, signums: tuple[int, ...], callback: Callback) -> None:
        """Run callback in the loop after any of signums arrived.

        The handlers do nothing themselves; set_wakeup_fd makes the C-level
        handler write to a pipe the loop watches, so a signal that lands while
        the loop sleeps in epoll_wait still wakes it.
        """
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for signum in signums:
            _signal.signal(signum, _ignore_signal)
        _signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)

        def drain() -> None:
            try:
                while os.read(rfd, 512):
                    pass
            except BlockingIOError:
                pass
            callback()

        self.add_reader(rfd, drain)

    # -- running -----------------------------------------------------------

    def stop(self) -> None:
        self.stopped = True

    def run(self) -> None:
        while not self.stopped:
            self.run_once()

    def run_once(self, max_wait: float = 3600.0) -> None:
        timeout = max_wait
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        if self._timers:
            timeout = max(0.0, min(timeout, self._timers[0].when - time.monotonic()))
        events = self._epoll.poll(timeout)
        for fd, mask in events:
            # A callback may have removed or replaced another fd's callbacks.
            if mask & _IN and fd in self._readers:
                self._call(self._readers[fd])
            if mask & (_OUT | select.EPOLLERR | select.EPOLLHUP) and fd in self._writers:
                self._call(self._writers[fd])
            if mask & _PRI and fd in self._changes:
                self._call(self._changes[fd])
        now = time.monotonic()
        while self._timers and (self._timers[0].cancelled or self._timers[0].when <= now):
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._call(timer.callback)

    def _call(self, callback: Callback) -> None:
        try:
            callback()
        except Exception as exc:
            self.report(exc)


def _ignore_signal(signum: int, frame: object) -> None:
    pass
