"""The daemon's Prometheus endpoint: off by default; on a loopback address,
per-RPC counts and latency, pulls and layers, GC, containers and shims."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.images.conftest import ImageSet
from tests.support.daemon import DaemonError, PyctrDaemon
from tests.support.nri_plugin import Plugin, PluginError
from tests.support.registry import free_port

pytestmark = pytest.mark.root

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_endpoint(
    daemon_factory: Callable[..., PyctrDaemon], test_images: ImageSet
) -> None:
    port = free_port()
    d = daemon_factory(f'[metrics]\naddress = "127.0.0.1:{port}"\n')
    version = "/pyctr.v1.System/Version"
    before = scrape(port)
    assert value(before, "pyctr_gc_runs_total") >= 1  # the GC at start
    for _ in range(2):
        assert d.ctl("version").returncode == 0
    assert d.ctl("images", "inspect", "not/here:1").returncode == 3
    img = test_images.busybox
    ref = test_images.ref("test/busybox:1")
    assert d.ctl("images", "pull", "-q", ref).returncode == 0
    cid = d.ctl("run", "-d", ref, "sleep", "600").stdout.strip()
    try:
        after = scrape(port)
        calls = "pyctr_grpc_requests_total"
        assert value(after, calls, method=version, code="OK") == 2
        inspect = [k for k in after if k[0] == calls and ("code", "NOT_FOUND") in k[1]]
        assert len(inspect) == 1 and after[inspect[0]] == 1
        count = "pyctr_grpc_request_duration_seconds_count"
        assert value(after, count, method=version) == 2
        assert (
            value(after, "pyctr_grpc_request_duration_seconds_bucket", method=version, le="+Inf")
            == 2
        )
        assert value(after, "pyctr_image_pulls_total", result="ok") == 1
        layers = sum(x.size for x in img.layers)
        assert value(after, "pyctr_image_pull_layer_bytes_total") >= layers
        assert value(after, "pyctr_image_pull_layer_duration_seconds_count") >= len(img.layers)
        assert value(after, "pyctr_containers", kind="native", state="running") == 1
        assert value(after, "pyctr_shims") == 1
    finally:
        assert d.ctl("rm", "-f", cid).returncode == 0
    assert d.ctl("images", "rm", ref).returncode == 0
    assert d.ctl("gc").returncode == 0
    final = scrape(port)
    assert value(final, "pyctr_containers", kind="native", state="running") == 0
    assert value(final, "pyctr_shims") == 0
    assert value(final, "pyctr_gc_freed_bytes_total") >= layers
    assert value(final, "pyctr_gc_runs_total") > value(after, "pyctr_gc_runs_total")


def test_metrics_are_off_by_default_and_a_bad_address_stops_the_start(
    daemon_factory: Callable[..., PyctrDaemon], pyctrd: PyctrDaemon
) -> None:
    info = pyctrd.ctl("-v", "info").stdout
    assert "[metrics]" in info and 'address = ""' in info
    d = daemon_factory('[metrics]\naddress = "no-port-here"\n', start=False)
    with pytest.raises(DaemonError):
        d.start()
    assert "metrics.address" in d.log_path.read_text()


def test_nri_plugin_calls_are_counted(daemon_factory: Callable[..., PyctrDaemon]) -> None:
    port = free_port()
    d = daemon_factory(f'[metrics]\naddress = "127.0.0.1:{port}"\n')
    assert value(scrape(port), "pyctr_nri_plugins") == 0
    sock = str(d.base / "nri" / "nri.sock")
    with Plugin(sock, name="metered", idx="10") as good:
        good.start()
        refused = Plugin(sock, name="picky", idx="20")

        def refuse(req: object) -> None:
            raise PluginError(9, "not on this node")

        refused.handlers["Configure"] = refuse
        with refused, pytest.raises(Exception):  # noqa: B017 (Configure refused, then hung up)
            refused.start()
        samples = scrape(port)
        calls = "pyctr_nri_plugin_requests_total"
        assert value(samples, calls, plugin="10-metered", method="Configure", result="ok") == 1
        assert value(samples, calls, plugin="10-metered", method="Synchronize", result="ok") == 1
        assert value(samples, calls, plugin="20-picky", method="Configure", result="error") == 1
        assert value(samples, "pyctr_nri_plugin_request_duration_seconds_count",
                     method="Configure") == 2  # fmt: skip
        assert value(samples, "pyctr_nri_plugins") == 1
