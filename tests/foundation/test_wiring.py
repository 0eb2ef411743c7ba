"""The daemon's wiring in-process: start builds everything, stop (or a failed
start) tears down what was built, so the same root can be started again."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

import grpc
import pytest

from pyctr.daemon.cgroups import Cgroups
from pyctr.daemon.config import Config
from pyctr.daemon.daemon import Daemon, StartupError
from pyctr.proto import system_pb2, system_pb2_grpc

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pyctrd runs as root")


def _config(tmp_path: Path) -> Config:
    return Config(
        root=str(tmp_path / "root"),
        state=str(tmp_path / "state"),
        address=str(tmp_path / "state" / "pyctr.sock"),
    )


def _lock_is_free(directory: Path) -> bool:
    fd = os.open(directory / "pyctrd.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


async def test_start_serves_and_stop_releases_everything(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    daemon = Daemon(cfg, Cgroups.resolve("cgroupfs"))
    await daemon.start()
    try:
        ctx = daemon.ctx
        # Each store and manager was built and handed to the others.
        assert ctx.images.snapshotter is ctx.snapshotter
        assert ctx.images.content is ctx.content
        assert ctx.sandboxes.runtime is ctx.runtime
        assert ctx.streaming.base_url  # bound: it can hand out URLs
        async with grpc.aio.insecure_channel(f"unix:{cfg.address}") as ch:
            info = await system_pb2_grpc.SystemStub(ch).Info(system_pb2.InfoRequest())
        assert (info.root, info.pid) == (cfg.root, os.getpid())
        assert not _lock_is_free(cfg.root_dir)
    finally:
        await daemon.stop()
    assert not Path(cfg.address).exists()
    assert _lock_is_free(cfg.root_dir) and _lock_is_free(cfg.state_dir)
    await daemon.stop()  # idempotent


async def test_failed_start_tears_down_what_it_built(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    cfg.cri.streaming.port = busy.getsockname()[1]  # streaming comes late in the order
    try:
        daemon = Daemon(cfg, Cgroups.resolve("cgroupfs"))
        with pytest.raises(StartupError, match="address already in use"):
            await daemon.start()
    finally:
        busy.close()
    # The root, state and metadata built before it are let go again.
    assert _lock_is_free(cfg.root_dir) and _lock_is_free(cfg.state_dir)
    assert not Path(cfg.address).exists()
    cfg.cri.streaming.port = 0
    again = Daemon(cfg, Cgroups.resolve("cgroupfs"))
    await again.start()
    await again.stop()
