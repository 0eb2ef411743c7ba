"""A real pyctrd for tests: temp root/state/socket, started and stopped by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import grpc

from pyctr.daemon.config import dump_toml
from tests.support import cgroups
from tests.support.timing import scaled


class DaemonError(Exception):
    pass


class PyctrDaemon:
    """One pyctrd process on its own dirs; restartable on the same dirs."""

    def __init__(self, base: Path, config_toml: str = "", extra_args: list[str] | None = None):
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.address = str(base / "pyctr.sock")
        self.config_path = base / "config.toml"
        self.log_path = base / "pyctrd.log"
        config = tomllib.loads(config_toml)
        # Containers' cgroups go under the session's token, where the leak check
        # looks, with the driver the session tests (see tests/support/cgroups.py).
        token = base.parent.name
        config.setdefault("runtime", {}).setdefault("cgroup_parent", cgroups.session_parent(token))
        config.setdefault("cri", {}).setdefault("cgroup_driver", cgroups.DRIVER)
        # NRI on, as by default, but on the test's own socket and plugin dir.
        nri = config.setdefault("nri", {})
        nri.setdefault("socket_path", str(base / "nri" / "nri.sock"))
        nri.setdefault("plugin_path", str(base / "nri" / "plugins"))
        nri.setdefault("plugin_config_path", str(base / "nri" / "conf.d"))
        self.config_path.write_text(dump_toml(config))
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "pyctr.daemon.main",
            "--config", str(self.config_path),
            "--root", str(self.root),
            "--state", str(self.state),
            "--address", self.address,
            "--log-level", "debug",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 20.0) -> PyctrDaemon:
        timeout = scaled(timeout)
        log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the child)
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonError(f"pyctrd exited with {self.proc.returncode}:\n{self.log()}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.kill()
        raise DaemonError(f"pyctrd did not come up in {timeout}s:\n{self.log()}")

    def _answers(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.address)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        timeout = scaled(timeout)
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise DaemonError(f"pyctrd ignored SIGTERM for {timeout}s:\n{self.log()}") from None

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> PyctrDaemon:
        self.stop()
        return self.start()

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix:{self.address}")

    def ctl(
        self, *args: str, check: bool = False, timeout: float = 120, **kw
    ) -> subprocess.CompletedProcess[str]:  # noqa: E501
        """Run the `pyctr` client against this daemon."""
        env = {**os.environ, "PYCTR_ADDRESS": self.address}
        return subprocess.run(
            [sys.executable, "-m", "pyctr.ctl.main", *args],
            capture_output=True, text=True, env=env, check=check, timeout=timeout, **kw,
        )  # fmt: skip
