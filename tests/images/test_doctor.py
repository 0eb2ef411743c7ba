"""`pyctr doctor` against real daemons whose configs make each check pass or fail.

What the tests cannot change on this node (the kernel, swap, the clock) is
compared with what the kernel itself says.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.images.conftest import ImageSet, cri_pull
from tests.support.daemon import PyctrDaemon

pytestmark = pytest.mark.root

CNI_BIN = "/usr/lib/cni"


def doctor(d: PyctrDaemon, *args: str) -> tuple[int, dict[str, dict[str, str]]]:
    out = d.ctl("-o", "json", "doctor", *args)
    data = json.loads(out.stdout)
    checks = {c["name"]: c for c in data["checks"]}
    summary = data["summary"]
    assert sum(summary.values()) == len(data["checks"])
    assert out.returncode == (1 if summary["fail"] else 0), out.stderr
    for c in data["checks"]:
        assert c["status"] in ("ok", "warn", "fail")
        assert c["status"] == "ok" or c["fix"], c  # every complaint says what to do
    return out.returncode, checks


def conflist(path: Path, plugin: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    doc = {"cniVersion": "1.0.0", "name": "doctor-net", "plugins": [{"type": plugin}]}
    (path / "10-doctor.conflist").write_text(json.dumps(doc))
    return path


def test_a_node_that_is_ready(
    daemon_factory: Callable[..., PyctrDaemon], test_images: ImageSet, tmp_path: Path
) -> None:
    if not os.path.exists(f"{CNI_BIN}/bridge"):
        pytest.skip("containernetworking-plugins not installed")
    net = conflist(tmp_path / "net.d", "bridge")
    sandbox = test_images.ref("test/small:1")
    registry = test_images.registry.host
    d = daemon_factory(
        f'[cri]\nsandbox_image = "{sandbox}"\n'
        f'[cri.cni]\nconf_dir = "{net}"\nbin_dir = "{CNI_BIN}"\n'
        f'[registry.hosts."{registry}"]\ninsecure = true\n'
    )
    cri_pull(d, sandbox)
    kubelet = tmp_path / "kubelet.yaml"
    driver = json.loads(d.ctl("-o", "json", "info").stdout)
    mine = next(f["value"] for f in driver["features"] if f["name"] == "cgroup-driver")
    kubelet.write_text(f"apiVersion: kubelet.config.k8s.io/v1beta1\ncgroupDriver: {mine}\n")
    _, checks = doctor(d, "--kubelet-config", str(kubelet))
    assert checks["daemon"]["status"] == "ok" and str(d.address) in checks["daemon"]["detail"]
    assert checks["cni"]["status"] == "ok" and "doctor-net" in checks["cni"]["detail"]
    assert checks["cni-plugins"]["status"] == "ok"
    assert checks["sandbox-image"]["status"] == "ok"
    assert checks[f"registry {registry}"]["status"] == "ok"
    assert (
        checks["cgroup-driver"]["status"] == "ok" and "agrees" in checks["cgroup-driver"]["detail"]
    )
    assert checks["runtime runc"]["status"] == "ok"
    assert checks["disk root"]["status"] == "ok" and checks["disk state"]["status"] == "ok"
    # The kernel's facts, as the kernel tells them.
    v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    assert checks["cgroup"]["status"] == ("ok" if v2 else "warn")
    has_overlay = "overlay" in Path("/proc/filesystems").read_text()
    assert checks["overlayfs"]["status"] == ("ok" if has_overlay else "fail")
    assert checks["psi"]["status"] == ("ok" if os.path.exists("/proc/pressure/cpu") else "warn")
    swap_on = len(Path("/proc/swaps").read_text().splitlines()) > 1
    assert checks["swap"]["status"] == ("warn" if swap_on else "ok")
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    assert checks["ip-forward"]["status"] == ("ok" if forward else "fail")
    assert platform.release() in checks["mount_setattr"]["detail"]


def test_a_node_that_is_not_ready(
    daemon_factory: Callable[..., PyctrDaemon], test_images: ImageSet, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.d"
    empty.mkdir()
    missing_plugin = conflist(tmp_path / "net.d", "no-such-plugin")
    # A mirror on a port nobody listens on, and a sandbox image not pulled.
    d = daemon_factory(
        f'[cri]\nsandbox_image = "{test_images.ref("test/small:1")}"\n'
        f'[cri.cni]\nconf_dir = "{missing_plugin}"\nbin_dir = "{CNI_BIN}"\n'
        '[registry.hosts."mirrored.invalid"]\nmirrors = ["http://127.0.0.1:1"]\n'
        '[cri.runtimes.crun-missing]\nbinary = "/nonexistent/crun"\n'
    )
    kubelet = tmp_path / "kubelet.yaml"
    kubelet.write_text("cgroupDriver: not-the-daemons  # set by hand\n")
    code, checks = doctor(d, "--kubelet-config", str(kubelet))
    assert code == 1
    assert checks["cni"]["status"] == "ok"
    cni = checks["cni-plugins"]
    assert cni["status"] == "fail" and "no-such-plugin" in cni["detail"]
    assert checks["sandbox-image"]["status"] == "warn"
    assert "pyctr images pull" in checks["sandbox-image"]["fix"]
    mirror = checks["registry 127.0.0.1:1"]
    assert mirror["status"] == "fail" and "refused" in mirror["detail"].lower()
    drv = checks["cgroup-driver"]
    assert drv["status"] == "warn" and "not-the-daemons" in drv["detail"]
    crun = checks["runtime crun-missing"]
    assert crun["status"] == "warn" and "not found" in crun["detail"]

    # No CNI config at all: the node would stay NotReady.
    d2 = daemon_factory(f'[cri.cni]\nconf_dir = "{empty}"\n')
    _, checks = doctor(d2)
    assert checks["cni"]["status"] == "fail" and str(empty) in checks["cni"]["detail"]


def test_a_full_root_and_a_stopped_daemon(
    daemon_factory: Callable[..., PyctrDaemon], tmp_path: Path
) -> None:
    d = daemon_factory(start=False)
    d.root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(d.root)], check=True)
    try:
        d.start()
        with open(d.root / "filler", "wb") as f:
            try:  # fill the disk, then leave it 128k
                while True:
                    f.write(b"\0" * (64 << 10))
                    f.flush()
            except OSError:
                pass
        os.truncate(d.root / "filler", max(0, (d.root / "filler").stat().st_size - (128 << 10)))
        _, checks = doctor(d)
        full = checks["disk root"]
        assert full["status"] == "fail" and str(d.root) in full["detail"], full
        assert checks["disk state"]["status"] == "ok"
        d.stop()
        # pyctrd down: said first, the node's own checks still run.
        code, checks = doctor(d)
        assert code == 1
        assert checks["daemon"]["status"] == "fail" and "pyctrd" in checks["daemon"]["fix"]
        assert "overlayfs" in checks and "disk root" in checks
    finally:
        d.stop()
        subprocess.run(["umount", "-l", str(d.root)], check=False)
