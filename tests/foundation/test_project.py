"""Project hygiene: lint, types, the compose file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ["daemon", "snapshotter", "shim", "ctl", "proto/generate.py", "tests", "benchmarks"]


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_lint() -> None:
    proc = run(sys.executable, "-m", "ruff", "check", *SOURCES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format() -> None:
    proc = run(sys.executable, "-m", "ruff", "format", "--check", *SOURCES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy() -> None:
    proc = run(sys.executable, "-m", "mypy", "daemon", "snapshotter", "shim", "ctl")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="Debian's docker-compose not installed"
)
def test_compose_file_is_valid() -> None:
    proc = run("docker-compose", "-f", "docker-compose.test.yml", "config", "-q")
    assert proc.returncode == 0, proc.stderr
