"""Kubernetes' remote-command protocol (exec and attach) over SPDY or WebSocket.

A client asks for some of stdin, stdout, stderr and a tty; the server always
has an error stream (the final status) and, with a tty, a resize stream.
Over SPDY the client opens one stream per channel, named by its `streamtype`
header; over WebSocket each message starts with a channel byte (0 stdin,
1 stdout, 2 stderr, 3 error, 4 resize). The versions differ only in details:

- channel.k8s.io (v1), v2: no resize; the error stream carries plain text,
  and nothing at all on success;
- v3: adds the resize stream;
- v4: the error stream carries a metav1.Status as JSON, with the exit code
  as a cause (`reason: NonZeroExitCode`, cause `ExitCode`), `Success` else;
- v5 (WebSocket only): the client may half-close a channel with a message
  on channel 255 naming it (stdin EOF).

`run_command` joins one client (a `CommandIO`) to one process's stdio (a
shim `AttachStream`) and returns the status to report.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pyctr.daemon.errors import PyctrError
from pyctr.daemon.runtime.shim_attach import AttachStream
from pyctr.daemon.streaming.session import SpdySession, SpdyStream, StreamResetError
from pyctr.daemon.streaming.websocket import WsChannels

log = logging.getLogger("pyctr.streaming")

V1, V2, V3, V4, V5 = (
    "channel.k8s.io",
    "v2.channel.k8s.io",
    "v3.channel.k8s.io",
    "v4.channel.k8s.io",
    "v5.channel.k8s.io",
)
SPDY_PROTOCOLS = (V4, V3, V2, V1)  # what the SPDY upgrade accepts, best first

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
STREAM_TYPES = {
    "stdin": STDIN,
    "stdout": STDOUT,
    "stderr": STDERR,
    "error": ERROR,
    "resize": RESIZE,
}

Status = dict[str, Any]


# -- statuses (metav1.Status) ---------------------------------------------------------


def success() -> Status:
    return {"metadata": {}, "status": "Success"}


def exit_failure(code: int) -> Status:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def internal_error(message: str) -> Status:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


def encode_status(status: Status, structured: bool) -> bytes:
    """What goes on the error stream: JSON for v4+, the message (or nothing) before."""
    if structured:
        return json.dumps(status, separators=(",", ":")).encode()
    if status.get("status") == "Success":
        return b""
    return str(status.get("message", "")).encode()


def supports_resize(protocol: str) -> bool:
    return protocol not in (V1, V2, "")


def structured_status(protocol: str) -> bool:
    return protocol.startswith(("v4.", "v5."))


class ResizeDecoder:
    """Terminal sizes from a byte stream of JSON objects ({"Width": w, "Height": h})."""

    MAX_PENDING = 4096

    def __init__(self) -> None:
        self._buf = ""
        self._json = json.JSONDecoder()

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        self._buf += data.decode(errors="replace")
        sizes = []
        while True:
            text = self._buf.lstrip()
            if not text:
                self._buf = ""
                break
            try:
                obj, end = self._json.raw_decode(text)
            except ValueError:
                self._buf = text
                if len(text) > self.MAX_PENDING:  # not JSON, and never going to be
                    raise ValueError("garbage on the resize stream") from None
                break
            self._buf = text[end:]
            if isinstance(obj, dict):
                w, h = obj.get("Width", obj.get("width")), obj.get("Height", obj.get("height"))
                if isinstance(w, int) and isinstance(h, int) and 0 <= w < 65536 and 0 <= h < 65536:
                    sizes.append((w, h))
        return sizes


# -- the client's side, abstracted ----------------------------------------------------


class CommandIO(abc.ABC):
    """One client's channels, whatever carries them."""

    protocol: str = ""
    stdin = stdout = stderr = tty = False
    closed: asyncio.Event  # set when the client is gone

    @abc.abstractmethod
    async def read_stdin(self) -> bytes:
        """Next stdin bytes; b"" at EOF."""

    @abc.abstractmethod
    async def read_resize(self) -> bytes:
        """Raw bytes of the resize channel; b"" at EOF (or when there is none)."""

    @abc.abstractmethod
    async def write(self, channel: int, data: bytes) -> None:
        """Output on STDOUT or STDERR; ConnectionError if the client is gone."""

    @abc.abstractmethod
    async def finish(self, status: Status) -> None:
        """Report the status, end every channel and the connection."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Drop the connection without a status."""


@dataclass
class Started:
    """A process whose stdio the client is joined to."""

    stream: AttachStream
    abandon: Callable[[], Awaitable[None]]  # the client left: kill an exec, detach an attach
    close_stdin_on_eof: bool  # the client's stdin EOF closes the process's stdin
    report_exit: bool  # an exec's exit code is reported; an attach only ends


async def run_command(io: CommandIO, started: Started) -> Status | None:
    """Relay until the process ends (→ its status) or the client goes (→ None)."""
    stream = started.stream

    async def pump_stdin() -> None:
        while data := await io.read_stdin():
            await stream.write(data)
        if started.close_stdin_on_eof:
            await stream.close_stdin()

    async def pump_resize() -> None:
        decoder = ResizeDecoder()
        while data := await io.read_resize():
            for width, height in decoder.feed(data):
                await stream.resize(width, height)

    async def pump_output() -> None:
        while item := await stream.read():
            kind, data = item
            channel = STDOUT if kind == "stdout" else STDERR
            if io.stdout if channel == STDOUT else io.stderr:  # else not asked for: dropped
                await io.write(channel, data)

    side = []
    if io.stdin:
        side.append(asyncio.create_task(_quietly(pump_stdin(), "stdin")))
    if io.tty:
        side.append(asyncio.create_task(_quietly(pump_resize(), "resize")))
    output = asyncio.create_task(pump_output())
    gone = asyncio.create_task(io.closed.wait())
    ended = False
    try:
        await asyncio.wait({output, gone}, return_when=asyncio.FIRST_COMPLETED)
        ended = output.done() and not output.cancelled() and output.exception() is None
    finally:
        for task in (output, gone, *side):
            task.cancel()
        for task in (output, gone, *side):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not ended:  # the client went away, or we are being cancelled (shutdown)
            log.debug("streaming client went away; abandoning the process")
            with contextlib.suppress(Exception):
                await asyncio.shield(started.abandon())
            await stream.close()
    if not ended:
        return None
    await stream.close()
    exit = stream.exit
    if exit is None:
        return internal_error("the container's shim closed the stream")
    if not started.report_exit or exit.exit_status == 0:
        return success()
    return exit_failure(exit.exit_status)


async def _quietly(coro: Awaitable[None], what: str) -> None:
    """Side channels end when either side does; that is not an error."""
    try:
        await coro
    except (ConnectionError, PyctrError, ValueError) as e:
        log.debug("%s relay ended: %s", what, e)


# -- over SPDY -------------------------------------------------------------------------


class SpdyCommandIO(CommandIO):
    """The streams of one SPDY remote-command session."""

    def __init__(self, session: SpdySession, protocol: str, opts: Any) -> None:
        self.session = session
        self.protocol = protocol
        self.stdin, self.stdout, self.stderr, self.tty = (
            opts.stdin, opts.stdout, opts.stderr, opts.tty,
        )  # fmt: skip
        self.closed = session.closed
        self.streams: dict[int, SpdyStream] = {}

    def expected(self) -> set[int]:
        want = {ERROR}
        want |= {c for c, on in ((STDIN, self.stdin), (STDOUT, self.stdout)) if on}
        if self.stderr:
            want.add(STDERR)
        if self.tty and supports_resize(self.protocol):
            want.add(RESIZE)
        return want

    async def wait_for_streams(self, timeout: float) -> bool:
        """Accept the client's streams until all expected ones are there."""
        want = self.expected()
        try:
            async with asyncio.timeout(timeout):
                while not want <= self.streams.keys():
                    stream = await self.session.accept()
                    if stream is None:
                        return False
                    stream.reply()
                    channel = STREAM_TYPES.get(stream.header("streamtype"))
                    if channel is None:
                        log.debug("ignoring stream of type %r", stream.header("streamtype"))
                        continue
                    self.streams[channel] = stream
        except TimeoutError:
            log.info("client did not create its streams within %gs", timeout)
            return False
        return True

    async def _read(self, channel: int) -> bytes:
        stream = self.streams.get(channel)
        if stream is None:
            return b""
        try:
            return await stream.read()
        except StreamResetError:
            return b""

    async def read_stdin(self) -> bytes:
        return await self._read(STDIN)

    async def read_resize(self) -> bytes:
        return await self._read(RESIZE)

    async def write(self, channel: int, data: bytes) -> None:
        stream = self.streams.get(channel)
        if stream is not None:
            await stream.write(data)

    async def finish(self, status: Status) -> None:
        with contextlib.suppress(ConnectionError):
            for channel in (STDOUT, STDERR):
                if (stream := self.streams.get(channel)) is not None:
                    await stream.close()
            error = self.streams.get(ERROR)
            if error is not None:
                payload = encode_status(status, structured_status(self.protocol))
                if payload:
                    await error.write(payload)
                await error.close()
        await self.session.close()

    async def abort(self) -> None:
        self.session.abort()


# -- over WebSocket ----------------------------------------------------------------------


WS_PROTOCOLS = {  # subprotocol -> base64?
    V5: False,
    V4: False,
    "v4.base64.channel.k8s.io": True,
    V1: False,
    "base64.channel.k8s.io": True,
    "": False,  # no subprotocol asked for: the original binary framing
}


class WsCommandIO(CommandIO):
    def __init__(self, channels: WsChannels, protocol: str, opts: Any) -> None:
        self.channels = channels
        self.protocol = protocol
        self.stdin, self.stdout, self.stderr, self.tty = (
            opts.stdin, opts.stdout, opts.stderr, opts.tty,
        )  # fmt: skip
        self.closed = channels.closed

    async def start(self) -> None:
        # An empty message on the lowest channel we write tells the client we are up.
        first = STDOUT if self.stdout else STDERR if self.stderr else ERROR
        await self.channels.write(first, b"")

    async def read_stdin(self) -> bytes:
        return await self.channels.read(STDIN)

    async def read_resize(self) -> bytes:
        return await self.channels.read(RESIZE)

    async def write(self, channel: int, data: bytes) -> None:
        await self.channels.write(channel, data)

    async def finish(self, status: Status) -> None:
        payload = encode_status(status, structured_status(self.protocol))
        with contextlib.suppress(ConnectionError):
            if payload:
                await self.channels.write(ERROR, payload)
        await self.channels.close()

    async def abort(self) -> None:
        await self.channels.close()
