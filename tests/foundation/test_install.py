"""install.sh: pyctr in a place of its own, and --uninstall taking back what it added.

Run in temporary paths (the PYCTR_* variables install.sh honours) so the
machine's own install is not touched; the systemd unit is the guest lane's to
show (tests/vm, where systemd runs). Needs root (install.sh refuses without)
and the package index for the install's own venv.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pyctr.daemon.version import VERSION
from tests.support import cgroups

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.root


def install(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "install.sh"), *args], env=env, capture_output=True, text=True, timeout=900
    )


def test_install_then_uninstall(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    paths = {name: tmp_path / name for name in ("opt", "bin", "etc", "units", "cni", "data")}
    env = {
        **os.environ,
        "PYCTR_PREFIX": str(paths["opt"]), "PYCTR_BIN_DIR": str(paths["bin"]),
        "PYCTR_ETC_DIR": str(paths["etc"]), "PYCTR_UNIT_DIR": str(paths["units"]),
        "PYCTR_CNI_DIR": str(paths["cni"]), "PYCTR_DATA_DIR": str(paths["data"]),
    }  # fmt: skip
    done = install(env, "--no-start", "--no-packages", "--no-dev", "--cni")
    assert done.returncode == 0, done.stdout + done.stderr
    for cmd in ("pyctrd", "pyctr", "pyctr-shim"):
        link = paths["bin"] / cmd
        assert link.is_symlink() and Path(os.readlink(link)).is_relative_to(paths["opt"])
    version = subprocess.run(
        [str(paths["bin"] / "pyctr"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.stdout.strip() == f"pyctr {VERSION}"
    # A copy of the package, not the checkout: the install outlives the clone.
    where = subprocess.run(
        [str(paths["opt"] / "venv" / "bin" / "python"), "-c",
         "import pyctr.daemon; print(pyctr.daemon.__file__)"],
        capture_output=True, text=True, timeout=60, cwd="/",
    ).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(paths["opt"]), where
    defaults = subprocess.run(
        [str(paths["bin"] / "pyctrd"), "config", "default"], capture_output=True, text=True
    ).stdout
    assert (paths["etc"] / "config.toml").read_text() == defaults
    assert (paths["cni"] / "10-pyctr-bridge.conflist").is_file()
    assert not paths["units"].exists()  # not a systemd host, or not the real unit dir
    # Run again: nothing is written twice, the config is kept as edited.
    (paths["etc"] / "config.toml").write_text(defaults + "# edited\n")
    again = install(env, "--no-start", "--no-packages", "--no-dev", "--no-cni")
    assert again.returncode == 0, again.stderr
    assert (paths["etc"] / "config.toml").read_text().endswith("# edited\n")

    paths["data"].mkdir()
    (paths["data"] / "meta.db").write_text("images and containers")
    gone = install(env, "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert not paths["opt"].exists()
    assert not any(paths["bin"].iterdir())
    assert not (paths["cni"] / "10-pyctr-bridge.conflist").exists()
    assert (paths["etc"] / "config.toml").exists()  # edited: the operator's now
    assert "kept" in gone.stdout and "config.toml" in gone.stdout
    assert (paths["data"] / "meta.db").exists()  # kept unless --purge
    purged = install(env, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not paths["data"].exists()


@pytest.mark.skipif(not cgroups.SYSTEMD_BOOTED, reason="needs systemd as PID 1 (tests/vm/run)")
def test_install_as_the_systemd_service(tmp_path: Path) -> None:
    """The real paths, on a machine (the guest) with no pyctr installed yet."""
    if Path("/opt/pyctr").exists() or Path("/etc/systemd/system/pyctrd.service").exists():
        pytest.skip("pyctr is installed on this machine already")
    env = dict(os.environ)
    if Path("/mnt/wheels").is_dir():  # the guest has no package index: its wheels
        env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS="/mnt/wheels", PIP_NO_BUILD_ISOLATION="0")
    try:
        done = install(env, "--no-packages", "--no-dev", "--no-cni")
        assert done.returncode == 0, done.stdout + done.stderr
        show = subprocess.run(
            ["systemctl", "show", "pyctrd.service", "-p", "KillMode", "-p", "ActiveState",
             "-p", "UnitFileState", "-p", "ExecStart"],
            capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip
        assert "KillMode=process" in show and "ActiveState=active" in show, show
        assert "UnitFileState=enabled" in show and "/usr/local/bin/pyctrd" in show, show
        version = subprocess.run(
            ["/usr/local/bin/pyctr", "version"], capture_output=True, text=True, timeout=60
        )
        assert version.returncode == 0 and VERSION in version.stdout, version.stderr
    finally:
        gone = install(env, "--uninstall", "--purge")
    assert gone.returncode == 0, gone.stderr
    assert not Path("/etc/systemd/system/pyctrd.service").exists()
    assert not Path("/opt/pyctr").exists()
    state = subprocess.run(
        ["systemctl", "is-active", "pyctrd.service"], capture_output=True, text=True
    ).stdout.strip()
    assert state in ("inactive", "unknown"), state
