"""Fixtures for the snapshotter tests: a snapshotter per backend on a temp dir."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyctr.daemon.metadata import Metadata
from pyctr.snapshotter import Snapshotter, open_snapshotter

BACKENDS = ["overlayfs", "native"]


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("snapshotter tests run as root")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Metadata]:
    meta = Metadata(tmp_path / "meta.db")
    yield meta
    meta.close()


@pytest.fixture
def make_sn(tmp_path: Path, db: Metadata) -> Callable[[str], Snapshotter]:
    def make(backend: str) -> Snapshotter:
        return open_snapshotter(backend, db, tmp_path / f"sn-{backend}")

    return make


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sn(make_sn: Callable[[str], Snapshotter], backend: str) -> Snapshotter:
    return make_sn(backend)


@pytest.fixture
def mnt(tmp_path: Path) -> Path:
    path = tmp_path / "mnt"
    path.mkdir()
    return path
