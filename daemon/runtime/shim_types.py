"""What the daemon and a shim exchange: options, replies, events, and errors.

Plain data, no I/O: the shape of a shim's command line (ShimOptions), of its
replies (ShimState, ExecResult, DeleteResult, ContainerStats), of the exit
record and of the events it streams. Every error a shim reports is raised as
a pyctr.daemon.errors class (runc's own failures as RuncError, UNKNOWN),
carrying the shim's message; `shim_error` does the mapping. The wire
protocol is in proto/shim_api.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyctr.daemon import errors


class RuncError(errors.PyctrError):
    """runc refused or failed; the message is runc's own error text."""


_ERRORS: dict[str, type[errors.PyctrError]] = {
    "not_found": errors.NotFound,
    "invalid_argument": errors.InvalidArgument,
    "failed_precondition": errors.FailedPrecondition,
    "already_exists": errors.AlreadyExists,
    "unavailable": errors.Unavailable,
    "deadline_exceeded": errors.DeadlineExceeded,
    "unimplemented": errors.Unimplemented,
    "unsupported_version": errors.FailedPrecondition,
    "runc_failed": RuncError,
    "internal": errors.Internal,
}


def shim_error(err: Any) -> errors.PyctrError:
    if not isinstance(err, dict):
        return errors.Internal(f"malformed error from shim: {err!r}")
    cls = _ERRORS.get(str(err.get("code")), errors.Internal)
    return cls(str(err.get("message", "")))


@dataclass(frozen=True)
class ShimOptions:
    """What one shim is started with (its command line, see shim_command)."""

    id: str
    bundle: str
    state_dir: str
    runc: str = "runc"
    runc_root: str | None = None  # runc --root; None = runc's default (/run/runc)
    log_path: str | None = None  # CRI log file; None = output only to attached clients
    tty: bool = False
    stdin: bool = False
    debug: bool = False
    start: bool = False  # start the container too (one `runc run`): spawn returns it running
    systemd_cgroup: bool = False  # runc's systemd cgroup driver (cgroupsPath slice:prefix:name)


@dataclass(frozen=True)
class ExitRecord:
    pid: int
    exit_status: int  # 128+signal when killed by a signal
    signal: int  # 0 unless killed by a signal
    exited_at: int  # ns since the epoch
    oom_killed: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExitRecord:
        return cls(
            pid=int(d.get("pid", 0)),
            exit_status=int(d["exit_status"]),
            signal=int(d.get("signal", 0)),
            exited_at=int(d.get("exited_at", 0)),
            oom_killed=bool(d.get("oom_killed", False)),
        )


@dataclass(frozen=True)
class ExecStatus:
    exec_id: str
    pid: int
    running: bool
    exit: ExitRecord | None


@dataclass(frozen=True)
class ShimState:
    id: str
    pid: int
    status: str  # created | running | paused | stopped | deleted
    exit: ExitRecord | None
    shim_pid: int
    bundle: str
    tty: bool
    stdin: bool
    log_path: str | None
    log_dropped: int  # log records lost to write errors (disk full)
    log_error: str
    execs: list[ExecStatus] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShimState:
        execs = [
            ExecStatus(
                e["exec_id"],
                e["pid"],
                e["running"],
                ExitRecord.from_dict(e["exit"]) if e.get("exit") else None,
            )
            for e in d.get("execs", [])
        ]
        return cls(
            id=d["id"],
            pid=d["pid"],
            status=d["status"],
            exit=ExitRecord.from_dict(d["exit"]) if d.get("exit") else None,
            shim_pid=d["shim_pid"],
            bundle=d["bundle"],
            tty=d["tty"],
            stdin=d["stdin"],
            log_path=d.get("log_path"),
            log_dropped=d.get("log_dropped", 0),
            log_error=d.get("log_error", ""),
            execs=execs,
        )


@dataclass(frozen=True)
class ContainerStats:
    """From the container's cgroup; None where the kernel does not say."""

    timestamp: int
    cpu_usage_ns: int | None
    memory_usage: int | None
    memory_working_set: int | None
    memory_rss: int | None
    memory_limit: int | None
    page_faults: int | None
    major_page_faults: int | None
    pids_current: int | None
    pids_limit: int | None


@dataclass(frozen=True)
class ExecResult:
    exec_id: str
    exit: ExitRecord
    stdout: bytes
    stderr: bytes
    truncated: bool  # output beyond max_output was dropped
    timed_out: bool  # the shim killed it when the timeout passed

    @property
    def exit_code(self) -> int:
        return self.exit.exit_status


@dataclass(frozen=True)
class DeleteResult:
    exit: ExitRecord | None
    rootfs: str  # still mounted: unmounting it is the daemon's job
    rootfs_unmounted: bool


@dataclass(frozen=True)
class ShimEvent:
    kind: str  # exit | exec_exit | oom | delete
    container_id: str
    timestamp: int
    exec_id: str | None = None
    exit: ExitRecord | None = None
