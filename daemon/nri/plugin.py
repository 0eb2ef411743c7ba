"""One connected NRI plugin: its identity, subscription and calls.

A plugin reaches pyctr either by connecting to the NRI socket (external) or
by being started from the plugin directory with one end of a socket pair in
fd 3 (launched). Either way it registers with a name and a two-digit index,
is configured (it answers with the events it wants), synchronized, and from
then on called at the events it subscribed to.

A call that errors is the plugin's answer (the caller fails the CRI call);
a call that outlives the request timeout, or a connection that breaks,
means the plugin is gone: it is disconnected and the event goes on without
it, as containerd does, so one stuck plugin cannot stop the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from pyctr.daemon import metrics
from pyctr.daemon.errors import FailedPrecondition
from pyctr.daemon.nri.ttrpc import Connection, TtrpcError
from pyctr.proto import nri_pb2 as nri

log = logging.getLogger("pyctr.nri")

# The API packages served: v1alpha1 (what the stub speaks) and v1beta1 (the
# newer module's, the same messages and field numbers for what pyctr calls).
# A plugin is called in the package it registered with.
API_PACKAGES = ("nri.pkg.api.v1alpha1", "nri.pkg.api.v1beta1")
RUNTIME_SERVICES = {f"{api}.Runtime": api for api in API_PACKAGES}
# Every event a plugin may subscribe to: bit (event - 1) of the mask.
VALID_EVENTS = (1 << (nri.LAST - 1)) - 1
INDEX_RE = re.compile(r"^[0-9]{2}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

M = TypeVar("M", bound=Message)


class PluginFailed(FailedPrecondition):
    """The plugin answered an error status (`code`, a gRPC code)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.status = code


class PluginGone(Exception):
    """The plugin timed out or its connection broke; it has been disconnected."""


def event_bit(event: int) -> int:
    return 1 << (event - 1)


def event_names(mask: int) -> list[str]:
    return [
        nri.Event.Name(e)  # type: ignore[arg-type]
        for e in range(1, nri.LAST)
        if mask & event_bit(e)
    ]


class Plugin:
    def __init__(self, *, external: bool, pid: int = 0) -> None:
        self.conn: Connection  # attached once the runtime service handler exists
        self.external = external
        self.pid = pid  # a launched plugin's process, ours to stop and reap
        self._reaped = False
        self.name = ""
        self.idx = ""
        self.events = 0
        self.config = ""
        self.connected_at = time.time_ns()
        self.registered = asyncio.get_running_loop().create_future()
        self.api = API_PACKAGES[0]
        self.synchronized = False

    @property
    def full_name(self) -> str:
        return f"{self.idx or '??'}-{self.name or 'plugin'}"

    @property
    def sort_key(self) -> tuple[str, str]:
        return self.idx, self.name

    def subscribed(self, event: int) -> bool:
        return bool(self.events & event_bit(event))

    def register(self, req: nri.RegisterPluginRequest, api: str) -> None:
        """RegisterPlugin from the plugin (in API package `api`): check and
        take its identity."""
        if self.registered.done():
            raise TtrpcError(9, "plugin already registered")  # FAILED_PRECONDITION
        self.api = api
        if self.external:
            why = ""
            if not NAME_RE.match(req.plugin_name):
                why = f"invalid plugin name {req.plugin_name[:80]!r}"
            elif not INDEX_RE.match(req.plugin_idx):
                why = f"invalid plugin index {req.plugin_idx[:8]!r} (two digits)"
            if why:
                self.registered.set_exception(PluginGone(why))
                raise TtrpcError(3, why)  # INVALID_ARGUMENT, then the hang-up
            self.name, self.idx = req.plugin_name, req.plugin_idx
        self.registered.set_result(None)

    @property
    def is_registered(self) -> bool:
        f = self.registered
        return f.done() and not f.cancelled() and f.exception() is None

    async def call(self, method: str, request: Message, reply: type[M], timeout: float) -> M:
        """Call the plugin; PluginGone (and disconnected) if it does not answer in time."""
        started = time.monotonic()
        result = "ok"
        try:
            data = await self.conn.call(
                f"{self.api}.Plugin", method, request.SerializeToString(), timeout
            )
        except TtrpcError as e:
            result = "error"
            raise PluginFailed(
                f"NRI plugin {self.full_name}: {method}: {e.message}", e.code
            ) from None
        except (TimeoutError, ConnectionError, OSError) as e:
            result = "timeout" if isinstance(e, TimeoutError) else "lost"
            why = "timed out" if isinstance(e, TimeoutError) else f"connection lost ({e})"
            log.error("NRI plugin %s: %s %s: disconnecting it", self.full_name, method, why)
            self.close()
            raise PluginGone(f"{self.full_name}: {method} {why}") from None
        finally:
            metrics.NRI_CALLS.labels(self.full_name, method, result).inc()
            metrics.NRI_SECONDS.labels(method).observe(time.monotonic() - started)
        answer = reply()
        try:
            answer.ParseFromString(data)
        except DecodeError:
            log.error(
                "NRI plugin %s: %s: undecodable answer: disconnecting it", self.full_name, method
            )
            self.close()
            raise PluginGone(f"{self.full_name}: bad {method} answer") from None
        return answer

    def close(self) -> None:
        self.conn.close()
        if self.pid and not self._reaped:
            # Our child, not yet reaped: the PID cannot belong to anyone else.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    async def reap(self) -> None:
        """Wait for a launched plugin's process once its connection is closed."""
        if self.pid and not self._reaped:
            with contextlib.suppress(ChildProcessError):
                await asyncio.to_thread(os.waitpid, self.pid, 0)
            self._reaped = True

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.idx,
            "kind": "external" if self.external else "launched",
            "pid": self.pid or self.conn.peer_pid or 0,
            "events": event_names(self.events),
            "api": self.api.rsplit(".", 1)[-1],
            "connected_at": self.connected_at,
            "synchronized": self.synchronized,
        }
