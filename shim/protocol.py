"""The shim's protocol, shared by the shim and the daemon: one copy of each fact.

- the file names in a task dir (socket, pid file, log, exit record, ...);
- the request and reply shapes on the socket (version, op names, error codes,
  the binary frame kinds of attach streams); the full wire format is in
  proto/shim_api.md;
- the exit record: the one file that says how a container ended, written by
  the shim and read by the daemon (also after a restart, or once the shim is
  gone).

Standard library only, and nothing beyond `os` and jsonlite: the shim loads
this module for every container, and the daemon imports it as
`pyctr.shim.protocol` without pulling in the rest of the shim.
"""

# ruff: noqa: SIM105  (contextlib.suppress would import contextlib: memory per shim)

from __future__ import annotations

import os

from pyctr.shim import jsonlite

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs memory at run time
    from typing import Any

PROTOCOL_VERSION = 1

# -- files in a task dir --------------------------------------------------------

SOCKET_NAME = "shim.sock"
PID_FILE = "shim.pid"
SHIM_LOG = "shim.log"  # the shim's stderr, opened by the daemon
EXIT_RECORD = "exit.json"
CONSOLE_SOCKET = "console.sock"
INIT_PID_FILE = "init.pid"  # runc --pid-file
RUNC_LOG = "runc.log"

# -- requests and replies ---------------------------------------------------------

# Every request: {"v": PROTOCOL_VERSION, "id": n, "op": OP, ...fields}. A reply:
# {"id": n, "result": {...}} or {"id": n, "error": {"code": CODE, "message": str}}.
OPS = frozenset(
    (
        "hello", "state", "start", "start_runc", "kill", "wait", "pause", "resume",
        "update", "pids", "stats", "reopen_log", "resize", "close_stdin", "exec", "attach",
        "subscribe", "delete", "shutdown",
    )
)  # fmt: skip
ERROR_CODES = frozenset(
    (
        "not_found", "invalid_argument", "failed_precondition", "already_exists",
        "unavailable", "deadline_exceeded", "unimplemented", "unsupported_version",
        "runc_failed", "internal",
    )
)  # fmt: skip

# Attach streams: frames of a 1-byte kind, a 4-byte big-endian length, the payload.
FRAME_STDIN = 0  # client -> shim: bytes for the process's stdin
FRAME_STDOUT = 1  # shim -> client
FRAME_STDERR = 2  # shim -> client
FRAME_EXIT = 3  # shim -> client: JSON exit status; the shim closes after it
FRAME_CLOSE_STDIN = 4  # client -> shim: empty payload
FRAME_RESIZE = 5  # client -> shim: JSON {"width": w, "height": h}


class ProtocolError(ValueError):
    """A message or record that does not follow this protocol."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def encode_request(req_id: int, op: str, args: dict[str, Any]) -> bytes:
    """One request line; fields that are None are left out.

    op is not checked against OPS: a newer shim may serve more, and an op it
    does not know gets an `unimplemented` error reply.
    """
    request: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": req_id, "op": op}
    request.update({k: v for k, v in args.items() if v is not None})
    return jsonlite.dumps(request).encode() + b"\n"


def check_version(version: Any) -> None:
    """Refuse a peer that speaks another protocol version."""
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"shim protocol version {PROTOCOL_VERSION} expected, not {version!r}",
        )


def decode_request(line: bytes) -> dict[str, Any]:
    """A request line as the shim receives it; ProtocolError if malformed.

    A request without "v" is taken as this version (clients before it was
    sent); any other version is refused.
    """
    try:
        request = jsonlite.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("invalid_argument", "request is not valid JSON") from None
    if not isinstance(request, dict):
        raise ProtocolError("invalid_argument", "request must be a JSON object")
    check_version(request.get("v", PROTOCOL_VERSION))
    return request


def decode_reply(line: bytes) -> dict[str, Any]:
    """A reply (or event) line as the daemon receives it; ProtocolError if malformed."""
    try:
        reply = jsonlite.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("internal", "reply from shim is not valid JSON") from None
    if not isinstance(reply, dict):
        raise ProtocolError("internal", f"reply from shim is not an object: {reply!r}")
    return reply


# -- the exit record ----------------------------------------------------------------

# {"v": 1, "id": container id, "pid": n, "exit_status": n, "signal": n,
#  "exited_at": ns since the epoch, "oom_killed": bool}. Records written before
# "v" was added have none and are read as version 1.
EXIT_FIELDS = ("pid", "exit_status", "signal", "exited_at")


class ExitRecordError(ProtocolError):
    """An exit record exists but cannot be used (torn, partial, other version)."""


def write_exit_record(path: str, record: dict[str, Any]) -> None:
    """Atomically replace path: a reader sees no record, the old one or the whole new one.

    Written to a temp file that is fsynced, renamed over path, and then the
    directory is fsynced too, so the rename itself survives a crash.
    """
    tmp = path + ".tmp"
    data = {"v": PROTOCOL_VERSION, **record}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, jsonlite.dumps(data).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_exit_record(path: str) -> dict[str, Any] | None:
    """The record at path; None if there is none; ExitRecordError if it is unusable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ExitRecordError("internal", f"cannot read exit record {path}: {exc}") from None
    if not data.endswith(b"\n"):  # the writer ends every record with one
        raise ExitRecordError("internal", f"exit record {path} is partial ({len(data)} bytes)")
    try:
        record = jsonlite.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ExitRecordError("internal", f"exit record {path} is not valid JSON") from None
    if not isinstance(record, dict):
        raise ExitRecordError("internal", f"exit record {path} is not an object")
    version = record.get("v", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise ExitRecordError("unsupported_version", f"exit record {path} has version {version!r}")
    for key in ("exit_status",):
        if not isinstance(record.get(key), int) or isinstance(record.get(key), bool):
            raise ExitRecordError("internal", f"exit record {path} has no {key}")
    for key in EXIT_FIELDS:
        if not isinstance(record.get(key, 0), int):
            raise ExitRecordError("internal", f"exit record {path}: {key} is not a number")
    return record
