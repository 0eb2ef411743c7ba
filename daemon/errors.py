"""pyctr's error hierarchy and its one mapping to gRPC status codes.

Code anywhere in the daemon raises one of these; the server's interceptor turns
it into a status with the message as written. Anything else that escapes a
handler is logged with its traceback and answered as INTERNAL with a short
message, never the traceback itself.
"""

from __future__ import annotations

import errno
import sqlite3

import grpc


class PyctrError(Exception):
    """Base of every error that is meant to reach a client."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class NotFound(PyctrError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(PyctrError):
    code = grpc.StatusCode.ALREADY_EXISTS


class InvalidArgument(PyctrError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(PyctrError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(PyctrError):
    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(PyctrError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(PyctrError):
    code = grpc.StatusCode.PERMISSION_DENIED


class DeadlineExceeded(PyctrError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(PyctrError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unimplemented(PyctrError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(PyctrError):
    code = grpc.StatusCode.INTERNAL


class DataLoss(PyctrError):
    """Content that does not match its digest or size."""

    code = grpc.StatusCode.DATA_LOSS


def disk_full(exc: BaseException) -> bool:
    """Did this fail because a filesystem (or the metadata database on it) is full?"""
    if isinstance(exc, ResourceExhausted):
        return "no space left" in str(exc).lower()
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    # SQLite's SQLITE_FULL: the database could not grow.
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)
