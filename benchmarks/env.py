"""What the measurements share: a temp dir, a registry, pyctrd's, a client pool.

Everything is started lazily on first use, so `--only runc` starts no daemon,
and torn down by `close()` in reverse order even after a failure: pods and
containers removed through CRI, daemons stopped by PID, then a sweep for what
a half-built feature may have left (runc containers under our dirs, processes
whose command line names our dirs, mounts), then the temp dir removed.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import multiprocessing.pool
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import procinfo
from benchmarks.core import NotAvailable, Result

if TYPE_CHECKING:
    from benchmarks.cri import Cri
    from tests.support.daemon import PyctrDaemon
    from tests.support.registry import Registry

# Concurrent API clients, each a process with its own channel.
CLIENTS = 16


@dataclass
class Options:
    runs: int = 20  # iterations of each start/stop measurement
    quick: bool = False
    containers: int = 50  # N in "with N containers"
    scale: tuple[int, ...] = (10, 50, 100)
    api_calls: int = 2000  # sequential calls per latency sample
    api_calls_per_client: int = 300  # under CLIENTS concurrent clients

    @classmethod
    def make(cls, quick: bool, runs: int | None) -> Options:
        if quick:
            return cls(
                runs=runs or 5,
                quick=True,
                containers=5,
                scale=(5,),
                api_calls=300,
                api_calls_per_client=40,
            )
        return cls(runs=runs or 20)


class BenchEnv:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.results: dict[str, Result] = {}
        self.running: set[str] = set()  # measurements under way (baselines may nest)
        # Short path: unix socket paths must stay under 108 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="pyctr-bench-", dir="/tmp"))
        os.chmod(self.base, 0o711)
        self._names = itertools.count()
        self._registry: Registry | None = None
        self._pushed: dict[str, tuple[str, dict[str, Any]]] = {}
        self._daemon: PyctrDaemon | None = None
        self._cri: Cri | None = None
        self._pool: multiprocessing.pool.Pool | None = None
        self._daemons: list[PyctrDaemon] = []
        self.cgroup_root = f"/{self.base.name}"  # PyctrDaemon's cgroup parent too
        self.populated: list[tuple[str, str]] = []  # (pod, container) kept across measurements

    def path(self, name: str) -> Path:
        p = self.base / f"{name}{next(self._names)}"
        p.mkdir(mode=0o711)
        return p

    # -- registry and images --------------------------------------------------

    def registry(self) -> Registry:
        if self._registry is None:
            try:
                from tests.support.registry import Registry
            except ImportError as e:
                raise NotAvailable(f"tests/support/registry.py: {e}") from None
            if not Path("/usr/bin/docker-registry").exists():
                raise NotAvailable("docker-registry is not installed")
            self._registry = Registry(self.path("reg"))
        return self._registry

    def image(self, name: str) -> tuple[str, dict[str, Any]]:
        """Reference of bench image `name` in our registry (built and pushed once)."""
        if name not in self._pushed:
            from benchmarks import imagegen

            try:
                from tests.support.images import push
            except ImportError as e:
                raise NotAvailable(f"tests/support/images.py: {e}") from None
            if shutil.which("skopeo") is None:
                raise NotAvailable("skopeo is not installed (it pushes the bench images)")
            registry = self.registry()
            layout, info = imagegen.layout(imagegen.SPECS[name])
            ref = f"{registry.host}/bench/{name}:{imagegen.TAG}"
            push(layout, imagegen.TAG, ref)
            self._pushed[name] = (ref, info)
        return self._pushed[name]

    # -- pyctrd ---------------------------------------------------------------

    def _config_toml(self) -> str:
        # The pod infra image comes from our registry (there is no internet).
        try:
            host = self.registry().host
        except NotAvailable:
            return ""
        return f'[cri]\nsandbox_image = "{host}/bench/pause:1"\n'

    def new_daemon(self) -> PyctrDaemon:
        from tests.support.daemon import PyctrDaemon

        # Info, not the fixture's debug: a log line per RPC would be measured too.
        d = PyctrDaemon(self.path("d"), self._config_toml(), ["--log-level", "info"])
        self._daemons.append(d)
        return d.start()

    def daemon(self) -> PyctrDaemon:
        """The shared daemon most measurements use."""
        if self._daemon is None:
            self._daemon = self.new_daemon()
        return self._daemon

    def cri(self) -> Cri:
        if self._cri is None:
            from benchmarks.cri import Cri

            self._cri = Cri(self.daemon().address, self.path("logs"), self.cgroup_root)
        return self._cri

    def cri_with_image(self, name: str) -> tuple[Cri, str]:
        """The CRI client, with bench image `name` pulled and the pause image
        pushed (pods pull it); and the image's reference."""
        client = self.cri()
        ref, _ = self.image(name)
        self.image("pause")
        client.pull(ref)
        return client, ref

    @contextlib.contextmanager
    def fresh_daemon(self) -> Iterator[tuple[PyctrDaemon, Cri]]:
        """A daemon on empty dirs, torn down after the block (cold caches)."""
        from benchmarks.cri import Cri

        d = self.new_daemon()
        client = Cri(d.address, d.base / "logs", self.cgroup_root)
        try:
            yield d, client
        finally:
            client.remove_everything()
            client.close()
            self._stop_daemon(d)
            self._daemons.remove(d)

    def populate(self, n: int) -> list[tuple[str, str]]:
        """Keep `n` running pods of one container each in the shared daemon."""
        client = self.cri()
        ref, _ = self.image("small")
        self.image("pause")
        if not self.populated:
            client.pull(ref)
        while len(self.populated) < n:
            self.populated.append(client.pod_with_container(ref))
        return self.populated

    def depopulate(self) -> None:
        client = self.cri()
        while self.populated:
            pod_id, _ = self.populated.pop()
            client.remove_pod_fully(pod_id)

    def _stop_daemon(self, d: PyctrDaemon) -> None:
        with contextlib.suppress(Exception):
            d.stop()
        d.kill()
        self._sweep(d.base)
        shutil.rmtree(d.base, ignore_errors=True)

    def _sweep(self, base: Path) -> None:
        """Clean what a daemon left under `base`: runc containers, processes, mounts."""
        for state in base.rglob("state.json"):
            root, cid = state.parent.parent, state.parent.name
            subprocess.run(
                ["runc", "--root", str(root), "delete", "-f", cid],
                capture_output=True,
                check=False,
                timeout=30,
            )
        for pid in procinfo.find_processes(str(base)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        procinfo.unmount_all(base)

    # -- API client pool ------------------------------------------------------

    def pool(self) -> multiprocessing.pool.Pool:
        """CLIENTS worker processes (spawned, so no grpc state is forked)."""
        if self._pool is None:
            self._pool = multiprocessing.get_context("spawn").Pool(CLIENTS)
        return self._pool

    def close_pool(self) -> None:
        """Stop the client processes (they share pages with, and so lower, others' PSS)."""
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    # -- teardown -------------------------------------------------------------

    def close(self) -> None:
        self.close_pool()
        if self._cri is not None:
            self._cri.remove_everything()
            self._cri.close()
        for d in reversed(self._daemons):
            self._stop_daemon(d)
        if self._registry is not None:
            self._registry.stop()
        self._sweep(self.base)
        procinfo.remove_cgroups(self.base.name)
        shutil.rmtree(self.base, ignore_errors=True)
