"""The streaming server's view of pyctr's runtime manager.

Resolved when the client arrives, not when the URL is made: the container
may have stopped in between, and then the client gets a clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
from typing import Any

from pyctr.daemon.errors import PyctrError
from pyctr.daemon.spec.oci import exec_process
from pyctr.daemon.streaming.remotecommand import Started
from pyctr.daemon.streaming.requests import AttachRequest, ExecRequest

KILL_WAIT = 5.0  # how long an abandoned exec may take to die after SIGKILL


class RuntimeBackend:
    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime  # pyctr.daemon.runtime.manager.RuntimeManager

    async def start_exec(self, req: ExecRequest) -> Started:
        container = self.runtime.store.get(req.container_id)
        shim = self.runtime.shim(container.id)
        process = exec_process(container.spec, list(req.cmd), tty=req.tty)
        exec_id = "stream-" + secrets.token_hex(8)
        stream = await shim.exec(exec_id, process, tty=req.tty, stdin=req.stdin)

        async def abandon() -> None:
            # The client is gone: nobody will see this process's output or
            # send it input, so it must not outlive the session (as with a
            # closed terminal, but without relying on it noticing).
            with contextlib.suppress(PyctrError, TimeoutError):
                await shim.kill(signal.SIGKILL, exec_id=exec_id)
                async with asyncio.timeout(KILL_WAIT):
                    await shim.wait(exec_id)  # reaped: nothing is left when the session ends

        return Started(stream, abandon, close_stdin_on_eof=True, report_exit=True)

    async def attach(self, req: AttachRequest) -> Started:
        container = self.runtime.store.get(req.container_id)
        shim = self.runtime.shim(container.id)
        stream = await shim.attach()

        async def detach() -> None:
            pass  # the container goes on; closing the stream is all

        # With stdin_once the container's stdin ends when the first attached
        # client closes its stdin; otherwise other clients may still type.
        stdin_once = container.stdin_once
        return Started(stream, detach, close_stdin_on_eof=stdin_once, report_exit=False)
