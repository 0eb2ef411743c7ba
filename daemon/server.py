"""The one grpc.aio server: CRI and the native API on one unix socket.

Every call passes through `CallInterceptor`, the single place where pyctr
errors become gRPC status codes, where unexpected exceptions are logged (and
answered with a short INTERNAL message, never a traceback), and where each
RPC's name and duration are logged at debug level.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from pyctr.daemon import metrics
from pyctr.daemon.context import Context
from pyctr.daemon.errors import InvalidArgument, PyctrError, disk_full
from pyctr.daemon.snapshots import daemon_error
from pyctr.snapshotter.errors import SnapshotterError

log = logging.getLogger("pyctr.rpc")

# 16 MiB: room for big ListContainers / ExecSync answers, small enough that a
# hostile client cannot make the daemon buffer gigabytes.
MAX_MESSAGE = 16 * 1024 * 1024
ANSWERED_BY = (("pyctr-answered-by", "pyctrd"),)


def _status_for(method: str, exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, SnapshotterError):
        # Raised by a direct call into the snapshotter (mount helpers): the
        # code it stands for, as if it had come through `Snapshots`.
        exc = daemon_error(exc)
    if isinstance(exc, PyctrError):
        return exc.code, str(exc)
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, f"{method.lstrip('/')} is not implemented by pyctr"
    if disk_full(exc):
        # Not a bug, and nothing the client did wrong: the node is out of space.
        log.warning("%s: disk full: %s", method, exc)
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"no space left on device{where}"
    log.error("unexpected error in %s", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error in {method.lstrip('/')}; see the pyctrd log"


def _log_done(method: str, started: float, outcome: str) -> None:
    took = time.perf_counter() - started
    metrics.observe_rpc(method, outcome, took)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s %s %.2fms", method, outcome, took * 1000)


def _decode(method: str, deserializer: Callable[[bytes], Any] | None, raw: Any) -> Any:
    """Parse the request here, not inside grpc, so bad bytes get INVALID_ARGUMENT."""
    if deserializer is None or not isinstance(raw, bytes):
        return raw
    try:
        return deserializer(raw)
    except DecodeError as e:
        raise InvalidArgument(f"malformed {method.rsplit('/', 1)[-1]} request: {e}") from None


@contextlib.asynccontextmanager
async def _answering(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Around each call: errors to status codes, and the debug log line."""
    started = time.perf_counter()
    outcome = "OK"
    try:
        yield
    except grpc.aio.AbortError:
        outcome = "aborted"
        raise
    except Exception as exc:
        code, message = _status_for(method, exc)
        outcome = code.name
        # Marked as pyctrd's own answer: a client tells an UNAVAILABLE registry
        # from a daemon it could not reach by this.
        await context.abort(code, message, trailing_metadata=ANSWERED_BY)
    finally:
        _log_done(method, started, outcome)


def _wrap_unary(
    method: str, fn: Callable[..., Awaitable[Any]], deserializer: Callable[[bytes], Any] | None
) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _answering(method, context):
            return await fn(_decode(method, deserializer, request), context)

    return call


def _wrap_stream(
    method: str, fn: Callable[..., Any], deserializer: Callable[[bytes], Any] | None
) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _answering(method, context):
            result = fn(_decode(method, deserializer, request), context)
            if inspect.isasyncgen(result):
                async for item in result:
                    yield item
            else:
                await result

    return call


class CallInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        parse = handler.request_deserializer
        out = {"response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary, parse), **out
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream, parse), **out
            )
        # Client-streaming calls keep grpc's own parsing of each message.
        kw = {"request_deserializer": parse, **out}
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(method, handler.stream_unary, None), **kw
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(method, handler.stream_stream, None), **kw
        )


def build(ctx: Context) -> grpc.aio.Server:
    """The server with every service registered; not yet bound or started."""
    from pyctr.daemon.api import containers, images, snapshots, system
    from pyctr.daemon.cri import runtime
    from pyctr.proto import cri_pb2_grpc, system_pb2_grpc

    server = grpc.aio.server(
        interceptors=[CallInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ],
    )
    # Services, one line each.
    cri_pb2_grpc.add_RuntimeServiceServicer_to_server(runtime.RuntimeService(ctx), server)
    images.register(server, ctx.images)  # CRI ImageService + Images, Content, GC
    containers.register(server, ctx)  # Containers, Events
    snapshots.register(server, ctx)
    system_pb2_grpc.add_SystemServicer_to_server(system.SystemService(ctx), server)
    return server
