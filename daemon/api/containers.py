"""pyctr.v1 Containers and Events services (for `pyctr run|ps|exec|logs|events`).

Handlers translate messages and delegate: lifecycles to the runtime manager,
the native container's spec to `native_spec`, reading logs to `log_reader`.
The streaming calls (Exec, Attach) join a gRPC stream to a shim stream: one
task feeds the client's stdin, resizes and EOF to the shim while the handler
relays the process's output and, last, its exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from pyctr.daemon.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from pyctr.daemon.runtime.logs import LogReader, tail_offset
from pyctr.daemon.runtime.manager import RuntimeManager
from pyctr.daemon.runtime.records import ConsoleSize, Container, NativeContainer
from pyctr.daemon.runtime.shim_attach import AttachStream
from pyctr.daemon.runtime.shim_types import ExitRecord
from pyctr.daemon.spec.native import (
    check_request,
    native_record,
    parse_env,
    spec_builder,
)
from pyctr.daemon.spec.oci import exec_process
from pyctr.daemon.spec.rootfs import UnknownUser, resolve_user
from pyctr.proto import containers_pb2 as pb
from pyctr.proto import containers_pb2_grpc

if TYPE_CHECKING:
    from pyctr.daemon.context import Context

# How often `logs --follow` looks for new output and for the exit.
LOG_POLL = 0.1
# How often Wait looks whether a created container was started.
CREATED_POLL = 0.2
STOP_TIMEOUT = 10.0
MAX_TOPICS = 32


def container_info(c: Container) -> pb.ContainerInfo:
    process = c.spec.get("process") or {}
    return pb.ContainerInfo(
        id=c.id,
        name=c.name,
        image=c.image,
        image_id=c.image_id,
        status=c.status,
        pid=c.pid,
        created_at=c.created_at,
        started_at=c.started_at,
        finished_at=c.finished_at,
        exit_code=c.exit_code,
        reason=c.reason,
        message=c.message,
        args=list(process.get("args") or []),
        labels=c.labels,
        tty=c.tty,
        stdin=c.stdin,
        log_path=c.log_path,
        auto_remove=c.auto_remove,
        kind=c.kind,
        sandbox_id=c.sandbox_id,
        network=c.network if isinstance(c, NativeContainer) else "",
    )


def exit_message(record: ExitRecord) -> pb.ContainerIOResponse:
    return pb.ContainerIOResponse(
        exit=pb.ContainerExit(
            exit_code=record.exit_status,
            signal=record.signal,
            exited_at=record.exited_at,
            oom_killed=record.oom_killed,
        )
    )


def _size(msg: pb.ContainerResize) -> tuple[int, int]:
    if not (0 < msg.width < 65536 and 0 < msg.height < 65536):
        raise InvalidArgument("terminal width and height must be 1-65535")
    return msg.width, msg.height


def _signal(number: int) -> int:
    if number == 0:
        return signal.SIGTERM
    if not 0 < number < signal.NSIG:
        raise InvalidArgument(f"signal {number} is out of range")
    return number


class ContainersService(containers_pb2_grpc.ContainersServicer):
    def __init__(self, runtime: RuntimeManager) -> None:
        self.runtime = runtime
        self.store = runtime.store

    def _resolve(self, ref: str) -> Container:
        if not ref:
            raise InvalidArgument("no container given")
        return self.store.resolve(ref)

    async def _create(self, request: pb.ContainerCreateRequest) -> Container:
        check_request(request)
        if request.HasField("size"):
            _size(request.size)
        record = native_record(request, self.store.name_taken)
        if self.store.name_taken(record.name):  # refuse before preparing anything
            raise AlreadyExists(f"name {record.name!r} is in use")
        rt = self.runtime
        return await rt.create(
            record, spec_builder(request, record, rt.config, rt.logs_dir, rt.ctx.cgroups)
        )

    async def Create(  # noqa: N802 (gRPC method names)
        self, request: pb.ContainerCreateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ContainerCreateResponse:
        return pb.ContainerCreateResponse(container=container_info(await self._create(request)))

    async def Start(  # noqa: N802
        self, request: pb.ContainerStartRequest, context: grpc.aio.ServicerContext
    ) -> pb.ContainerStartResponse:
        c = await self.runtime.start(self._resolve(request.container).id)
        return pb.ContainerStartResponse(container=container_info(c))

    async def Run(  # noqa: N802
        self, request: pb.ContainerCreateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ContainerStartResponse:
        c = await self._create(request)
        c = await self.runtime.start(c.id)
        return pb.ContainerStartResponse(container=container_info(c))

    async def List(  # noqa: N802
        self, request: pb.ContainerListRequest, context: grpc.aio.ServicerContext
    ) -> pb.ContainerListResponse:
        wanted = dict(request.labels)
        out = []
        for c in self.store.list():
            if c.kind == "sandbox" and not request.sandboxes:
                continue
            if not request.all and not c.status.is_running:
                continue
            if any(c.labels.get(k) != v for k, v in wanted.items()):
                continue
            out.append(container_info(c))
        return pb.ContainerListResponse(containers=out)

    async def Get(  # noqa: N802
        self, request: pb.ContainerGetRequest, context: grpc.aio.ServicerContext
    ) -> pb.ContainerGetResponse:
        c = self._resolve(request.container)
        return pb.ContainerGetResponse(container=container_info(c), spec_json=json.dumps(c.spec))

    async def Kill(  # noqa: N802
        self, request: pb.ContainerKillRequest, context: grpc.aio.ServicerContext
    ) -> pb.ContainerKillResponse:
        c = self._resolve(request.container)
        await self.runtime.kill(c.id, _signal(request.signal), request.all)
        return pb.ContainerKillResponse()

    async def Stop(  # noqa: N802
        self, request: pb.ContainerStopRequest, context: grpc.aio.ServicerContext
    ) -> pb.ContainerStopResponse:
        c = self._resolve(request.container)
        timeout = request.timeout if request.HasField("timeout") else STOP_TIMEOUT
        if not 0 <= timeout <= 24 * 3600:
            raise InvalidArgument("stop timeout must be 0-86400 seconds")
        c = await self.runtime.stop(c.id, timeout, _signal(request.signal))
        return pb.ContainerStopResponse(container=container_info(c))

    async def Remove(  # noqa: N802
        self, request: pb.ContainerRemoveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ContainerRemoveResponse:
        c = self._resolve(request.container)
        await self.runtime.remove(c.id, force=request.force)
        return pb.ContainerRemoveResponse(id=c.id)

    async def Wait(  # noqa: N802
        self, request: pb.ContainerWaitRequest, context: grpc.aio.ServicerContext
    ) -> pb.ContainerWaitResponse:
        c = self._resolve(request.container)
        while c.status.can_start:  # not started yet: wait for that first
            await asyncio.sleep(CREATED_POLL)
            c = self.store.get(c.id)
        return pb.ContainerWaitResponse(container=container_info(await self.runtime.wait(c.id)))

    # -- streams -------------------------------------------------------------

    async def Exec(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ContainerExecRequest], context: Any
    ) -> AsyncIterator[pb.ContainerIOResponse]:
        first = await _first(request_iterator, "start")
        s = first.start
        c = self._resolve(s.container)
        shim = self.runtime.shim(c.id)
        if not s.args or any("\0" in a for a in s.args):
            raise InvalidArgument("exec needs a command without NUL bytes")
        env = [f"{k}={v}" for k, v in parse_env(list(s.env))]
        if s.workdir and not s.workdir.startswith("/"):
            raise InvalidArgument(f"workdir {s.workdir[:200]!r} must be an absolute path")
        user = None
        if s.user:
            try:
                user = resolve_user(self.runtime.rootfs(c.id), s.user)
            except UnknownUser as e:
                raise InvalidArgument(str(e)) from None
            except (OSError, ValueError) as e:
                raise InvalidArgument(f"user {s.user!r}: unreadable image users: {e}") from None
        size = None
        if s.tty and s.HasField("size"):
            width, height = _size(s.size)
            size = ConsoleSize(width=width, height=height)
        process = exec_process(
            c.spec, list(s.args), s.tty, env, cwd=s.workdir or None, user=user, console_size=size
        )
        exec_id = f"exec-{secrets.token_hex(8)}"
        stream = await shim.exec(exec_id, process, tty=s.tty, stdin=s.stdin)
        yield pb.ContainerIOResponse(ready=pb.ContainerIOReady(pid=stream.pid, exec_id=exec_id))
        async for message in _relay(stream, request_iterator, s.stdin):
            yield message
        if stream.exit is None:
            raise Unavailable(f"lost the exec in {c.id[:12]}: its shim went away")
        yield exit_message(stream.exit)

    async def Attach(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ContainerAttachRequest], context: Any
    ) -> AsyncIterator[pb.ContainerIOResponse]:
        first = await _first(request_iterator, "open")
        c = self._resolve(first.open.container)
        stdin = first.open.stdin
        if stdin and not c.stdin:
            raise FailedPrecondition(f"container {c.id[:12]} was created without stdin")
        stream = await self.runtime.attach(c.id)
        yield pb.ContainerIOResponse(ready=pb.ContainerIOReady(pid=stream.pid))
        async for message in _relay(stream, request_iterator, stdin):
            yield message
        if stream.exit is not None:
            yield exit_message(stream.exit)
            return
        # The shim went away without telling us the exit: ask the record.
        final = await self.runtime.wait(c.id, timeout=5.0)
        if final.status.is_running:
            raise Unavailable(f"lost the stdio of {c.id[:12]}: its shim went away")
        yield pb.ContainerIOResponse(
            exit=pb.ContainerExit(exit_code=final.exit_code, exited_at=final.finished_at)
        )

    async def Logs(  # noqa: N802
        self, request: pb.ContainerLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ContainerLogsResponse]:
        c = self._resolve(request.container)
        path = c.log_path
        if not path:
            raise FailedPrecondition(f"container {c.id[:12]} keeps no log file")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return  # never started: nothing written yet
        try:
            offset = tail_offset(fd, request.tail) if request.HasField("tail") else 0
            reader = LogReader(fd, offset, request.since)
            exited = False
            while True:
                records = reader.read()
                if records is None:  # at the end of the file for now
                    if not request.follow or exited:
                        return
                    exited = await self._exited(c.id, LOG_POLL)
                    continue  # after the exit, one more read takes the last lines
                if records:
                    yield pb.ContainerLogsResponse(
                        entries=[
                            pb.ContainerLogEntry(
                                timestamp=r.timestamp, stream=r.stream, data=r.data
                            )
                            for r in records
                        ]
                    )
        finally:
            os.close(fd)

    async def _exited(self, cid: str, timeout: float) -> bool:
        try:
            c = await self.runtime.wait(cid, timeout)
        except NotFound:
            return True
        return not c.status.is_running


async def _first(requests: AsyncIterator[Any], field: str) -> Any:
    """The stream's first message, which must be `field`."""
    try:
        first = await anext(requests)
    except StopAsyncIteration:
        raise InvalidArgument(f"the stream must start with {field!r}") from None
    if first.WhichOneof("request") != field:
        raise InvalidArgument(f"the stream must start with {field!r}")
    return first


async def _relay(
    stream: AttachStream, requests: AsyncIterator[Any], stdin: bool
) -> AsyncIterator[pb.ContainerIOResponse]:
    """The process's output, while a task forwards the client's input to it."""

    async def feed() -> None:
        async for req in requests:
            kind = req.WhichOneof("request")
            if kind == "stdin" and stdin:
                await stream.write(req.stdin)
            elif kind == "close_stdin" and stdin:
                await stream.close_stdin()
            elif kind == "resize":
                width, height = _size(req.resize)
                await stream.resize(width, height)

    feeder = asyncio.create_task(feed())
    try:
        while (item := await stream.read()) is not None:
            kind, data = item
            if kind == "stdout":
                yield pb.ContainerIOResponse(stdout=data)
            else:
                yield pb.ContainerIOResponse(stderr=data)
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await feeder
        await stream.close()


class EventsService(containers_pb2_grpc.EventsServicer):
    def __init__(self, bus: Any) -> None:
        self.bus = bus

    async def Subscribe(  # noqa: N802
        self, request: pb.EventsSubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EventEnvelope]:
        topics = list(request.topics)
        if len(topics) > MAX_TOPICS or any(len(t) > 256 or "\0" in t for t in topics):
            raise InvalidArgument(f"at most {MAX_TOPICS} topic prefixes of 256 bytes")
        sub = self.bus.subscribe(*topics)
        try:
            yield pb.EventEnvelope()  # the subscription is in place
            async for event in sub:
                yield pb.EventEnvelope(
                    topic=event.topic,
                    subject=event.subject,
                    data_json=json.dumps(event.data, default=str, separators=(",", ":")),
                    timestamp=event.timestamp_ns,
                    dropped=sub.dropped,
                )
        finally:
            sub.close()


def register(server: grpc.aio.Server, ctx: Context) -> None:
    containers_pb2_grpc.add_ContainersServicer_to_server(ContainersService(ctx.runtime), server)
    containers_pb2_grpc.add_EventsServicer_to_server(EventsService(ctx.events), server)
