"""The shim's socket: newline-delimited JSON requests, then maybe a stream.

Every connection starts in request mode: one JSON object per line in, one per
line out, matched by "id" (replies can come out of order: `wait` and captured
execs answer when a process exits). Two requests switch the connection for
good after their reply:

- `subscribe`: the shim sends one JSON event per line; input is ignored.
- `attach` (and `exec` with stdio "attach"): binary frames both ways, each
  a 1-byte kind, a 4-byte big-endian length and the payload (see FRAME_*).

The wire format is documented in proto/shim_api.md.
"""

# ruff: noqa: SIM105  (contextlib.suppress would import contextlib: memory per shim)

from __future__ import annotations

import _socket
import os
import sys

from pyctr.shim import jsonlite
from pyctr.shim.loop import Loop, Timer
from pyctr.shim.protocol import ProtocolError, decode_request

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and collections.abc cost memory at run time
    from collections.abc import Callable
    from typing import Any

MAX_LINE = 1 << 20
MAX_FRAME = 1 << 20
READ_SIZE = 65536
LINGER = 5.0  # seconds a closing connection waits for the client to close


REQUEST, EVENTS, ATTACH, CLOSING = "request", "events", "attach", "closing"


class ShimError(Exception):
    """An error reply: {"error": {"code": code, "message": message}}."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Connection:
    def __init__(self, server: Server, sock: Any) -> None:
        self.server = server
        self.loop = server.loop
        self.sock = sock
        self.fd: int = sock.fileno()
        self.mode = REQUEST
        self.closed = False
        self._rbuf = bytearray()
        self._wbuf = bytearray()
        self._reading = True
        self._close_when_flushed = False
        self._linger: Timer | None = None  # set while closing
        # attach mode: called with (kind, payload) for each frame received
        self.on_frame: Callable[[int, bytes], None] | None = None
        self.on_close: list[Callable[[], None]] = []
        self.on_drained: Callable[[], None] | None = None
        self.loop.add_reader(self.fd, self._readable)

    @property
    def backlog(self) -> int:
        """Bytes queued for the client and not yet taken by it."""
        return len(self._wbuf)

    # -- output ------------------------------------------------------------

    def send_json(self, obj: dict[str, Any]) -> None:
        self._send(jsonlite.dumps(obj).encode() + b"\n")

    def reply(self, req_id: Any, result: dict[str, Any]) -> None:
        self.send_json({"id": req_id, "result": result})

    def reply_error(self, req_id: Any, code: str, message: str) -> None:
        self.send_json({"id": req_id, "error": {"code": code, "message": message}})

    def send_frame(self, kind: int, payload: bytes) -> None:
        self._send(bytes((kind,)) + len(payload).to_bytes(4, "big") + payload)

    def _send(self, data: bytes) -> None:
        if self.closed:
            return
        if not self._wbuf:
            try:
                n = self.sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                self.close()
                return
            data = data[n:]
            if not data:
                return
            self.loop.add_writer(self.fd, self._writable)
        self._wbuf += data

    def _writable(self) -> None:
        try:
            n = self.sock.send(self._wbuf)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        del self._wbuf[:n]
        if self._wbuf:
            return
        self.loop.remove_writer(self.fd)
        if self._close_when_flushed:
            self._close_gently()
        elif self.on_drained is not None:
            self.on_drained()

    def close_after_flush(self) -> None:
        """Close once what is queued has gone, without losing it.

        Closing a unix socket with unread input (a frame the client sent as
        the process exited) resets it, and the client's asyncio reader then
        raises instead of handing over the exit frame it already holds. So
        send EOF, discard input until the client closes, then close.
        """
        self._close_when_flushed = True
        self.mode = CLOSING
        if not self._wbuf:
            self._close_gently()

    def _close_gently(self) -> None:
        if self.closed or self._linger is not None:
            return
        try:
            self.sock.shutdown(_socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self._linger = self.loop.call_later(LINGER, self.close)
        self._rbuf.clear()
        if not self._reading:
            self._reading = True
            self.loop.add_reader(self.fd, self._readable)

    # -- input -------------------------------------------------------------

    def pause_reading(self) -> None:
        if self._reading and not self.closed:
            self._reading = False
            self.loop.remove_reader(self.fd)

    def resume_reading(self) -> None:
        if not self._reading and not self.closed and self.mode != CLOSING:
            self._reading = True
            self.loop.add_reader(self.fd, self._readable)
            self._process()

    def _readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self._rbuf += data
        self._process()

    def _process(self) -> None:
        while self._reading and not self.closed:
            if self.mode == REQUEST:
                nl = self._rbuf.find(b"\n")
                if nl < 0:
                    if len(self._rbuf) > MAX_LINE:
                        self.reply_error(None, "invalid_argument", "request line too long")
                        self.close_after_flush()
                    return
                line = bytes(self._rbuf[:nl])
                del self._rbuf[: nl + 1]
                if line.strip():
                    self.server.dispatch(self, line)
            elif self.mode == ATTACH:
                if len(self._rbuf) < 5:
                    return
                kind = self._rbuf[0]
                size = int.from_bytes(self._rbuf[1:5], "big")
                if size > MAX_FRAME:
                    self.close()
                    return
                if len(self._rbuf) < 5 + size:
                    return
                payload = bytes(self._rbuf[5 : 5 + size])
                del self._rbuf[: 5 + size]
                if self.on_frame is not None:
                    self.on_frame(kind, payload)
            else:  # EVENTS: the client only listens; CLOSING: nobody listens
                self._rbuf.clear()
                return

    # -- teardown ----------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._linger is not None:
            self._linger.cancel()
        self.loop.forget(self.fd)
        self.sock.close()
        self._wbuf.clear()
        self._rbuf.clear()
        self.server.connections.discard(self)
        callbacks, self.on_close = self.on_close, []
        for callback in callbacks:
            callback()


class Server:
    """Listens on the shim socket; hands each request line to a handler.

    handler(conn, request) returns a result dict to send as the reply, or
    None when it will reply itself later; it raises ShimError for an error
    reply.
    """

    def __init__(
        self,
        loop: Loop,
        path: str,
        handler: Callable[[Connection, dict[str, Any]], dict[str, Any] | None],
    ) -> None:
        self.loop = loop
        self.path = path
        self.handler = handler
        self.connections: set[Connection] = set()
        self._uid = os.geteuid()
        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        # Bind under a 0077 umask so the socket is never, even briefly,
        # reachable by anyone but its owner.
        old = os.umask(0o077)
        try:
            self._sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._sock.listen(64)
        self._sock.setblocking(False)
        loop.add_reader(self._sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            fd, _ = self._sock._accept()  # type: ignore[attr-defined]
        except OSError:
            return
        sock = _socket.socket(fileno=fd)
        creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
        uid = int.from_bytes(creds[4:8], sys.byteorder)  # struct ucred {pid, uid, gid}
        if uid not in (0, self._uid):  # belt and braces: the socket is 0600 already
            sock.close()
            return
        sock.setblocking(False)
        self.connections.add(Connection(self, sock))

    def dispatch(self, conn: Connection, line: bytes) -> None:
        req_id = None
        try:
            try:
                request = decode_request(line)
            except ProtocolError as exc:
                req_id = _request_id(line)
                raise ShimError(exc.code, str(exc)) from None
            req_id = request.get("id")
            result = self.handler(conn, request)
        except ShimError as exc:
            conn.reply_error(req_id, exc.code, exc.message)
            return
        except Exception as exc:  # a bug must cost one request, not the container's shim
            self.loop.report(exc)
            conn.reply_error(req_id, "internal", f"{type(exc).__name__}: {exc}")
            return
        if result is not None:
            conn.reply(req_id, result)

    def close(self) -> None:
        """Stop accepting: the socket file goes, so a late client sees ENOENT."""
        self.loop.forget(self._sock.fileno())
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _request_id(line: bytes) -> Any:
    """The id of a request refused for its version, so the error reply matches it."""
    try:
        request = jsonlite.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return request.get("id") if isinstance(request, dict) else None
