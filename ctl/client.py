"""The client side of the socket: channel, error mapping, exit codes.

Exit codes scripts can rely on (documented in README.md):
  0   success
  1   the daemon answered with an error (message printed)
  2   bad usage (argparse)
  3   not found (the daemon answered NOT_FOUND)
  69  the daemon cannot be reached (not running, wrong --address)
  77  permission denied on the socket
A command that runs a container (`pyctr run`) exits with the container's code.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from dataclasses import dataclass
from typing import NoReturn

import grpc

DEFAULT_ADDRESS = "/run/pyctr/pyctr.sock"
EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_NOPERM = 1, 2, 3, 69, 77


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def _hint(address: str) -> str:
    return (
        f"is pyctrd running? start it with `pyctrd --address {address}`, "
        "or point --address / PYCTR_ADDRESS at its socket"
    )


def check_socket(address: str) -> None:
    """Turn the usual "cannot connect" cases into one clear line before gRPC tries."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(address)
    except FileNotFoundError:
        raise CliError(
            f"no pyctrd socket at {address}: {_hint(address)}", EXIT_UNAVAILABLE
        ) from None
    except PermissionError:
        raise CliError(
            f"permission denied on {address}: run as root or as a member of the socket's group",
            EXIT_NOPERM,
        ) from None
    except OSError as e:
        if e.errno == errno.ECONNREFUSED:
            raise CliError(
                f"nothing is serving on {address} (stale socket): {_hint(address)}",
                EXIT_UNAVAILABLE,
            ) from None
        raise CliError(f"cannot connect to {address}: {e.strerror}", EXIT_UNAVAILABLE) from None
    finally:
        probe.close()


@dataclass
class Client:
    address: str
    timeout: float = 30.0
    _channel: grpc.Channel | None = None

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            check_socket(self.address)
            self._channel = grpc.insecure_channel(
                f"unix:{self.address}", options=[("grpc.enable_http_proxy", 0)]
            )
        return self._channel

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()


def resolve_address(flag: str | None) -> str:
    return flag or os.environ.get("PYCTR_ADDRESS") or DEFAULT_ADDRESS


def rpc_error(e: grpc.RpcError, address: str) -> CliError:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = (e.details() if hasattr(e, "details") else str(e)) or code.name
    if code == grpc.StatusCode.UNAVAILABLE and not _from_daemon(e):
        return CliError(
            f"cannot reach pyctrd at {address}: {details}; {_hint(address)}", EXIT_UNAVAILABLE
        )
    if code == grpc.StatusCode.NOT_FOUND:
        return CliError(details, EXIT_NOT_FOUND)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return CliError(details, EXIT_NOPERM)
    return CliError(f"{details} ({code.name})", EXIT_ERROR)


def _from_daemon(e: grpc.RpcError) -> bool:
    """Did pyctrd itself answer with this error (then it was reached)?"""
    trailing = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    return any(tuple(item)[0] == "pyctr-answered-by" for item in trailing or ())  # type: ignore[arg-type]


def fail(message: str, code: int) -> NoReturn:
    print(f"pyctr: {message}", file=sys.stderr)
    raise SystemExit(code)
