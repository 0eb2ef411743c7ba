"""pyctrd as the systemd service it ships as (examples/systemd/pyctrd.service):
restarting or stopping the service must kill no container.

Needs systemd as PID 1, so it runs in the guest lane (tests/vm); elsewhere
there is no service manager to test against. The unit is the shipped one
with only ExecStart replaced (this checkout's daemon on the test dirs) and a
session-scoped name, installed under /run/systemd/system and removed after.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TOKEN, new_base, safe_rmtree
from tests.containers.conftest import Ctr, CtrImages, wait_for
from tests.support import cgroups
from tests.support.daemon import PyctrDaemon

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not cgroups.SYSTEMD_BOOTED, reason="needs systemd as PID 1 (tests/vm/run)"),
]

SHIPPED = Path(__file__).resolve().parents[2] / "examples" / "systemd" / "pyctrd.service"


def systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)


def main_pid(unit: str) -> int:
    return int(systemctl("show", "-P", "MainPID", unit).stdout.strip() or 0)


@pytest.fixture
def service(ctr_images: CtrImages) -> Iterator[tuple[str, Ctr]]:
    base = new_base("unit")
    d = PyctrDaemon(base)
    unit = f"{TOKEN}-pyctrd.service"
    path = Path("/run/systemd/system") / unit
    text = "".join(
        f"ExecStart={' '.join(d.command())}\n" if line.startswith("ExecStart=") else line + "\n"
        for line in SHIPPED.read_text().splitlines()
    )
    # The daemon's log goes to the journal; the tests read it from there.
    path.write_text(text)
    systemctl("daemon-reload")
    c = Ctr(d, ctr_images)
    try:
        started = systemctl("start", unit)
        assert started.returncode == 0, started.stderr
        wait_for(lambda: d._answers(), timeout=60, what="pyctrd under systemd to answer")
        c.pull()
        yield unit, c
    finally:
        with contextlib.suppress(Exception):
            c.remove_all()
        c.close()
        systemctl("stop", unit)
        # KillMode=process leaves the shims of removed containers to exit on
        # their own; anything still in the unit's cgroup goes with it now.
        systemctl("kill", "--signal=SIGKILL", unit)
        path.unlink(missing_ok=True)
        systemctl("daemon-reload")
        systemctl("reset-failed", unit)
        safe_rmtree(base)


def test_restarting_the_service_kills_no_container(service: tuple[str, Ctr]) -> None:
    unit, c = service
    assert "KillMode=process" in SHIPPED.read_text()
    info = c.run(["sleep", "600"], name="survivor")
    first = main_pid(unit)
    assert first > 0
    # Only pyctrd is the unit's main process; the container runs in its own scope.
    scope = f"pyctr-{info.id}.scope" if cgroups.SYSTEMD else None
    if scope:
        assert systemctl("is-active", scope).stdout.strip() == "active"

    assert systemctl("restart", unit).returncode == 0
    wait_for(
        lambda: main_pid(unit) not in (0, first) and c.d._answers(),
        timeout=60,
        what="the new pyctrd",
    )
    c.reconnect()
    assert os.path.exists(f"/proc/{info.pid}")
    assert c.get(info.id).status == "running"
    # The recovered daemon still drives it: exec, stop, remove.
    assert c.cli("exec", info.id, "true").returncode == 0

    assert systemctl("stop", unit).returncode == 0
    time.sleep(0.5)
    assert os.path.exists(f"/proc/{info.pid}"), "stopping the service killed the container"
    assert systemctl("start", unit).returncode == 0
    wait_for(lambda: c.d._answers(), timeout=60, what="pyctrd to come back")
    c.reconnect()
    c.remove(info.id)
    wait_for(lambda: not os.path.exists(f"/proc/{info.pid}"), what="the container to go")
    if scope:
        wait_for(lambda: scope not in cgroups.units(), what=f"{scope} to go")
