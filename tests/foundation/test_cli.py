"""`pyctr`: versions, info, output formats, exit codes and hints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from pyctr.daemon import cgroups
from tests.support import cgroups as test_cgroups
from tests.support.daemon import PyctrDaemon


def test_version_prints_client_and_server(pyctrd: PyctrDaemon) -> None:
    proc = pyctrd.ctl("version")
    assert proc.returncode == 0, proc.stderr
    assert "Client:" in proc.stdout and "Server:" in proc.stdout and "pyctrd" in proc.stdout
    data = json.loads(pyctrd.ctl("-o", "json", "version").stdout)
    assert data["client"]["version"] == data["server"]["version"]
    assert data["server"]["cri_api_version"] == "v1"


def test_address_flag_beats_env(pyctrd: PyctrDaemon) -> None:
    env = {**os.environ, "PYCTR_ADDRESS": "/nonexistent.sock"}
    proc = subprocess.run(
        [sys.executable, "-m", "pyctr.ctl.main", "--address", pyctrd.address, "version"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_info_reports_paths_runc_and_kernel_features(pyctrd: PyctrDaemon) -> None:
    data = json.loads(pyctrd.ctl("-o", "json", "info").stdout)
    assert data["root"] == str(pyctrd.root) and data["state"] == str(pyctrd.state)
    assert data["runc_path"] == shutil.which("runc")
    assert data["runc_version"].startswith("runc version")
    features = {f["name"]: f["value"] for f in data["features"]}
    assert features["overlayfs"] == "yes"
    assert features["cgroup"] == cgroups.cgroup_version()
    # The driver in use and why: the tests' daemons name theirs in the config.
    driver = next(f for f in data["features"] if f["name"] == "cgroup-driver")
    assert driver["value"] == test_cgroups.DRIVER
    assert driver["detail"] == "set by cri.cgroup_driver"
    assert "cni" in features
    assert "[registry]" in data["config_toml"]
    text = pyctrd.ctl("info").stdout
    assert "overlayfs:" in text and str(pyctrd.root) in text
    assert f"cgroup-driver: {test_cgroups.DRIVER} (set by cri.cgroup_driver)" in text


def test_daemon_down_gives_one_line_hint_and_exit_69(pyctrd: PyctrDaemon) -> None:
    pyctrd.stop()
    proc = pyctrd.ctl("version")
    assert proc.returncode == 69
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is pyctrd running?" in lines[0] and pyctrd.address in lines[0]


def test_stale_socket_gives_hint(pyctrd: PyctrDaemon) -> None:
    pyctrd.kill()
    proc = pyctrd.ctl("version")
    assert proc.returncode == 69
    assert "stale socket" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_socket_not_accessible_gives_exit_77(pyctrd: PyctrDaemon) -> None:
    # Hand the socket to another owner and drop every capability, so root
    # itself meets the file mode as any other user would.
    os.chown(pyctrd.address, 1, 1)
    try:
        proc = subprocess.run(
            ["setpriv", "--bounding-set=-all", "--inh-caps=-all",
             sys.executable, "-m", "pyctr.ctl.main", "--address", pyctrd.address, "version"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.chown(pyctrd.address, 0, 0)
    assert proc.returncode == 77, proc.stderr
    assert "permission denied" in proc.stderr


def test_usage_error_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pyctr.ctl.main", "no-such-command"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
