"""Shim test harness: bundles, spawned shims, and cleanup that survives failures."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyctr.daemon.runtime.shim_launch import read_shim_pid, spawn_shim
from pyctr.daemon.runtime.shim_rpc import ShimClient, connect_shim
from pyctr.daemon.runtime.shim_types import ShimOptions
from tests.conftest import TOKEN, new_base, safe_rmtree
from tests.shim.bundle import write_bundle
from tests.support import cgroups

RUNC = shutil.which("runc") or "runc"
CGROUP_PARENT = "pyctr-test"

pytestmark = pytest.mark.root


def runc(root: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RUNC, "--root", str(root), *args], capture_output=True, text=True, check=check
    )


def zombies_of(pid: int) -> list[int]:
    """Children of pid in Z state."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid and fields[0] == "Z":
                out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Harness:
    """Makes bundles and shims under one short base dir; cleans them all up."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.runc_root = base / "runc"
        self.runc_root.mkdir(mode=0o700)
        self.options: list[ShimOptions] = []
        self.clients: list[ShimClient] = []

    def cgroup_path(self, name: str) -> str:
        return f"/{CGROUP_PARENT}/{TOKEN}-{name}"

    def cgroup_dirs(self, name: str) -> list[Path]:
        return [p for p in cgroups.dirs(self.cgroup_path(name)) if p.is_dir()]

    def options_for(
        self,
        name: str,
        args: list[str],
        *,
        tty: bool = False,
        stdin: bool = False,
        log_path: Path | None = None,
        edit: Callable[[dict[str, Any]], None] | None = None,
    ) -> ShimOptions:
        d = self.base / name
        bundle = write_bundle(d / "bundle", args, self.cgroup_path(name), tty=tty, edit=edit)
        opts = ShimOptions(
            id=f"{TOKEN}-{name}",
            bundle=str(bundle),
            state_dir=str(d / "s"),
            runc=RUNC,
            runc_root=str(self.runc_root),
            log_path=str(log_path if log_path is not None else d / "ctr.log"),
            tty=tty,
            stdin=stdin,
        )
        self.options.append(opts)
        return opts

    async def spawn(self, name: str, args: list[str], **kw: Any) -> ShimClient:
        client = await spawn_shim(self.options_for(name, args, **kw))
        self.clients.append(client)
        return client

    async def connect(self, opts: ShimOptions) -> ShimClient:
        client = await connect_shim(opts.state_dir)
        self.clients.append(client)
        return client

    def log_of(self, opts: ShimOptions) -> str:
        assert opts.log_path
        return Path(opts.log_path).read_text()

    async def close_clients(self) -> None:
        for client in self.clients:
            await client.close()
        self.clients.clear()

    def cleanup(self) -> None:
        for opts in self.options:
            pid = read_shim_pid(opts.state_dir)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            runc(self.runc_root, "delete", "--force", opts.id)
        for opts in self.options:
            name = opts.id.removeprefix(f"{TOKEN}-")
            for d in self.cgroup_dirs(name):
                with contextlib.suppress(OSError):
                    d.rmdir()

    def shim_errors(self) -> list[str]:
        """Lines where a shim's loop caught an exception: always a bug."""
        out = []
        for opts in self.options:
            with contextlib.suppress(FileNotFoundError):
                text = (Path(opts.state_dir) / "shim.log").read_text()
                out += [line for line in text.splitlines() if "] error: " in line]
        return out


@pytest.fixture
async def harness() -> Any:
    h = Harness(new_base("shim"))
    try:
        yield h
        assert h.shim_errors() == []
    finally:
        await h.close_clients()
        h.cleanup()
        safe_rmtree(h.base)


@pytest.fixture(scope="session", autouse=True)
def _cgroup_parent() -> Iterator[None]:
    yield
    # runc makes the shared parent; remove it when the tests leave it empty.
    for parent in cgroups.dirs(f"/{CGROUP_PARENT}"):
        with contextlib.suppress(OSError):
            parent.rmdir()
