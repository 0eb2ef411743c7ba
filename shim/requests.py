"""Checks of request fields: typed arguments, IDs, an exec's arguments."""

from __future__ import annotations

from pyctr.shim.process import DEFAULT_MAX_OUTPUT
from pyctr.shim.server import ShimError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs memory at run time
    from typing import Any, TypeGuard

MAX_OUTPUT_LIMIT = 64 << 20
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-+")


def valid_id(value: object, max_len: int = 128) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= max_len and set(value) <= _ID_CHARS


def arg(req: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = req.get(key, default)
    if value is default:
        return value
    # bool is an int in Python; keep them apart so `"signal": true` is refused.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ShimError("invalid_argument", f"{key!r} must be {kind.__name__}")
    return value


def exec_args(req: dict[str, Any]) -> tuple[str, dict[str, Any], str, bool, bool, Any, int]:
    """(exec_id, process, stdio mode, tty, stdin, timeout, max_output) of an exec request."""
    exec_id = req.get("exec_id")
    if not valid_id(exec_id):
        raise ShimError("invalid_argument", "exec_id must be 1-128 of [A-Za-z0-9_.+-]")
    process = arg(req, "process", dict)
    args = process.get("args") if process else None
    if not args or not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ShimError("invalid_argument", "process.args must be a non-empty string list")
    mode = arg(req, "stdio", str, "attach")
    if mode not in ("attach", "capture", "null"):
        raise ShimError("invalid_argument", "stdio must be attach, capture or null")
    tty = arg(req, "tty", bool, False)
    want_stdin = arg(req, "stdin", bool, False) and mode == "attach"
    timeout = req.get("timeout")
    if timeout is not None and (
        not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0
    ):
        raise ShimError("invalid_argument", "timeout must be a positive number of seconds")
    max_output = arg(req, "max_output", int, DEFAULT_MAX_OUTPUT)
    if not 0 <= max_output <= MAX_OUTPUT_LIMIT:
        raise ShimError("invalid_argument", f"max_output must be <= {MAX_OUTPUT_LIMIT}")
    return exec_id, process, mode, tty, want_stdin, timeout, max_output
