"""OOM kills in the shim's container cgroup: counted, each announced once.

Kills counted before the container existed are not its own, so the count
starts from the cgroup's at creation. cgroup v2 is watched through a change
watch on memory.events, read again when init is reaped; v1 through the
memory.oom_control eventfd.

Under the systemd driver the scope, and its counters, go as soon as it is
empty, which can be before the shim reaps init (the kernel's notification
runs from a work queue, rate-limited). The parent slice's memory.events
counts its children's kills too, so a SIGKILLed init whose scope is already
gone is OOM-killed when the parent counted a kill since the container began.
"""

from __future__ import annotations

import os

from pyctr.shim.cgroups import Cgroup, parse_keyed
from pyctr.shim.loop import Loop

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs memory at run time
    from collections.abc import Callable


class OomWatch:
    def __init__(self, loop: Loop, cgroup: Cgroup, on_oom: Callable[[int], None]) -> None:
        self.loop = loop
        self.cgroup = cgroup
        self.on_oom = on_oom  # called with the container's kills so far
        self.base = self.seen = cgroup.oom_kills()
        self.parent_base = cgroup.parent_oom_kills()
        self.fd = -1

    def watch(self) -> None:
        self.fd = self.cgroup.open_memory_events()
        if self.fd >= 0:
            self.loop.add_change_watch(self.fd, self._memory_events)
        else:
            self.fd = self.cgroup.oom_eventfd()
            if self.fd >= 0:
                self.loop.add_reader(self.fd, self._eventfd)

    def sample(self, killed: bool) -> None:
        """Init was reaped (killed: by SIGKILL): count its kills while they
        can still be read."""
        if not self.cgroup.unified:
            return
        self._memory_events()
        if killed and self.seen == self.base and not self.cgroup.exists():
            parent = self.cgroup.parent_oom_kills()
            if self.parent_base is not None and parent is not None and parent > self.parent_base:
                self._check(self.base + 1)

    def at_exit(self) -> bool:
        """Whether the container was OOM-killed. A kill not announced yet (no
        event on cgroup v2, or the exit was handled first) is announced now,
        before the exit is; the watch ends."""
        if self.cgroup.unified:
            self._memory_events()
        count = max(self.cgroup.oom_kills(), self.seen)
        self._check(count)
        self.close()
        return count > self.base

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.forget(self.fd)
            os.close(self.fd)
            self.fd = -1

    def _eventfd(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not self.cgroup.exists():
            return  # the eventfd also fires when the cgroup is removed
        # The kernel signals the OOM before its killer counts the kill, so
        # the counter may still show the old number: the signal is the event.
        self._check(max(self.cgroup.oom_kills(), self.seen + 1))

    def _memory_events(self) -> None:
        if self.fd < 0 or not self.cgroup.unified:
            return
        try:
            text = os.pread(self.fd, 4096, 0)  # the read also re-arms the watch
        except OSError:  # the cgroup is gone
            self.close()
            return
        self._check(parse_keyed(text.decode("ascii", "replace")).get("oom_kill", 0))

    def _check(self, count: int) -> None:
        if count > self.seen:
            self.seen = count
            self.on_oom(count - self.base)
