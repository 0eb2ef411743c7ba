"""The same figures from containerd (Debian's 1.6), when it is installed.

A private containerd: its own root, state, socket and config in our temp dir
(CRI plugin off: `ctr` talks to its native API, as `pyctr` does to pyctr's),
started and stopped by PID; afterwards its shims, mounts and cgroups are
cleaned. `pyctr_ratio` = pyctr's figure / containerd's, both from this run.

Pulls alternate: each round pulls with a fresh pyctrd and a fresh containerd,
the order swapped every round, so both meet the same machine (other work,
page cache, and ext4's inode allocator, which on this no-journal filesystem
skips inodes freed in the last minutes: the previous run's deleted tree makes
the next run's file creation slower, whoever runs next). `pyctr_ratio` is
median over median; `pyctr_round_ratio` the median of the per-round ratios;
`pyctr_cpu_ratio` compares CPU time (pyctrd vs containerd plus ctr, which
fetches in the client).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from functools import partial

from benchmarks import procinfo
from benchmarks.core import (
    Metrics,
    NotAvailable,
    measurement,
    measurement_each,
    metric,
    ratio,
    summary_ms,
    timed,
)
from benchmarks.env import BenchEnv
from benchmarks.pull import IMAGES, image_sizes, pull_runs, pyctr_pull_once, rates, skip_in_quick

NAMESPACE = "pyctrbench"
DISABLED = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.aufs",
]


class Containerd:
    def __init__(self, env: BenchEnv) -> None:
        if shutil.which("containerd") is None or shutil.which("ctr") is None:
            raise NotAvailable("containerd and ctr are not installed (Debian: containerd)")
        self.dir = env.path("ctd")
        self.address = str(self.dir / "c.sock")
        # Containers' cgroups under the bench's own parent, as pyctrd's are.
        self.cgroup_parent = f"/{env.base.name}"
        self.config = self.dir / "config.toml"
        self.config.write_text(
            "version = 2\n"
            f'root = "{self.dir / "root"}"\n'
            f'state = "{self.dir / "state"}"\n'
            f"disabled_plugins = {DISABLED!r}\n".replace("'", '"')
            + f'[grpc]\n  address = "{self.address}"\n'
            f'[ttrpc]\n  address = "{self.address}.ttrpc"\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{self.dir / "opt"}"\n'
        )
        self.log = self.dir / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._n = 0
        self.ctr_cpu_s = 0.0  # CPU time of the last ctr command

    def start(self) -> Containerd:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while (
            subprocess.run(
                ["ctr", "-a", self.address, "version"], capture_output=True, check=False
            ).returncode
            != 0
        ):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"containerd did not start: {self.log.read_text()[-500:]}")
            time.sleep(0.1)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ctr(self, *args: str, timeout: float = 600) -> None:
        before = _children_cpu()
        res = subprocess.run(
            ["ctr", "-a", self.address, "-n", NAMESPACE, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
        self.ctr_cpu_s = _children_cpu() - before
        if res.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args[:2])}: {res.stderr.decode().strip()[-300:]}")

    def run_detached(self, ref: str, cid: str, *command: str) -> None:
        cgroup = f"{self.cgroup_parent}/{cid}"
        self.ctr("run", "-d", "--null-io", "--net-host", "--cgroup", cgroup, ref, cid, *command)

    def new_id(self) -> str:
        self._n += 1
        return f"bench{self._n}"

    def shims(self) -> list[int]:
        return procinfo.find_processes("containerd-shim", self.address)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Shims outlive containerd by design; ours are found by our socket path.
        for pid in self.shims():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for state in (self.dir / "state").rglob("state.json"):
            subprocess.run(
                ["runc", "--root", str(state.parent.parent), "delete", "-f", state.parent.name],
                capture_output=True,
                check=False,
            )
        procinfo.unmount_all(self.dir)


@contextlib.contextmanager
def running(env: BenchEnv) -> Iterator[Containerd]:
    c = Containerd(env).start()
    try:
        yield c
    finally:
        c.stop()


@measurement("containerd", "memory_idle")
def memory_idle(env: BenchEnv) -> Metrics:
    """containerd just started; pyctr_ratio against memory.daemon_idle."""
    env.close_pool()
    with running(env) as c:
        time.sleep(1.0)
        rss, pss = procinfo.memory_mib([c.pid])
    out = {"containerd_rss_mib": rss, "containerd_pss_mib": pss}
    with contextlib.suppress(NotAvailable):
        mine = metric(env, "memory.daemon_idle", "pyctrd_pss_mib")
        out["pyctr_pss_ratio"] = ratio(mine, pss)
    return out


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _ctr_pull_once(env: BenchEnv, ref: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of containerd and ctr) of one cold pull."""
    with running(env) as c:
        cpu = procinfo.cpu_seconds(c.pid)
        wall = timed(lambda: c.ctr("images", "pull", "--plain-http", ref))
        return wall, procinfo.cpu_seconds(c.pid) - cpu + c.ctr_cpu_s


def containerd_pull(env: BenchEnv, image: str) -> Metrics:
    skip_in_quick(env, image)
    ref, info = env.image(image)
    theirs: list[tuple[float, float]] = []
    mine: list[tuple[float, float]] = []
    pyctr_failed = False
    for n in range(pull_runs(env)):
        if n % 2:
            theirs.append(_ctr_pull_once(env, ref))
        if not pyctr_failed:
            try:
                mine.append(pyctr_pull_once(env, ref))
            except Exception:  # containerd's own figures stand anyway
                pyctr_failed = True
        if not n % 2:
            theirs.append(_ctr_pull_once(env, ref))
    median = statistics.median(wall for wall, _ in theirs)
    cpu = statistics.median(c for _, c in theirs)
    sizes = image_sizes(info)
    out = {"median_s": median, "min_s": min(w for w, _ in theirs), "cpu_s": cpu}
    out.update(rates(median, sizes))
    if mine and len(mine) == len(theirs):
        my_median = statistics.median(wall for wall, _ in mine)
        out["pyctr_median_s"] = my_median
        out["pyctr_cpu_s"] = statistics.median(c for _, c in mine)
        out["pyctr_ratio"] = ratio(my_median, median)
        out["pyctr_round_ratio"] = statistics.median(
            ratio(a, b) for (a, _), (b, _) in zip(mine, theirs, strict=True)
        )
        out["pyctr_cpu_ratio"] = ratio(out["pyctr_cpu_s"], cpu)
    return out


measurement_each(
    "containerd",
    IMAGES,
    "pull_{}",
    "`ctr images pull` of the {0} image, cold; vs pull.{0}.",
    containerd_pull,
)


@measurement("containerd", "run")
def run(env: BenchEnv) -> Metrics:
    """`ctr run --rm IMAGE ID true` (CLI included); vs start.pyctr_run and runc."""
    ref, _ = env.image("small")
    with running(env) as c:
        c.ctr("images", "pull", "--plain-http", ref)

        def once() -> None:
            c.ctr(
                "run",
                "--rm",
                "--net-host",
                "--cgroup",
                f"{c.cgroup_parent}/{c.new_id()}",
                ref,
                c.new_id(),
                "/bin/true",
            )

        once()
        runs = [timed(once) for _ in range(env.options.runs)]
        versions = [timed(lambda: c.ctr("version")) for _ in range(env.options.runs)]  # noqa: B023
    out = {**summary_ms(runs, "run", tail=90), **summary_ms(versions, "client_version", tail=90)}
    with contextlib.suppress(NotAvailable):
        runc_ms = metric(env, "runc.run_true", "median_ms")
        out["containerd_vs_runc"] = ratio(out["run_median_ms"], runc_ms)
    with contextlib.suppress(NotAvailable):
        mine = metric(env, "start.pyctr_run", "run_median_ms")
        out["pyctr_ratio"] = ratio(mine, out["run_median_ms"])
        # Without each client's own start-up (Python's is ~10x Go's).
        mine -= metric(env, "start.pyctr_run", "client_version_median_ms")
        theirs = out["run_median_ms"] - out["client_version_median_ms"]
        out["pyctr_without_client_ratio"] = ratio(mine, theirs)
    return out


@measurement("containerd", "n_containers")
def n_containers(env: BenchEnv) -> Metrics:
    """N sleeping containers (`ctr run -d`): start time, shim and daemon PSS."""
    n = env.options.containers
    ref, _ = env.image("small")
    env.close_pool()
    with running(env) as c:
        c.ctr("images", "pull", "--plain-http", ref)
        ids = []
        starts = []
        try:
            for _ in range(n):
                cid = c.new_id()
                starts.append(timed(partial(c.run_detached, ref, cid, "/bin/sleep", "3600")))
                ids.append(cid)
            time.sleep(1.0)
            shims = c.shims()
            _, shim_pss = procinfo.memory_mib(shims)
            _, daemon_pss = procinfo.memory_mib([c.pid])
        finally:
            for cid in ids:
                with contextlib.suppress(RuntimeError):
                    c.ctr("tasks", "delete", "-f", cid, timeout=60)
                with contextlib.suppress(RuntimeError):
                    c.ctr("containers", "delete", cid, timeout=60)
    out = {
        "containers": float(n),
        "start_median_ms": statistics.median(starts) * 1000,
        "shims": float(len(shims)),
        "shim_pss_per_container_mib": shim_pss / n,
        "containerd_pss_mib": daemon_pss,
    }
    return out
