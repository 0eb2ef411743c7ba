"""The guest lane from the normal suite: the smoke set must pass in a Debian 12 guest
with systemd as PID 1 and pure cgroup v2 (tests/vm/run, booted with qemu).

Not skipped when qemu is missing (install.sh installs it): that fails. Skip on
purpose, for quick local runs only, with PYCTR_SKIP_VM=1 (CI does not set it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).with_name("run")


def guest_facts(output: str) -> dict[str, str]:
    """The `== vm: guest facts` block tests/vm/run prints at the end, as a dict."""
    facts: dict[str, str] = {}
    lines = output.splitlines()
    if "== vm: guest facts" not in lines:
        return facts
    for line in lines[lines.index("== vm: guest facts") + 1 :]:
        if not line.startswith("   "):
            break
        key, _, value = line.strip().partition(": ")
        facts[key] = value
    return facts


def guest_summary(output: str, lines: int = 60) -> str:
    """The guest pytest's summary (from its `short test summary` on), else the output's tail."""
    out = output.splitlines()
    start = next((i for i, line in enumerate(out) if "short test summary info" in line), None)
    return "\n".join(out[start:] if start is not None else out[-lines:])


@pytest.mark.vm
@pytest.mark.timeout(1800)
def test_smoke_set_passes_in_a_systemd_cgroup_v2_guest() -> None:
    if os.environ.get("PYCTR_SKIP_VM") == "1":
        pytest.skip("PYCTR_SKIP_VM=1: the guest lane is skipped on purpose")
    assert shutil.which("qemu-system-x86_64"), (
        "qemu-system-x86_64 is missing: ./install.sh installs qemu-system-x86 for the guest lane"
    )
    proc = subprocess.run(
        [sys.executable, str(RUN), "--set", "smoke"],
        capture_output=True, text=True, timeout=1700, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    facts = guest_facts(proc.stdout)
    report = f"{guest_summary(proc.stdout)}\n--- stderr ---\n{proc.stderr[-3000:]}"
    assert facts.get("cgroup-fs") == "cgroup2fs", f"guest facts {facts}\n{report}"
    assert facts.get("pid1") == "systemd", f"guest facts {facts}\n{report}"
    assert proc.returncode == 0, f"guest smoke set exited {proc.returncode}:\n{report}"
