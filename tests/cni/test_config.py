"""Which CNI network is chosen, and when it counts as ready."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from pyctr.daemon.errors import InvalidArgument
from pyctr.daemon.pods.cni import CniManager, PortMapping, pod_ips
from pyctr.daemon.pods.cni_config import NetworkNotReady, load_network_file

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cni" / "10-pyctr-bridge.conflist"
SYSTEM_BIN = "/usr/lib/cni"

needs_plugins = pytest.mark.skipif(
    not os.path.isfile(f"{SYSTEM_BIN}/bridge"), reason="containernetworking-plugins missing"
)


def conflist(name: str = "net1", *types: str, version: str = "1.0.0") -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": name,
        "plugins": [{"type": t} for t in (types or ("bridge",))],
    }


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    conf, bins = tmp_path / "net.d", tmp_path / "bin"
    conf.mkdir()
    bins.mkdir()
    for name in ("bridge", "host-local", "portmap"):
        plugin = bins / name
        plugin.write_text("#!/bin/sh\nexit 0\n")
        plugin.chmod(0o755)
    return conf, bins


def manager(dirs: tuple[Path, Path], tmp_path: Path) -> CniManager:
    return CniManager(str(dirs[0]), str(dirs[1]), tmp_path / "cache")


def test_empty_and_missing_conf_dir_are_not_ready(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    ready, message = manager(dirs, tmp_path).status()
    assert not ready
    assert message == f"no CNI network config found in {dirs[0]}"
    (dirs[0] / "README").write_text("not a config")  # wrong suffix: ignored
    assert manager(dirs, tmp_path).status() == (False, message)

    m = CniManager(str(tmp_path / "nowhere"), str(dirs[1]), tmp_path / "cache")
    ready, message = m.status()
    assert not ready
    assert "cannot read CNI config dir" in message and "nowhere" in message


def test_missing_plugin_binary_is_named(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    (dirs[0] / "10-net.conflist").write_text(
        json.dumps(conflist("net1", "bridge", "pyctr-nonexistent", "portmap"))
    )
    ready, message = manager(dirs, tmp_path).status()
    assert not ready
    assert "pyctr-nonexistent" in message
    assert str(dirs[1]) in message and "10-net.conflist" in message
    assert "bridge" not in message.split("binary", 1)[1]  # only the missing one is named


def test_first_loadable_file_in_lexical_order_wins(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    conf = dirs[0]
    (conf / "00-broken.conflist").write_text("{ not json")
    (conf / "05-empty.conflist").write_text(json.dumps({"name": "x", "plugins": []}))
    (conf / "20-second.conflist").write_text(json.dumps(conflist("second")))
    (conf / "10-first.conflist").write_text(json.dumps(conflist("first", "bridge", "portmap")))
    m = manager(dirs, tmp_path)
    ready, message = m.status()
    assert ready, message
    assert m.network().name == "first"
    assert [p["type"] for p in m.network().plugins] == ["bridge", "portmap"]
    assert "10-first.conflist" in message


def test_chosen_network_with_a_missing_plugin_does_not_fall_through(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    conf = dirs[0]
    (conf / "10-first.conflist").write_text(json.dumps(conflist("first", "calico")))
    (conf / "20-second.conflist").write_text(json.dumps(conflist("second")))
    ready, message = manager(dirs, tmp_path).status()
    assert not ready
    assert "calico" in message and "first" in message


def test_only_broken_files_are_each_named(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    conf = dirs[0]
    (conf / "a.conflist").write_text("[1, 2]")
    (conf / "b.conf").write_text(json.dumps({"cniVersion": "1.0.0", "type": "bridge"}))
    (conf / "c.json").write_text("\xff\xfe garbage")
    ready, message = manager(dirs, tmp_path).status()
    assert not ready
    assert "no valid CNI network config" in message
    assert "a.conflist: not a JSON object" in message
    assert 'b.conf: no "name"' in message
    assert "c.json: not valid JSON" in message


def test_single_plugin_conf_is_wrapped(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    single = {"cniVersion": "0.4.0", "name": "single", "type": "bridge", "bridge": "br9"}
    (dirs[0] / "10-single.conf").write_text(json.dumps(single))
    m = manager(dirs, tmp_path)
    assert m.status()[0]
    net = m.network()
    assert net.cni_version == "0.4.0"
    assert net.plugins == (single,)


@pytest.mark.parametrize("version", ["0.2.0", "1.1.0", "", "banana"])
def test_unsupported_cni_version(dirs: tuple[Path, Path], tmp_path: Path, version: str) -> None:
    (dirs[0] / "10.conflist").write_text(json.dumps(conflist("net", version=version)))
    ready, message = manager(dirs, tmp_path).status()
    assert not ready
    assert "cniVersion" in message and "not supported" in message


def test_bad_plugin_type_and_network_name(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    (dirs[0] / "10.conflist").write_text(json.dumps(conflist("net", "../../bin/sh")))
    ready, message = manager(dirs, tmp_path).status()
    assert not ready and "no valid type" in message
    (dirs[0] / "10.conflist").write_text(json.dumps(conflist("bad name/x")))
    ready, message = manager(dirs, tmp_path).status()
    assert not ready and "invalid network name" in message


def test_status_follows_changes(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    m = manager(dirs, tmp_path)
    assert not m.status()[0]
    path = dirs[0] / "10.conflist"
    path.write_text(json.dumps(conflist("net", "bridge", "portmap")))
    assert m.status()[0]
    # Edited in place (the dir's mtime may not change): still noticed.
    with open(path, "r+") as f:
        f.write(json.dumps(conflist("net", "bridge", "tuning")))
        f.truncate()
    ready, message = m.status()
    assert not ready and "tuning" in message
    # The plugin gets installed: ready again without touching the config.
    (dirs[1] / "tuning").write_text("#!/bin/sh\n")
    (dirs[1] / "tuning").chmod(0o755)
    assert m.status()[0]
    # A non-executable file is not a plugin.
    (dirs[1] / "tuning").chmod(0o644)
    assert not m.status()[0]


def test_status_is_cached_between_changes(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    (dirs[0] / "10.conflist").write_text(json.dumps(conflist()))
    m = manager(dirs, tmp_path)
    assert m.status()[0]
    first = m.network()
    assert m.network() is first  # not re-read


async def test_setup_when_not_ready_changes_nothing(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    m = manager(dirs, tmp_path)
    with pytest.raises(NetworkNotReady, match="no CNI network config found"):
        await m.setup("pod1", "/nonexistent", namespace="ns", name="n", uid="u")
    assert m.cached_pods() == []
    await m.teardown("pod1")  # nothing was added: nothing to do


@pytest.mark.parametrize(
    "kwargs",
    [
        {"namespace": "ns;K8S_POD_NAME=evil"},
        {"name": "a=b"},
        {"uid": "u\n"},
        {"port_mappings": [PortMapping(80, 70000)]},
        {"port_mappings": [PortMapping(0, 8080)]},
        {"port_mappings": [PortMapping(80, 8080, "icmp")]},
        {"port_mappings": [PortMapping(80, 8080, "tcp", "not-an-ip")]},
        {"ifname": "eth0/../x"},
        {"ifname": "a-very-long-interface-name"},
    ],
)
async def test_bad_arguments_are_refused_before_any_plugin_runs(
    dirs: tuple[Path, Path], tmp_path: Path, kwargs: dict[str, Any]
) -> None:
    marker = tmp_path / "ran"
    spy = dirs[1] / "bridge"
    spy.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    (dirs[0] / "10.conflist").write_text(json.dumps(conflist()))
    m = manager(dirs, tmp_path)
    args: dict[str, Any] = {"namespace": "ns", "name": "n", "uid": "u", **kwargs}
    with pytest.raises(InvalidArgument):
        await m.setup("pod1", "/nonexistent", **args)
    assert not marker.exists()
    assert m.cached_pods() == []


@pytest.mark.parametrize("pod_id", ["../escape", "", ".hidden", "a/b", "x" * 200])
async def test_bad_pod_ids_are_refused(
    dirs: tuple[Path, Path], tmp_path: Path, pod_id: str
) -> None:
    (dirs[0] / "10.conflist").write_text(json.dumps(conflist()))
    m = manager(dirs, tmp_path)
    with pytest.raises(InvalidArgument, match="invalid pod sandbox id"):
        await m.setup(pod_id, "/nonexistent", namespace="ns", name="n", uid="u")
    with pytest.raises(InvalidArgument):
        await m.teardown(pod_id)
    assert not (tmp_path / "escape.json").exists()


def test_pod_ips_takes_the_sandbox_interface_ipv4_first() -> None:
    result = {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "br0", "mac": "aa:bb:cc:dd:ee:00"},
            {"name": "veth1", "mac": "aa:bb:cc:dd:ee:01"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/x"},
            {"name": "net1", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/x"},
        ],
        "ips": [
            {"address": "fd00::5/64", "interface": 2},
            {"address": "10.0.0.1/24", "interface": 0},  # the bridge's: not the pod's
            {"address": "10.0.0.5/24", "gateway": "10.0.0.1", "interface": 2},
            {"address": "10.9.0.5/24", "interface": 3},  # another pod interface
            {"address": "10.0.0.6/24"},  # no index: taken
            {"address": "garbage"},
        ],
    }
    assert pod_ips(result) == ["10.0.0.5", "10.0.0.6", "fd00::5"]
    assert pod_ips(result, "net1") == ["10.9.0.5", "10.0.0.6"]
    assert pod_ips({}) == []


@needs_plugins
def test_example_conflist_is_ready_with_debian_plugins(tmp_path: Path) -> None:
    conf = tmp_path / "net.d"
    conf.mkdir()
    shutil.copy(EXAMPLE, conf)
    m = CniManager(str(conf), SYSTEM_BIN, tmp_path / "cache")
    ready, message = m.status()
    assert ready, message
    net = m.network()
    assert net.name == "pyctr"
    assert [p["type"] for p in net.plugins] == ["bridge", "portmap"]
    assert net.plugins[0]["bridge"] == "pyctr0"
    assert load_network_file(EXAMPLE).raw == json.loads(EXAMPLE.read_text())
