"""Fixtures for the container tests: test images in a real registry, and a
daemon whose containers are all removed when the test ends.

    def test_x(ctr: Ctr) -> None:
        cid = ctr.run(["sh", "-c", "exit 3"]).id          # native API, image pulled
        assert ctr.wait(cid).exit_code == 3
        res = ctr.cli("ps", "-a")                          # the real `pyctr` client
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from pyctr.proto import containers_pb2 as pb
from pyctr.proto import containers_pb2_grpc, images_pb2, images_pb2_grpc
from tests.support.daemon import PyctrDaemon
from tests.support.images import build_image, busybox_layer, push, tar_bytes
from tests.support.registry import Registry
from tests.support.timing import scaled

# Applets the tests call by name, on top of the ones busybox_layer() links.
EXTRA_APPLETS = ("stty", "hostname", "tty", "kill", "grep", "mkdir", "touch", "seq", "ip", "head")


def applets_layer() -> bytes:
    entries: list[Any] = []
    for name in EXTRA_APPLETS:
        info = tarfile.TarInfo(f"bin/{name}")
        info.type = tarfile.SYMTYPE
        info.linkname = "busybox"
        info.mode = 0o777
        info.mtime = 1_700_000_000
        entries.append(info)
    passwd = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
    for name, data in (("etc/passwd", passwd), ("etc/group", b"root:x:0:\napp:x:1000:\n")):
        info = tarfile.TarInfo(name)
        info.mode = 0o644
        info.mtime = 1_700_000_000
        entries.append((info, data))
    return tar_bytes(entries)


@dataclass
class CtrImages:
    registry: Registry
    busybox: str  # sh, sleep, cat, stty...; Cmd /bin/sh, users root and app
    baduser: str  # the busybox image with User "nosuchuser"


@pytest.fixture(scope="session")
def ctr_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CtrImages]:
    base = tmp_path_factory.mktemp("ctr-images")
    layout = base / "oci"
    layers = [busybox_layer(), applets_layer()]
    with Registry(base) as reg:
        build_image(layout, "busybox", layers, cmd=["/bin/sh"], env=["PATH=/bin"])
        build_image(layout, "baduser", layers, user="nosuchuser")
        push(layout, "busybox", f"{reg.host}/ctr/busybox:1")
        push(layout, "baduser", f"{reg.host}/ctr/baduser:1")
        yield CtrImages(reg, f"{reg.host}/ctr/busybox:1", f"{reg.host}/ctr/baduser:1")


class Ctr:
    """One daemon plus the calls the tests make on it."""

    def __init__(self, daemon: PyctrDaemon, images: CtrImages) -> None:
        self.d = daemon
        self.images = images
        self.image = images.busybox
        self._channel: grpc.Channel | None = None

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = self.d.channel()
        return self._channel

    @property
    def api(self) -> containers_pb2_grpc.ContainersStub:
        return containers_pb2_grpc.ContainersStub(self.channel)

    def reconnect(self) -> None:
        """After a daemon restart."""
        self.close()

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def pull(self, ref: str | None = None) -> None:
        stub = images_pb2_grpc.ImagesStub(self.channel)
        for _ in stub.Pull(images_pb2.ImagePullRequest(reference=ref or self.image), timeout=60):
            pass

    def create(self, args: list[str], **kw: Any) -> pb.ContainerInfo:
        req = pb.ContainerCreateRequest(image=kw.pop("image", self.image), args=args, **kw)
        return self.api.Create(req, timeout=30).container

    def run(self, args: list[str], **kw: Any) -> pb.ContainerInfo:
        req = pb.ContainerCreateRequest(image=kw.pop("image", self.image), args=args, **kw)
        return self.api.Run(req, timeout=30).container

    def get(self, ref: str) -> pb.ContainerInfo:
        return self.api.Get(pb.ContainerGetRequest(container=ref), timeout=10).container

    def wait(self, ref: str, timeout: float = 30) -> pb.ContainerInfo:
        req = pb.ContainerWaitRequest(container=ref)
        return self.api.Wait(req, timeout=scaled(timeout)).container

    def remove(self, ref: str, force: bool = True) -> None:
        self.api.Remove(pb.ContainerRemoveRequest(container=ref, force=force), timeout=30)

    def list(self, all: bool = True) -> list[pb.ContainerInfo]:
        return list(self.api.List(pb.ContainerListRequest(all=all), timeout=10).containers)

    def remove_all(self) -> None:
        for c in self.list():
            with contextlib.suppress(grpc.RpcError):
                self.remove(c.id)

    def active_snapshots(self) -> set[str]:
        """Keys of the writable snapshots (containers' rootfs) in the daemon's metadata."""
        db = sqlite3.connect(self.d.root / "meta.db")
        try:
            rows = db.execute("SELECT key FROM snap_snapshots WHERE kind = 'active'").fetchall()
        finally:
            db.close()
        return {key for (key,) in rows}

    def cli(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.d.ctl(*args, **kw)

    def cli_cmd(self, *args: str) -> tuple[list[str], dict[str, str]]:
        """argv and env for running `pyctr` yourself (Popen, a pty)."""
        env = {**os.environ, "PYCTR_ADDRESS": self.d.address}
        return [sys.executable, "-m", "pyctr.ctl.main", *args], env


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def ctr(pyctrd: PyctrDaemon, ctr_images: CtrImages) -> Iterator[Ctr]:
    c = Ctr(pyctrd, ctr_images)
    c.pull()
    yield c
    with contextlib.suppress(grpc.RpcError):
        if pyctrd.proc is not None and pyctrd.proc.poll() is None:
            c.remove_all()
    c.close()


@pytest.fixture
def ctr_factory(
    daemon_factory: Callable[..., PyctrDaemon], ctr_images: CtrImages
) -> Iterator[Callable[..., Ctr]]:
    """More daemons (other config); their containers are removed at the end."""
    made: list[Ctr] = []

    def make(config_toml: str = "", pull: bool = True) -> Ctr:
        c = Ctr(daemon_factory(config_toml), ctr_images)
        if pull:
            c.pull()
        made.append(c)
        return c

    yield make
    for c in made:
        with contextlib.suppress(grpc.RpcError):
            if c.d.proc is not None and c.d.proc.poll() is None:
                c.remove_all()
        c.close()


def log_of(path: str | Path) -> str:
    with contextlib.suppress(OSError):
        return Path(path).read_text(errors="replace")
    return ""
