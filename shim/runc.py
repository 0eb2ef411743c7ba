"""Running runc: one synchronous call at a time, with its error text kept.

A shim serves one container, and runc calls on one container are naturally
serial (containerd's shim takes a lock too), so each call blocks the loop
until runc exits, bounded by a timeout. Container output meanwhile waits in
its pipe. runc's own messages go to a JSON log file (`--log-format json`);
the last error-level entry written during the call becomes the error text.

Processes are started with fork + execve (see spawn): the subprocess module
would cost ~0.5 MB per shim.
"""

# ruff: noqa: SIM105  (contextlib.suppress would import contextlib: memory per shim)

from __future__ import annotations

import _signal
import _socket
import os
import select
import sys

from pyctr.shim import jsonlite

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and collections.abc cost memory at run time
    from collections.abc import Sequence

# Signals Python ignores that the container must see with default handling:
# an ignored disposition survives execve into runc and on into the container.
# (The SIGCHLD handler needs no reset: execve resets handled signals.)
_SIGDEF = (13, 25)  # SIGPIPE, SIGXFSZ
SIGKILL = 9
DEFAULT_TIMEOUT = 60.0
_LOG_LIMIT = 1 << 20


class RuncError(Exception):
    """runc failed; the message is runc's own error text."""

    def __init__(self, message: str, code: str = "runc_failed") -> None:
        super().__init__(message)
        self.code = code


class Result:
    __slots__ = ("status", "stdout", "stderr")

    def __init__(self, status: int, stdout: bytes, stderr: bytes) -> None:
        self.status = status
        self.stdout = stdout
        self.stderr = stderr


def find_executable(name: str) -> str:
    if "/" in name:
        path = os.path.abspath(name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
        raise RuncError(f"{name}: not an executable file", "invalid_argument")
    for d in os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin").split(":"):
        path = os.path.join(d or ".", name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    raise RuncError(f"{name}: executable not found in PATH", "invalid_argument")


def spawn(
    argv: Sequence[str], stdin: int, stdout: int, stderr: int, umask: int | None = None
) -> int:
    """Start argv with the given fds as 0, 1, 2; every other fd is close-on-exec.

    fork + execve by hand: os.posix_spawn (glibc) leaves glibc's internal
    signals (32, 33) ignored in the new program, and runc hands an ignored
    disposition on to the container's processes.
    """
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only execs
        try:
            os.dup2(stdin, 0)
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
            for signum in _SIGDEF:
                _signal.signal(signum, _signal.SIG_DFL)
            if umask is not None:
                os.umask(umask)
            os.execve(argv[0], list(argv), os.environ)
        except OSError as exc:
            os.write(err_w, b"%d" % (exc.errno or 0))
        finally:
            os._exit(127)
    os.close(err_w)
    try:
        failed = os.read(err_r, 32)  # EOF (b"") once execve closed the pipe
    finally:
        os.close(err_r)
    if failed:
        os.waitpid(pid, 0)
        code = int(failed)
        raise OSError(code, os.strerror(code))
    return pid


def wait_pid(pid: int, timeout: float) -> int:
    """waitpid with a deadline; the process is killed when it is not met.

    Returns the raw wait status, or -1 if the deadline passed. A pidfd tells
    when the process ended without reaping anything else: the shim's loop
    reaps all other children (container and exec processes) itself.
    """
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        os.kill(pid, SIGKILL)
        os.waitpid(pid, 0)
        return -1
    return os.waitpid(pid, 0)[1]


def _memfd(name: str) -> int:
    return os.memfd_create(name, os.MFD_CLOEXEC)


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


class Runc:
    """The OCI runtime (runc, or crun: the same command line) with the global
    flags of one shim: binary, state root, JSON log."""

    def __init__(
        self,
        binary: str,
        root: str | None,
        log_path: str,
        debug: bool = False,
        systemd_cgroup: bool = False,
        umask: int | None = None,
    ) -> None:
        self.binary = find_executable(binary)
        self.name = os.path.basename(self.binary)  # runc, crun, ...: errors say which
        self.root = root
        self.log_path = log_path
        self.umask = umask  # for runc; None: the shim's own
        self.debug = debug
        self.systemd_cgroup = systemd_cgroup

    def argv(self, *args: str) -> list[str]:
        argv = [self.binary, "--log", self.log_path, "--log-format", "json"]
        if self.debug:
            argv.append("--debug")
        if self.root:
            argv += ["--root", self.root]
        if self.systemd_cgroup:
            argv.append("--systemd-cgroup")
        return argv + list(args)

    def run(
        self,
        *args: str,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        input: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> Result:
        """Run `runc <args>` to completion; RuncError with runc's text if it fails.

        stdin/stdout/stderr default to /dev/null, a capture buffer and a
        capture buffer. For `create` and `exec` they are the container's own
        stdio, which runc passes on to the process it starts.
        """
        log_start = self._log_offset()
        own: list[int] = []
        try:
            if input is not None:
                stdin = _memfd("runc-stdin")
                own.append(stdin)
                os.write(stdin, input)
                os.lseek(stdin, 0, os.SEEK_SET)
            elif stdin is None:
                stdin = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
                own.append(stdin)
            out_fd = stdout if stdout is not None else _memfd("runc-stdout")
            err_fd = stderr if stderr is not None else _memfd("runc-stderr")
            own += [fd for fd, given in ((out_fd, stdout), (err_fd, stderr)) if given is None]
            try:
                pid = spawn(self.argv(*args), stdin, out_fd, err_fd, self.umask)
            except OSError as exc:
                raise RuncError(f"cannot run {self.binary}: {exc.strerror}") from None
            status = wait_pid(pid, timeout)
            out = _read_all(out_fd) if stdout is None else b""
            err = _read_all(err_fd) if stderr is None else b""
        finally:
            for fd in own:
                os.close(fd)
        if status == -1:
            raise RuncError(
                f"{self.name} {args[0]} timed out after {timeout:g}s", "deadline_exceeded"
            )
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and check:
            raise RuncError(self._error_text(log_start, err, args[0], code))
        return Result(code, out, err)

    def _log_offset(self) -> int:
        try:
            size = os.stat(self.log_path).st_size
        except FileNotFoundError:
            return 0
        if size > _LOG_LIMIT:  # keep the log bounded over a long-lived container
            os.truncate(self.log_path, 0)
            return 0
        return size

    def _error_text(self, offset: int, stderr: bytes, command: str, code: int) -> str:
        message = ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                lines = f.read(_LOG_LIMIT).splitlines()
        except OSError:
            lines = []
        for line in reversed(lines):
            try:
                entry = jsonlite.loads(line.decode("utf-8", "replace"))
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
                message = str(entry.get("msg", ""))
                break
        if not message:
            message = stderr.decode("utf-8", "replace").strip()
        if not message:
            message = f"exited with status {code}"
        return f"{self.name} {command}: {message}"


class ConsoleSocket:
    """The --console-socket listener: runc sends the pty master over it.

    runc connects and sends the fd (SCM_RIGHTS) before `runc create` or
    `runc exec -d` exits. A unix stream connection can carry data before it is
    accepted, so the shim can run runc to completion first and take the fd
    afterwards, without a concurrent accept.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        if len(path.encode()) >= 108:
            raise RuncError(f"console socket path too long: {path}", "invalid_argument")
        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self._sock.bind(path)
        os.chmod(path, 0o600)
        self._sock.listen(1)

    def receive_master(self, timeout: float = 5.0) -> int:
        """Accept runc's connection and return the pty master fd it sent."""
        self._sock.settimeout(timeout)
        try:
            fd, _ = self._sock._accept()  # type: ignore[attr-defined]
        except OSError as exc:
            raise RuncError(f"no pty from runc on console socket: {exc}") from None
        conn = _socket.socket(fileno=fd)
        try:
            conn.settimeout(timeout)
            # runc sends the pty name as data and the master as one SCM_RIGHTS fd.
            _, ancdata, _, _ = conn.recvmsg(4096, _socket.CMSG_SPACE(16))
        finally:
            conn.close()
        fds: list[int] = []
        for level, kind, data in ancdata:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                usable = len(data) - len(data) % 4
                fds += [int.from_bytes(data[i : i + 4], sys.byteorder) for i in range(0, usable, 4)]
        if not fds:
            raise RuncError("runc sent no pty master on the console socket")
        for extra in fds[1:]:
            os.close(extra)
        os.set_inheritable(fds[0], False)
        os.set_blocking(fds[0], False)
        return fds[0]

    def close(self) -> None:
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
