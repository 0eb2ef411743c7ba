"""Cold pull + unpack through CRI PullImage, from a local registry over HTTP.

Cold: every run is a fresh pyctrd on empty dirs (its start-up is not timed),
so nothing is in its content store or snapshots. The registry serves from its
own disk, warm in the page cache after the push, as a nearby registry would.

Images (see imagegen): small = busybox; medium = 10 layers, about 50 MiB;
large = 5 layers, about 500 MiB of many small files and a few large ones,
half compressible. `mib_per_s` counts compressed (transferred) bytes,
`unpacked_mib_per_s` the tar bytes written out, `cpu_s` the CPU time (user +
system, all threads) pyctrd spent on the pull: steadier than wall time when
other work shares the machine.
"""

from __future__ import annotations

import statistics

from benchmarks.core import Metrics, Skipped, measurement_each, timed
from benchmarks.env import BenchEnv
from benchmarks.procinfo import MIB, cpu_seconds

IMAGES = ("small", "medium", "large")


def pull_runs(env: BenchEnv) -> int:
    return 2 if env.options.quick else 3


def image_sizes(info: dict[str, float]) -> Metrics:
    return {
        "compressed_mib": info["compressed_bytes"] / MIB,
        "unpacked_mib": info["uncompressed_bytes"] / MIB,
    }


def rates(median_s: float, sizes: Metrics) -> Metrics:
    return {
        "mib_per_s": sizes["compressed_mib"] / median_s,
        "unpacked_mib_per_s": sizes["unpacked_mib"] / median_s,
    }


def skip_in_quick(env: BenchEnv, image: str) -> None:
    if env.options.quick and image != "small":
        raise Skipped("--quick pulls the small image only")


def pyctr_pull_once(env: BenchEnv, ref: str) -> tuple[float, float]:
    """(wall seconds, pyctrd CPU seconds) of one cold pull in a fresh daemon."""
    with env.fresh_daemon() as (daemon, client):
        cpu = cpu_seconds(daemon.pid)
        wall = timed(lambda: client.pull(ref))
        return wall, cpu_seconds(daemon.pid) - cpu


def pyctr_pull(env: BenchEnv, image: str) -> Metrics:
    skip_in_quick(env, image)
    ref, info = env.image(image)
    runs = [pyctr_pull_once(env, ref) for _ in range(pull_runs(env))]
    times = [wall for wall, _ in runs]
    median = statistics.median(times)
    sizes = image_sizes(info)
    return {
        "median_s": median,
        "min_s": min(times),
        "cpu_s": statistics.median(cpu for _, cpu in runs),
        **sizes,
        **rates(median, sizes),
    }


measurement_each(
    "pull", IMAGES, "{}", "CRI PullImage of the {} image, cold (fresh daemon each run).", pyctr_pull
)
