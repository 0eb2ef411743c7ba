"""Cgroup naming for both drivers: what runc will make for a cgroupsPath, and
which parents each driver accepts. No root: this is naming only; the guest
lane (tests/vm) proves that systemd and runc put the cgroups there."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyctr.daemon import cgroups as cgroups_mod
from pyctr.daemon.cgroups import Cgroups
from pyctr.daemon.config import load
from pyctr.daemon.errors import InvalidArgument
from pyctr.shim.cgroups import cgroup_dir, parse_keyed, pressure, slice_dir, swap, systemd_dir

POD = "kubepods-burstable-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("-.slice", ""),
        ("system.slice", "/system.slice"),
        ("pyctr.slice", "/pyctr.slice"),
        ("kubepods.slice", "/kubepods.slice"),
        (
            "kubepods-burstable-podX.slice",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podX.slice",
        ),
        ("kubepods", None),  # not a slice
        ("a--b.slice", None),
        ("-a.slice", None),
        ("a-.slice", None),
        (".slice", None),
        ("a/b.slice", None),
    ],
)
def test_slice_dir(name: str, expected: str | None) -> None:
    assert slice_dir(name) == expected


def test_systemd_dir_is_the_scope_in_the_slice() -> None:
    assert systemd_dir("kubepods-besteffort-podU.slice:pyctr:abc") == (
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podU.slice/pyctr-abc.scope"
    )
    assert systemd_dir(":pyctr:abc") == "/system.slice/pyctr-abc.scope"  # runc's default slice
    assert systemd_dir("pyctr.slice:pyctr:x.slice") == "/x.slice"  # a name that is a slice
    for bad in ("/pyctr/abc", "a.slice:pyctr", "a.slice:p:", "nope:pyctr:abc", "a.slice:p:x/y"):
        assert systemd_dir(bad) is None


def test_cgroup_dir_either_driver() -> None:
    assert cgroup_dir("/pyctr/abc") == "/pyctr/abc"
    assert cgroup_dir("pyctr.slice:pyctr:abc") == "/pyctr.slice/pyctr-abc.scope"
    for bad in ("relative/abc", "/a/../b", "/a/./b"):
        assert cgroup_dir(bad) is None


def test_parse_keyed() -> None:
    text = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n"
    assert parse_keyed(text)["oom_kill"] == 1
    assert parse_keyed("garbage\nx y\n") == {}


def _setup(monkeypatch: pytest.MonkeyPatch, driver: str, booted: bool, parent: str = "") -> Cgroups:
    monkeypatch.setattr(cgroups_mod, "systemd_booted", lambda: booted)
    return Cgroups.resolve(driver, parent)


def test_auto_follows_pid_1(monkeypatch: pytest.MonkeyPatch) -> None:
    on = _setup(monkeypatch, "auto", True)
    assert (on.driver, on.default_parent) == ("systemd", "pyctr.slice")
    assert on.reason == "auto: systemd is PID 1"
    off = _setup(monkeypatch, "auto", False)
    assert (off.driver, off.default_parent) == ("cgroupfs", "/pyctr")
    assert off.reason == "auto: systemd is not PID 1"
    assert _setup(monkeypatch, "cgroupfs", True).driver == "cgroupfs"


def test_systemd_without_systemd_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgument, match="systemd is not PID 1"):
        _setup(monkeypatch, "systemd", False)


def test_default_parent_must_suit_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgument, match="runtime.cgroup_parent.*not a systemd slice"):
        _setup(monkeypatch, "systemd", True, "/pyctr")
    with pytest.raises(InvalidArgument, match="runtime.cgroup_parent.*not an absolute cgroup"):
        _setup(monkeypatch, "cgroupfs", False, "pyctr.slice")
    assert _setup(monkeypatch, "systemd", True, "nodes-pyctr.slice").default_parent == (
        "nodes-pyctr.slice"
    )


def test_paths_per_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    sd = _setup(monkeypatch, "systemd", True)
    assert sd.check_parent(POD) == POD
    assert sd.cgroups_path(POD, "c1") == f"{POD}:pyctr:c1"
    assert sd.directory(f"{POD}:pyctr:c1") == systemd_dir(f"{POD}:pyctr:c1")
    assert sd.directory(POD) == slice_dir(POD)
    assert sd.unit("c1") == "pyctr-c1.scope"
    for bad in ("/kubepods/burstable/podU", "kubepods", "a b.slice", "../x.slice"):
        with pytest.raises(InvalidArgument, match="is the kubelet's cgroupDriver"):
            sd.check_parent(bad)

    fs = _setup(monkeypatch, "cgroupfs", False)
    assert fs.check_parent("/kubepods/burstable/podU") == "/kubepods/burstable/podU"
    assert fs.cgroups_path("/kubepods/podU/", "c1") == "/kubepods/podU/c1"
    assert fs.directory("/kubepods/podU/c1") == "/kubepods/podU/c1"
    assert fs.unit("c1") is None
    for bad in (POD, "kubepods", "/a/../b", "/a b"):
        with pytest.raises(InvalidArgument, match="is the kubelet's cgroupDriver"):
            fs.check_parent(bad)


def test_config_driver_choices(tmp_path: pytest.TempPathFactory) -> None:
    assert load(None).cri.cgroup_driver == "auto"
    for driver in ("auto", "systemd", "cgroupfs"):
        assert load(None, {"cri": {"cgroup_driver": driver}}).cri.cgroup_driver == driver
    with pytest.raises(InvalidArgument, match="cri.cgroup_driver"):
        load(None, {"cri": {"cgroup_driver": "cgroupsv2"}})


def test_pressure_and_swap_files(tmp_path: Path) -> None:
    (tmp_path / "cpu.pressure").write_text(
        "some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=7\n"
    )
    (tmp_path / "io.pressure").write_text("some avg10=x\n")  # unreadable lines are skipped
    (tmp_path / "memory.swap.current").write_text("4096\n")
    (tmp_path / "memory.swap.max").write_text("max\n")
    assert pressure(str(tmp_path), "cpu") == {
        "some": (1.5, 0.25, 0.0, 12_345_000),  # total in ns
        "full": (0.0, 0.0, 0.0, 7000),
    }
    assert pressure(str(tmp_path), "io") == {}
    assert pressure(str(tmp_path), "memory") == {}  # no file: no PSI
    assert swap(str(tmp_path)) == (4096, None)
