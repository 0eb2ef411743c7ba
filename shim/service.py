"""The shim's one container: create, the ops of the socket API, exits.

Each op is a method `op_<name>(conn, request)` returning the reply's result,
or None when it replies later itself. State moves
created -> running <-> paused -> stopped -> deleted; an op that does not fit
the state gets a failed_precondition error instead of a runc error.
"""

# ruff: noqa: SIM105  (contextlib.suppress would import contextlib: memory per shim)

from __future__ import annotations

import os
import time

from pyctr.shim import jsonlite
from pyctr.shim.cgroups import Cgroup, cgroup_dir
from pyctr.shim.crilog import CriLogWriter
from pyctr.shim.loop import Loop
from pyctr.shim.oom import OomWatch
from pyctr.shim.process import (
    ATTACH_DROP,
    ExecProc,
    Proc,
)
from pyctr.shim.protocol import (
    CONSOLE_SOCKET,
    EXIT_RECORD,
    FRAME_CLOSE_STDIN,
    FRAME_EXIT,
    FRAME_RESIZE,
    FRAME_STDERR,
    FRAME_STDIN,
    FRAME_STDOUT,
    INIT_PID_FILE,
    PROTOCOL_VERSION,
    RUNC_LOG,
    SOCKET_NAME,
    write_exit_record,
)
from pyctr.shim.requests import arg, exec_args
from pyctr.shim.runc import Runc, RuncError
from pyctr.shim.server import (
    ATTACH,
    EVENTS,
    Connection,
    Server,
    ShimError,
)
from pyctr.shim.spawn import create_container, start_exec
from pyctr.shim.stdio import Stdio

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs memory at run time
    from collections.abc import Callable
    from typing import Any

    from pyctr.shim.options import Options
    from pyctr.shim.process import ExitInfo

    Request = dict[str, Any]
    Result = dict[str, Any] | None

CREATED, RUNNING, PAUSED, STOPPED, DELETED = "created", "running", "paused", "stopped", "deleted"
MAX_EXITED_EXECS = 64  # finished execs kept for `wait` and `state`
KILL_RETRY = 0.1  # seconds between kills of a container's leftovers


class Shim:
    OPS = frozenset(
        (
            "hello", "state", "start", "kill", "exec", "wait", "attach", "resize", "close_stdin",
            "pids", "stats", "pause", "resume", "update", "reopen_log", "subscribe", "delete",
            "shutdown",
        )
    )  # fmt: skip

    def __init__(self, opts: Options, loop: Loop, log: Callable[[str], None]) -> None:
        self.opts = opts
        self.loop = loop
        self.log_line = log
        self.state_dir = opts.state
        # The daemon's umask 077 would make runc's cgroup dirs 0700, which the
        # root of a user-namespaced container (an unprivileged host ID) cannot
        # pass; such containers get runc with 022, as on any other node.
        userns = _has_user_namespace(_spec(opts.bundle))
        self.runc = Runc(
            opts.runc, opts.runc_root, self._path(RUNC_LOG), opts.debug, opts.systemd_cgroup,
            umask=0o022 if userns else None,
        )  # fmt: skip
        self.log = CriLogWriter(opts.log_path)
        self.status = CREATED
        self.init: Proc | None = None
        self.execs: dict[str, ExecProc] = {}
        self.procs: dict[int, Proc] = {}  # live processes by pid, for the reaper
        self.attachers: set[Connection] = set()
        self.subscribers: set[Connection] = set()
        self.cgroup: Cgroup | None = None
        self.server: Server | None = None
        self._exec_seq = 0
        self.oom: OomWatch | None = None
        self._exiting = False

    def _path(self, name: str) -> str:
        return os.path.join(self.state_dir, name)

    # -- startup -----------------------------------------------------------

    def create(self) -> int:
        """`runc create` with the shim holding the stdio; returns the init pid.

        With --start, `runc run --detach` instead: one runc process instead of
        two (about 10 ms less per container). The cgroup must then be known
        from config.json, as the process may already have exited: when
        cgroupsPath does not tell it, create and start.
        """
        opts = self.opts
        cgroup_path = _cgroups_path(opts.bundle) if opts.start else None
        run = cgroup_path is not None
        if cgroup_path is not None:
            self.cgroup = Cgroup.of_path(cgroup_path)
            self.oom = OomWatch(self.loop, self.cgroup, self._oom)
        pid, stdio = create_container(
            self.runc,
            self.loop,
            opts.id,
            opts.bundle,
            self.state_dir,
            opts.tty,
            opts.stdin,
            run=run,
        )
        self.init = Proc(self.loop, pid, stdio)
        self.init.on_final = self._container_exited
        self.procs[pid] = self.init
        stdio.sinks.append(self._container_output)
        if self.oom is None:
            self.cgroup = Cgroup.of_pid(pid)
            self.oom = OomWatch(self.loop, self.cgroup, self._oom)
        self.oom.watch()
        if run:
            self.status = RUNNING
        elif opts.start:
            self.op_start_runc()
        return pid

    def serve(self) -> None:
        self.server = Server(self.loop, self._path(SOCKET_NAME), self.handle)
        self.loop.watch_signals((17,), self.reap)  # SIGCHLD
        self.reap()  # anything that died before the handler was in place

    # -- requests ----------------------------------------------------------

    def handle(self, conn: Connection, req: Request) -> Result:
        op = req.get("op")
        if op not in self.OPS:
            raise ShimError("unimplemented", f"unknown op {op!r}")
        if self._exiting and op not in ("hello", "state", "wait"):
            raise ShimError("unavailable", "shim is shutting down")
        if self.opts.debug:
            self.log_line(f"op {op} id={req.get('id')!r}")
        try:
            result: Result = getattr(self, "op_" + op)(conn, req)
            return result
        except RuncError as exc:
            raise ShimError(exc.code, str(exc)) from None

    def op_hello(self, conn: Connection, req: Request) -> Result:
        return {
            "version": PROTOCOL_VERSION,
            "id": self.opts.id,
            "shim_pid": os.getpid(),
            "ops": sorted(self.OPS),
        }

    def op_state(self, conn: Connection, req: Request) -> dict[str, Any]:
        init = self.init
        assert init is not None
        execs = [
            {"exec_id": e.exec_id, "pid": e.pid, "running": e.exit is None, "exit": e.exit}
            for e in self.execs.values()
        ]
        return {
            "id": self.opts.id,
            "pid": init.pid,
            "status": self.status,
            "exit": init.exit,
            "bundle": self.opts.bundle,
            "tty": self.opts.tty,
            "stdin": self.opts.stdin,
            "shim_pid": os.getpid(),
            "log_path": self.opts.log_path,
            "log_dropped": self.log.dropped,
            "log_error": self.log.last_error,
            "execs": execs,
        }

    def _need(self, *states: str) -> None:
        if self.status not in states:
            raise ShimError("failed_precondition", f"container {self.opts.id} is {self.status}")

    def op_start(self, conn: Connection, req: Request) -> Result:
        self._need(CREATED)
        self.op_start_runc()
        assert self.init is not None
        return {"pid": self.init.pid}

    def op_start_runc(self) -> None:
        self.runc.run("start", self.opts.id)
        if self.status == CREATED:  # its exit may have been seen meanwhile
            self.status = RUNNING

    def op_kill(self, conn: Connection, req: Request) -> Result:
        sig = arg(req, "signal", int, 15)
        if not 0 < sig < 65:
            raise ShimError("invalid_argument", f"bad signal {sig}")
        exec_id = arg(req, "exec_id", str)
        if exec_id is not None:
            proc = self._exec(exec_id)
            # Not reaped yet means the pid is still ours: no risk of reuse.
            if proc.running:
                os.kill(proc.pid, sig)
            return {"running": proc.running}
        if self.status in (STOPPED, DELETED):
            return {"running": False}
        args = ["kill", "--all"] if arg(req, "all", bool, False) else ["kill"]
        try:
            self.runc.run(*args, self.opts.id, str(sig))
        except RuncError as exc:
            # The container ended between our check and runc's: the goal is met.
            if "not running" not in str(exc) and "does not exist" not in str(exc):
                raise
        return {"running": self.status not in (STOPPED, DELETED)}

    def op_pause(self, conn: Connection, req: Request) -> Result:
        self._need(RUNNING)
        self.runc.run("pause", self.opts.id)
        self.status = PAUSED
        return {}

    def op_resume(self, conn: Connection, req: Request) -> Result:
        self._need(PAUSED)
        self.runc.run("resume", self.opts.id)
        if self.status == PAUSED:
            self.status = RUNNING
        return {}

    def op_update(self, conn: Connection, req: Request) -> Result:
        self._need(CREATED, RUNNING, PAUSED)
        resources = arg(req, "resources", dict)
        if resources is None:
            raise ShimError("invalid_argument", "'resources' is required")
        data = jsonlite.dumps(resources).encode()
        self.runc.run("update", "--resources", "-", self.opts.id, input=data)
        return {}

    def op_pids(self, conn: Connection, req: Request) -> Result:
        self._need(CREATED, RUNNING, PAUSED)
        pids = self.cgroup.procs() if self.cgroup else None
        if pids is None:
            out = self.runc.run("ps", "--format", "json", self.opts.id).stdout
            pids = jsonlite.loads(out.decode() or "[]") or []
        owners = {p.pid: p.exec_id for p in self.procs.values()}
        return {"pids": [{"pid": p, "exec_id": owners.get(p)} for p in pids]}

    def op_stats(self, conn: Connection, req: Request) -> Result:
        self._need(CREATED, RUNNING, PAUSED, STOPPED)
        assert self.cgroup is not None
        return self.cgroup.stats()

    def op_reopen_log(self, conn: Connection, req: Request) -> Result:
        if not self.log.reopen():
            raise ShimError("internal", self.log.last_error)
        return {}

    def op_wait(self, conn: Connection, req: Request) -> Result:
        exec_id = arg(req, "exec_id", str)
        proc = self._exec(exec_id) if exec_id is not None else self.init
        assert proc is not None
        req_id = req.get("id")

        def done(exit: ExitInfo) -> None:
            conn.reply(req_id, exit)

        proc.when_final(done)
        return None

    def op_subscribe(self, conn: Connection, req: Request) -> Result:
        conn.reply(req.get("id"), self.op_state(conn, req))
        conn.mode = EVENTS
        self.subscribers.add(conn)
        conn.on_close.append(lambda: self.subscribers.discard(conn))
        return None

    def _event(self, event: dict[str, Any]) -> None:
        event["id"] = self.opts.id
        event["timestamp"] = time.time_ns()
        for conn in list(self.subscribers):
            conn.send_json(event)
            if conn.backlog > ATTACH_DROP:
                conn.close()

    # -- stdio: attach, resize, close_stdin --------------------------------

    def _container_output(self, stream: bytes, data: bytes) -> None:
        self.log.write(stream, data)
        kind = FRAME_STDOUT if stream == b"stdout" else FRAME_STDERR
        for conn in list(self.attachers):
            conn.send_frame(kind, data)
            if conn.backlog > ATTACH_DROP:  # never let one slow client hold the container
                conn.close()

    def op_attach(self, conn: Connection, req: Request) -> Result:
        self._need(CREATED, RUNNING, PAUSED)
        assert self.init is not None
        stdio = self.init.stdio
        conn.reply(req.get("id"), {"pid": self.init.pid, "tty": self.opts.tty})
        conn.mode = ATTACH
        conn.on_frame = lambda kind, data: self._frame(conn, stdio, kind, data)
        self.attachers.add(conn)
        conn.on_close.append(lambda: self.attachers.discard(conn))
        return None

    def _frame(self, conn: Connection, stdio: Stdio, kind: int, data: bytes) -> None:
        if kind == FRAME_STDIN:
            stdio.write_stdin(data)
            if stdio.stdin_backlog > (1 << 20):
                # Let the client wait instead of buffering without bound.
                conn.pause_reading()
                stdio.on_stdin_drained = self._resume_readers
        elif kind == FRAME_CLOSE_STDIN:
            stdio.close_stdin()
        elif kind == FRAME_RESIZE:
            try:
                size = jsonlite.loads(data.decode())
                _resize(stdio, int(size["width"]), int(size["height"]))
            except (ValueError, KeyError, TypeError, ShimError):
                pass

    def _resume_readers(self) -> None:
        for conn in list(self.attachers) + [e.conn for e in self.execs.values() if e.conn]:
            conn.resume_reading()

    def op_resize(self, conn: Connection, req: Request) -> Result:
        width, height = arg(req, "width", int, 0), arg(req, "height", int, 0)
        proc = self._proc(req)
        if proc.exit is not None:
            raise ShimError("failed_precondition", "process has exited")
        _resize(proc.stdio, width, height)
        return {}

    def op_close_stdin(self, conn: Connection, req: Request) -> Result:
        self._proc(req).stdio.close_stdin()
        return {}

    def _proc(self, req: Request) -> Proc:
        exec_id = arg(req, "exec_id", str)
        if exec_id is not None:
            return self._exec(exec_id)
        assert self.init is not None
        return self.init

    def _exec(self, exec_id: str) -> ExecProc:
        proc = self.execs.get(exec_id)
        if proc is None:
            raise ShimError("not_found", f"exec {exec_id!r} not found")
        return proc

    # -- exec --------------------------------------------------------------

    def op_exec(self, conn: Connection, req: Request) -> Result:
        exec_id, process, mode, tty, want_stdin, timeout, max_output = exec_args(req)
        old = self.execs.get(exec_id)
        if old is not None and old.exit is None:
            raise ShimError("already_exists", f"exec {exec_id!r} is running")
        self._need(RUNNING)

        process = dict(process, terminal=tty)
        self._exec_seq += 1
        pid, stdio = start_exec(
            self.runc,
            self.loop,
            self.opts.id,
            self.state_dir,
            self._exec_seq,
            process,
            tty=tty,
            stdin=want_stdin,
            discard=mode == "null",
        )
        proc = ExecProc(self.loop, pid, stdio, exec_id, mode, max_output)
        if old is not None:
            del self.execs[exec_id]
        self.execs[exec_id] = proc
        self.procs[proc.pid] = proc
        proc.on_final = self._exec_exited
        self._forget_old_execs()
        if timeout is not None:
            proc.timeout = self.loop.call_later(float(timeout), lambda: self._exec_timeout(proc))
        req_id = req.get("id")
        if mode == "capture":
            proc.when_final(lambda _exit: conn.reply(req_id, proc.capture_result()))
            return None
        result = {"exec_id": exec_id, "pid": proc.pid}
        if mode == "attach":
            conn.reply(req_id, result)
            conn.mode = ATTACH
            conn.on_frame = lambda kind, data: self._frame(conn, proc.stdio, kind, data)
            # The client went away: its process sees EOF on stdin, as with a closed terminal.
            conn.on_close.append(proc.stdio.close_stdin)
            proc.attach(conn)
            return None
        return result

    def _exec_timeout(self, proc: ExecProc) -> None:
        if proc.running:
            proc.timed_out = True
            os.kill(proc.pid, 9)

    def _forget_old_execs(self) -> None:
        done = [k for k, e in self.execs.items() if e.exit is not None]
        for exec_id in done[: max(0, len(done) - MAX_EXITED_EXECS)]:
            del self.execs[exec_id]

    # -- exits -------------------------------------------------------------

    def reap(self) -> None:
        """Collect every child that ended: ours, or orphans we adopted as subreaper."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.procs.pop(pid, None)
            if proc is self.init and self.oom is not None:
                # Now, not when the output is drained: under the systemd driver
                # the scope and its counters go as soon as it is empty.
                self.oom.sample(killed=os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9)
            if proc is not None:
                proc.reap(status, time.time_ns())
                if proc is self.init and proc.exit is None:
                    self.kill_leftovers()

    def kill_leftovers(self) -> None:
        """Init is gone but the container's output is still open: other
        processes of the container hold it (a pod-shared PID namespace, a
        child sent to the background). The kubelet takes the container as
        over, so kill what is left of it now; the output then ends and the
        exit is final, every line read. Again every KILL_RETRY while it stays
        open (a fork can race the kill); OUTPUT_GRACE bounds the wait."""
        init = self.init
        if init is None or init.exit is not None or self.cgroup is None:
            return
        self.cgroup.kill()
        self.loop.call_later(KILL_RETRY, self.kill_leftovers)

    def _exec_exited(self, proc: Proc) -> None:
        assert isinstance(proc, ExecProc) and proc.exit is not None
        if proc.conn is not None and not proc.conn.closed:
            proc.conn.send_frame(FRAME_EXIT, jsonlite.dumps(proc.exit).encode())
            proc.conn.close_after_flush()
        self._event({"event": "exec_exit", "exec_id": proc.exec_id, **proc.exit})

    def _container_exited(self, proc: Proc) -> None:
        assert proc.exit is not None
        self.log.flush(b"stdout")
        self.log.flush(b"stderr")
        if self.oom is not None:
            proc.exit["oom_killed"] = self.oom.at_exit()
        write_exit_record(self._path(EXIT_RECORD), {"id": self.opts.id, **proc.exit})
        if self.status != DELETED:
            self.status = STOPPED
        payload = jsonlite.dumps(proc.exit).encode()
        for conn in list(self.attachers):
            conn.send_frame(FRAME_EXIT, payload)
            conn.close_after_flush()
        self._event({"event": "exit", **proc.exit})

    def _oom(self, kills: int) -> None:
        self._event({"event": "oom", "oom_kills": kills})

    # -- delete and shutdown -----------------------------------------------

    def op_delete(self, conn: Connection, req: Request) -> Result:
        force = arg(req, "force", bool, False)
        if self.status == DELETED:
            return self._deleted_result()
        if not force:
            self._need(CREATED, STOPPED)
        self._runc_delete(force or self.status == CREATED)
        req_id = req.get("id")
        self._after_init_exit(lambda: self._finish_delete(conn, req_id))
        return None

    def _runc_delete(self, force: bool) -> None:
        try:
            self.runc.run("delete", *(["--force"] if force else []), self.opts.id)
        except RuncError as exc:
            if "does not exist" not in str(exc):
                raise

    def _after_init_exit(self, callback: Callable[[], None]) -> None:
        """Run callback once the init's exit is final (runc delete just killed it)."""
        init = self.init
        assert init is not None
        if init.reaped is not None:
            init.finish()  # no more output is coming: the container is gone
        if init.exit is not None:
            callback()
            return
        timer = self.loop.call_later(5.0, callback)

        def done(_exit: ExitInfo) -> None:
            if not timer.cancelled:
                timer.cancel()
                callback()

        init.when_final(done)

    def _finish_delete(self, conn: Connection, req_id: Any) -> None:
        if self.status == DELETED:
            conn.reply(req_id, self._deleted_result())
            return
        self.status = DELETED
        if self.oom is not None:
            self.oom.close()
        for name in (INIT_PID_FILE, CONSOLE_SOCKET):
            _unlink(self._path(name))
        conn.reply(req_id, self._deleted_result())
        self._event({"event": "delete"})
        self.exit_soon()

    def _deleted_result(self) -> dict[str, Any]:
        assert self.init is not None
        return {
            "exit": self.init.exit,
            # The shim never touches mounts: the daemon unmounts the rootfs.
            "rootfs": os.path.join(self.opts.bundle, "rootfs"),
            "rootfs_unmounted": False,
        }

    def op_shutdown(self, conn: Connection, req: Request) -> Result:
        if self.status != DELETED:
            if not arg(req, "force", bool, False):
                raise ShimError(
                    "failed_precondition",
                    f"container {self.opts.id} is {self.status}: delete it first or force",
                )
            self._runc_delete(True)
            req_id = req.get("id")

            def finish() -> None:
                self.status = DELETED
                conn.reply(req_id, {})
                self.exit_soon()

            self._after_init_exit(finish)
            return None
        self.exit_soon()
        return {}

    def exit_soon(self) -> None:
        """Stop serving; exit once every reply is flushed (or after 2 s)."""
        if self._exiting:
            return
        self._exiting = True
        if self.server is not None:
            self.server.close()
        for conn in list(self.subscribers):
            conn.close_after_flush()
        deadline = time.monotonic() + 2.0

        def check() -> None:
            conns = self.server.connections if self.server else set()
            if all(c.backlog == 0 for c in conns) or time.monotonic() > deadline:
                self.loop.stop()
            else:
                self.loop.call_later(0.05, check)

        self.loop.call_later(0, check)

    def close(self) -> None:
        if self.init is not None:
            self.init.stdio.close()
        for proc in self.execs.values():
            proc.stdio.close()
        self.log.close()
        if self.oom is not None:
            self.oom.close()


def _spec(bundle: str) -> dict | None:
    """The bundle's config.json, or None if it cannot be read."""
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            spec = jsonlite.loads(f.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None
    return spec if isinstance(spec, dict) else None


def _has_user_namespace(spec: dict | None) -> bool:
    try:
        return any(ns.get("type") == "user" for ns in spec["linux"]["namespaces"])  # type: ignore[index]
    except (KeyError, TypeError, AttributeError):
        return False


def _cgroups_path(bundle: str) -> str | None:
    """The cgroup runc will make for config.json's linux.cgroupsPath (the same
    path under every hierarchy, with either driver); None if unknown."""
    try:
        path = _spec(bundle)["linux"]["cgroupsPath"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    return cgroup_dir(path) if isinstance(path, str) else None


def _resize(stdio: Stdio, width: int, height: int) -> None:
    if stdio.master < 0:
        raise ShimError("failed_precondition", "process has no tty")
    if not (0 < width < 65536 and 0 < height < 65536):
        raise ShimError("invalid_argument", "width and height must be 1-65535")
    stdio.resize(width, height)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
