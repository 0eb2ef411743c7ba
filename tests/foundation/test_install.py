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
