"""An in-process streaming server over real shims, runc and busybox containers.

The server is pyctr's own (`StreamingServer` with the daemon's
`RuntimeBackend`); the runtime manager under it is replaced by `ShimRuntime`,
which answers the three questions the backend asks (the container record,
its shim, an exec's process) for containers the test started with the shim
test harness. End-to-end tests through pyctrd's CRI are in test_cri.py.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pyctr.daemon.config import Streaming
from pyctr.daemon.errors import FailedPrecondition, NotFound
from pyctr.daemon.runtime.records import Container
from pyctr.daemon.runtime.shim_rpc import ShimClient
from pyctr.daemon.runtime.states import Status
from pyctr.daemon.streaming.backend import RuntimeBackend
from pyctr.daemon.streaming.server import StreamingServer
from tests.conftest import new_base, safe_rmtree
from tests.shim.conftest import CGROUP_PARENT, Harness
from tests.support import cgroups

pytestmark = pytest.mark.root


class ShimRuntime:
    """The slice of RuntimeManager that RuntimeBackend uses, over harness shims."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.store = self
        self._containers: dict[str, tuple[Container, ShimClient]] = {}

    async def run(
        self, name: str, args: list[str], *, tty: bool = False, stdin: bool = False, **extra: Any
    ) -> Container:
        shim = await self.harness.spawn(name, args, tty=tty, stdin=stdin)
        await shim.start()
        opts = self.harness.options[-1]
        spec = json.loads((Path(opts.bundle) / "config.json").read_text())
        c = Container(id=opts.id, name=name, spec=spec, status=Status.RUNNING, tty=tty, stdin=stdin)
        for key, value in extra.items():  # stdin_once, ...
            setattr(c, key, value)
        self._containers[c.id] = (c, shim)
        return c

    def get(self, cid: str) -> Container:
        if cid not in self._containers:
            raise NotFound(f"container {cid} not found")
        return self._containers[cid][0]

    def shim(self, cid: str) -> ShimClient:
        c, shim = self._containers[self.get(cid).id]
        if not c.status.can_exec:
            raise FailedPrecondition(f"container {cid} is not running")
        return shim


@pytest.fixture
async def runtime() -> AsyncIterator[ShimRuntime]:
    h = Harness(new_base("strm"))
    try:
        yield ShimRuntime(h)
        assert h.shim_errors() == []
    finally:
        await h.close_clients()
        h.cleanup()
        safe_rmtree(h.base)


@pytest.fixture
async def server(runtime: ShimRuntime) -> AsyncIterator[StreamingServer]:
    srv = StreamingServer(
        Streaming(address="127.0.0.1", port=0, token_ttl=5.0, stream_creation_timeout=3.0),
        RuntimeBackend(runtime),
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture(scope="session", autouse=True)
def _cgroup_parent() -> Any:
    yield
    for parent in cgroups.dirs(f"/{CGROUP_PARENT}"):
        with contextlib.suppress(OSError):
            parent.rmdir()
