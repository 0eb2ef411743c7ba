"""Fixtures every test can use: a real pyctrd, and the leak check (autouse)."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import cgroups
from tests.support.daemon import PyctrDaemon
from tests.support.leaks import LeakCheck, become_subreaper, mounts

# One short base dir per session: unix socket paths must stay under 108 bytes.
TOKEN = f"pyctr-t{os.getpid()}"
BASE = Path(tempfile.gettempdir()) / TOKEN
_counter = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() == 0:
        become_subreaper()
        # The daemons' cgroup parent exists for the whole session, so the leak
        # check sees only the per-container cgroups below it.
        cgroups.setup_session(TOKEN)
    BASE.mkdir(mode=0o711, exist_ok=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(BASE, ignore_errors=True)
    if os.geteuid() == 0:
        cgroups.teardown_session(TOKEN)


@pytest.fixture(scope="session")
def leak_check(tmp_path_factory: pytest.TempPathFactory) -> LeakCheck:
    return LeakCheck(TOKEN, (str(BASE), str(tmp_path_factory.getbasetemp())))


@pytest.fixture(autouse=True)
def _no_leaks(leak_check: LeakCheck) -> Iterator[None]:
    before = leak_check.take()
    yield
    leaks = leak_check.diff(before)
    if leaks:
        leak_check.clean(before)
        pytest.fail("test left behind:\n  " + "\n  ".join(leaks), pytrace=False)


def safe_rmtree(path: Path) -> None:
    """rmtree that never descends into a mount left behind (the leak check reports it)."""
    if not any(m.startswith(str(path)) for m in mounts((str(path),))):
        shutil.rmtree(path, ignore_errors=True)


def new_base(name: str = "d") -> Path:
    path = BASE / f"{name}{next(_counter)}"
    path.mkdir(mode=0o711)
    return path


@pytest.fixture
def daemon_factory() -> Iterator[Callable[..., PyctrDaemon]]:
    """Start pyctrd's with custom config; all are stopped at teardown."""
    started: list[PyctrDaemon] = []

    def make(
        config_toml: str = "", extra_args: list[str] | None = None, start: bool = True
    ) -> PyctrDaemon:  # noqa: E501
        d = PyctrDaemon(new_base(), config_toml, extra_args)
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        d.stop()
        safe_rmtree(d.base)


@pytest.fixture(scope="module")
def module_pyctrd() -> Iterator[PyctrDaemon]:
    """One default pyctrd shared by a module's tests (for read-only sweeps)."""
    d = PyctrDaemon(new_base("m")).start()
    yield d
    d.stop()
    safe_rmtree(d.base)


@pytest.fixture
def pyctrd(daemon_factory: Callable[..., PyctrDaemon]) -> PyctrDaemon:
    """A running pyctrd with the default config on temp dirs."""
    return daemon_factory()
