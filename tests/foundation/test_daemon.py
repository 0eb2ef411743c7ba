"""pyctrd's lifecycle: socket, locks, signals, config."""

from __future__ import annotations

import grp
import os
import signal
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import grpc
import pytest

from pyctr.daemon import config
from pyctr.daemon.cgroups import systemd_booted
from pyctr.proto import cri_pb2, cri_pb2_grpc
from tests.support.daemon import PyctrDaemon


def pyctrd_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyctr.daemon.main", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_socket_is_root_only(pyctrd: PyctrDaemon) -> None:
    st = os.stat(pyctrd.address)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, 0)
    # The persistent and runtime dirs are not open to others.
    for d in (pyctrd.root, pyctrd.state):
        assert stat.S_IMODE(os.stat(d).st_mode) & 0o066 == 0, d
    assert stat.S_IMODE(os.stat(pyctrd.root / "meta.db").st_mode) == 0o600


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_cleanly(pyctrd: PyctrDaemon, sig: signal.Signals) -> None:
    assert pyctrd.proc is not None
    pyctrd.proc.send_signal(sig)
    assert pyctrd.proc.wait(15) == 0
    assert not os.path.exists(pyctrd.address)
    log = pyctrd.log()
    assert f"received {sig.name}" in log and "pyctrd stopped" in log


def test_second_daemon_on_same_socket_refuses(pyctrd: PyctrDaemon, daemon_factory) -> None:
    other = daemon_factory(start=False)
    other.address = pyctrd.address
    proc = subprocess.run(other.command(), capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert f"another pyctrd is already serving on {pyctrd.address}" in proc.stderr
    # The first one still answers.
    with pyctrd.channel() as ch:
        v = cri_pb2_grpc.RuntimeServiceStub(ch).Version(cri_pb2.VersionRequest(), timeout=10)
    assert v.runtime_name == "pyctr"


def test_second_daemon_on_same_root_refuses(pyctrd: PyctrDaemon, daemon_factory) -> None:
    other = daemon_factory(start=False)
    other.root = pyctrd.root
    proc = subprocess.run(other.command(), capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert f"(pid {pyctrd.pid}) is using the root dir {pyctrd.root}" in proc.stderr
    assert os.path.exists(pyctrd.address)


def test_stale_socket_is_replaced(daemon_factory) -> None:
    d = daemon_factory()
    d.kill()  # a crash leaves the socket file behind
    assert os.path.exists(d.address)
    d.start()
    with d.channel() as ch:
        cri_pb2_grpc.RuntimeServiceStub(ch).Version(cri_pb2.VersionRequest(), timeout=10)


def test_config_default_is_complete_toml() -> None:
    proc = pyctrd_cmd("config", "default")
    assert proc.returncode == 0
    data = tomllib.loads(proc.stdout)
    assert config.load(None, data) == config.Config()
    # Every key carries a comment line above it or beside it.
    for line in proc.stdout.splitlines():
        if "=" in line and not line.startswith("#") and not line.startswith("["):
            i = proc.stdout.splitlines().index(line)
            assert proc.stdout.splitlines()[i - 1].startswith("#"), line
    for key in ("[registry]", "[snapshotter]", "[cri]", "[cri.cni]", "sandbox_image"):
        assert key in proc.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rooot = '/x'\n", "unknown key 'rooot'"),
        (
            "[registry]\nmax_concurrent_downloads = 'three'\n",
            "'registry.max_concurrent_downloads' must be int",
        ),
        ("[cri.cni]\nconf_dir = 3\n", "'cri.cni.conf_dir' must be str"),
        ("[registry\n", "config file"),
        ("[cri]\ncgroup_driver = 'v2'\n", "'cri.cgroup_driver' must be \"auto\" or \"systemd\" or"),
        ("[runtime]\ncgroup_parent = 'pyctr'\n", "runtime.cgroup_parent: cgroup parent 'pyctr'"),
        ("[snapshotter]\nbackend = 'zfs'\n", "'snapshotter.backend' must be"),
        ("address = 'x.sock'\n", "'address' must be an absolute path"),
        ("[snapshotter]\nmax_parallel_unpack = 0\n", "'snapshotter.max_parallel_unpack' must"),
    ],
)  # fmt: skip
def test_bad_config_is_refused_with_its_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    proc = pyctrd_cmd("--config", str(path), "--root", str(tmp_path / "r"), "config", "dump")
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "r").exists()


def test_systemd_driver_needs_systemd_as_pid_1(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[cri]\ncgroup_driver = 'systemd'\n")
    proc = pyctrd_cmd("--config", str(path), "--root", str(tmp_path / "r"), "config", "dump")
    if systemd_booted():
        assert proc.returncode == 0, proc.stderr
        assert 'cgroup_driver = "systemd"' in proc.stdout
    else:
        assert proc.returncode == 2
        assert 'cri.cgroup_driver is "systemd" but systemd is not PID 1' in proc.stderr


def test_config_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        'root = "/from/file"\n[registry.hosts."reg:5000"]\ninsecure = true\npassword = "s3cret"\n'
    )
    proc = pyctrd_cmd("--config", str(path), "--state", "/from/flag", "config", "dump")
    assert proc.returncode == 0, proc.stderr
    data = tomllib.loads(proc.stdout)
    assert data["root"] == "/from/file" and data["state"] == "/from/flag"
    assert data["registry"]["hosts"]["reg:5000"]["insecure"] is True
    assert "s3cret" not in proc.stdout


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    proc = pyctrd_cmd("--config", str(tmp_path / "nope.toml"), "config", "dump")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_rpc_names_and_durations_logged_at_debug(pyctrd: PyctrDaemon) -> None:
    with pyctrd.channel() as ch:
        cri_pb2_grpc.RuntimeServiceStub(ch).Version(cri_pb2.VersionRequest(), timeout=10)
        with pytest.raises(grpc.RpcError):
            cri_pb2_grpc.RuntimeServiceStub(ch).ContainerStatus(
                cri_pb2.ContainerStatusRequest(container_id="x"), timeout=10
            )
    pyctrd.stop()
    lines = pyctrd.log().splitlines()
    assert any(
        "/runtime.v1.RuntimeService/Version OK" in line and line.endswith("ms") for line in lines
    )
    assert "Traceback" not in pyctrd.log()


def test_socket_in_private_state_dir_is_reachable_by_its_group(daemon_factory) -> None:
    """The default layout: the socket inside the (otherwise private) state dir."""
    from tests.faults.test_access import SYSTEM_PYTHON, connect_as_nobody

    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("needs the system python3 to act as another user")
    adm = grp.getgrnam("adm").gr_gid
    d = daemon_factory('socket_group = "adm"\n', start=False)
    d.address = str(d.state / "pyctr.sock")
    d.start()
    assert stat.S_IMODE(os.stat(d.state).st_mode) & 0o066 == 0  # still not listable
    assert connect_as_nobody(d.address, group=adm) == "answered"
    assert connect_as_nobody(d.address) == "refused"
