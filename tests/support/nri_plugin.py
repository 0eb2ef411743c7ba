"""A test-side NRI plugin: what a plugin built on containerd's NRI Go stub does on the wire.

This is an independent implementation of the plugin end of NRI (it imports
nothing from pyctr.daemon.nri, the runtime end): the runtime under test and
this file are two readings of the same protocol, so a misreading on either side
shows up as a failing test instead of two bugs agreeing with each other.

The wire, as in github.com/containerd/nri (pkg/net/multiplex, pkg/stub) and
github.com/containerd/ttrpc (channel.go):

* one unix stream socket (the "trunk"), multiplexed: every frame is an 8-byte
  header, big-endian uint32 connection id and uint32 payload length, then the
  payload. A connection's payloads concatenate into a byte stream; frame
  boundaries carry no meaning. Frames for a connection nobody opened are dropped.
* connection 1 (PluginServiceConn): the plugin is the ttrpc server; the runtime
  calls nri.pkg.api.v1alpha1.Plugin/* (Configure, Synchronize, CreateContainer,
  StateChange, Shutdown, ...).
* connection 2 (RuntimeServiceConn): the plugin is the ttrpc client; it calls
  nri.pkg.api.v1alpha1.Runtime/RegisterPlugin and /UpdateContainers.
* ttrpc messages: a 10-byte header (uint32 BE data length, uint32 BE stream id,
  uint8 type: 1 request, 2 response, 3 data; uint8 flags), then a serialized
  ttrpc.Request {service, method, payload, timeout_nano, metadata} or
  ttrpc.Response {status {code, message, details}, payload}. Client streams are
  odd and increasing, from 1; a reply carries its request's stream id. A status
  code other than 0 (gRPC codes) is an error and the payload is then unused.
* event subscription: ConfigureResponse.events is a mask, bit 1 << (event - 1)
  for each nri Event enum value.

Use from a test::

    with Plugin(daemon.nri_socket, events=["CREATE_CONTAINER"]) as plugin:
        plugin.handlers["CreateContainer"] = lambda req: nri_pb2.CreateContainerResponse(...)
        plugin.start()
        ...
        plugin.wait_for(lambda: "CreateContainer" in plugin.events_for(cid))

or run as a plugin process (``python -m tests.support.nri_plugin``, see main()).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from google.protobuf.message import DecodeError, Message

from pyctr.proto import nri_pb2, ttrpc_pb2

# --------------------------------------------------------------------------
# Facts of the wire (kept here, not taken from the runtime's code)
# --------------------------------------------------------------------------

MUX_HEADER = struct.Struct(">II")  # connection id, payload length
PLUGIN_SERVICE_CONN = 1  # the runtime calls the plugin
RUNTIME_SERVICE_CONN = 2  # the plugin calls the runtime

TTRPC_HEADER = struct.Struct(">IIBB")  # data length, stream id, type, flags
TTRPC_MESSAGE_LENGTH_MAX = 4 << 20
# The mux refuses to write a payload larger than one whole ttrpc message.
MUX_PAYLOAD_MAX = TTRPC_HEADER.size + TTRPC_MESSAGE_LENGTH_MAX
MESSAGE_REQUEST = 1
MESSAGE_RESPONSE = 2
MESSAGE_DATA = 3

PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE = "nri.pkg.api.v1alpha1.Runtime"

DEFAULT_SOCKET_PATH = "/var/run/nri/nri.sock"
ENV_PLUGIN_SOCKET = "NRI_PLUGIN_SOCKET"
ENV_PLUGIN_NAME = "NRI_PLUGIN_NAME"
ENV_PLUGIN_IDX = "NRI_PLUGIN_IDX"

# gRPC status codes used here.
OK = 0
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14

# The nri Event enum (pkg/api/api.proto), by value; the unit test checks the
# generated module agrees.
EVENTS: dict[str, int] = {
    "RUN_POD_SANDBOX": 1,
    "STOP_POD_SANDBOX": 2,
    "REMOVE_POD_SANDBOX": 3,
    "CREATE_CONTAINER": 4,
    "POST_CREATE_CONTAINER": 5,
    "START_CONTAINER": 6,
    "POST_START_CONTAINER": 7,
    "UPDATE_CONTAINER": 8,
    "POST_UPDATE_CONTAINER": 9,
    "STOP_CONTAINER": 10,
    "REMOVE_CONTAINER": 11,
    "UPDATE_POD_SANDBOX": 12,
    "POST_UPDATE_POD_SANDBOX": 13,
    "VALIDATE_CONTAINER_ADJUSTMENT": 14,
}
EVENT_NAMES: dict[int, str] = {v: k for k, v in EVENTS.items()}

# The pod and container lifecycle: what a plugin implementing every lifecycle
# interface of the Go stub subscribes to (validation is a separate role).
LIFECYCLE_EVENTS: tuple[str, ...] = tuple(n for n in EVENTS if n != "VALIDATE_CONTAINER_ADJUSTMENT")

POD_METHODS = frozenset(
    {
        "RunPodSandbox",
        "UpdatePodSandbox",
        "PostUpdatePodSandbox",
        "StopPodSandbox",
        "RemovePodSandbox",
    }
)
CONTAINER_METHODS = frozenset(
    {
        "CreateContainer",
        "PostCreateContainer",
        "StartContainer",
        "PostStartContainer",
        "UpdateContainer",
        "PostUpdateContainer",
        "StopContainer",
        "RemoveContainer",
        "ValidateContainerAdjustment",
    }
)


def method_name(event: str) -> str:
    """CREATE_CONTAINER -> CreateContainer (the stub's pretty name; also the method)."""
    return "".join(part.capitalize() for part in event.split("_"))


def event_mask(events: Iterable[str | int]) -> int:
    """The ConfigureResponse.events mask: bit 1 << (event - 1) per event.

    Events are enum names ("CREATE_CONTAINER"), pretty names ("CreateContainer"),
    their lower-case forms, "all", or the enum values themselves.
    """
    by_key = {name.replace("_", "").lower(): value for name, value in EVENTS.items()}
    mask = 0
    for event in events:
        if isinstance(event, int):
            values = [event]
        elif event.lower() == "all":
            values = list(EVENTS.values())
        else:
            key = event.replace("_", "").lower()
            if key not in by_key:
                raise ValueError(f"unknown NRI event {event!r}")
            values = [by_key[key]]
        for value in values:
            if not 0 < value < 32:
                raise ValueError(f"NRI event {value} out of range")
            mask |= 1 << (value - 1)
    return mask


def mask_events(mask: int) -> list[str]:
    """The event names set in a mask (unknown bits as their numbers)."""
    out = []
    for bit in range(31):
        if mask & (1 << bit):
            out.append(EVENT_NAMES.get(bit + 1, str(bit + 1)))
    return out


# --------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------


def mux_frame(conn_id: int, payload: bytes) -> bytes:
    return MUX_HEADER.pack(conn_id, len(payload)) + payload


def ttrpc_message(stream_id: int, mtype: int, data: bytes, flags: int = 0) -> bytes:
    return TTRPC_HEADER.pack(len(data), stream_id, mtype, flags) + data


class MuxDecoder:
    """Bytes from the trunk in, (connection id, payload) frames out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        self._buf += data
        while len(self._buf) >= MUX_HEADER.size:
            conn_id, length = MUX_HEADER.unpack_from(self._buf)
            end = MUX_HEADER.size + length
            if len(self._buf) < end:
                return
            payload = bytes(self._buf[MUX_HEADER.size : end])
            del self._buf[:end]
            yield conn_id, payload

    @property
    def pending(self) -> int:
        return len(self._buf)


class TtrpcDecoder:
    """One connection's byte stream in, (stream id, type, flags, data) messages out.

    A message longer than the ttrpc maximum is skipped and reported with
    data=None, as the Go channel discards it and answers ResourceExhausted.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0

    def feed(self, data: bytes) -> Iterator[tuple[int, int, int, bytes | None]]:
        self._buf += data
        while True:
            if self._skip:
                n = min(self._skip, len(self._buf))
                del self._buf[:n]
                self._skip -= n
                if self._skip:
                    return
            if len(self._buf) < TTRPC_HEADER.size:
                return
            length, stream_id, mtype, flags = TTRPC_HEADER.unpack_from(self._buf)
            if length > TTRPC_MESSAGE_LENGTH_MAX:
                del self._buf[: TTRPC_HEADER.size]
                self._skip = length
                yield stream_id, mtype, flags, None
                continue
            end = TTRPC_HEADER.size + length
            if len(self._buf) < end:
                return
            body = bytes(self._buf[TTRPC_HEADER.size : end])
            del self._buf[:end]
            yield stream_id, mtype, flags, body


# --------------------------------------------------------------------------
# The plugin
# --------------------------------------------------------------------------

Handler = Callable[[Any], "Message | None"]


class PluginError(Exception):
    """Raised by a handler: answer the call with this gRPC status instead of a response."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RuntimeCallError(Exception):
    """A call to the runtime (RegisterPlugin, UpdateContainers) answered an error status."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: status {code}: {message}")
        self.method = method
        self.code = code
        self.message = message


def _plugin_methods() -> dict[str, tuple[type[Message], type[Message]]]:
    """Plugin service method -> (request type, response type), for what the proto defines."""
    names = [
        "Configure",
        "Synchronize",
        "Shutdown",
        *sorted(POD_METHODS),
        *sorted(CONTAINER_METHODS),
        "StateChange",
    ]
    special = {"Shutdown": ("Empty", "Empty"), "StateChange": ("StateChangeEvent", "Empty")}
    table: dict[str, tuple[type[Message], type[Message]]] = {}
    for name in names:
        req_name, resp_name = special.get(name, (f"{name}Request", f"{name}Response"))
        req_type = getattr(nri_pb2, req_name, None)
        resp_type = getattr(nri_pb2, resp_name, None)
        if req_type is not None and resp_type is not None:
            table[name] = (req_type, resp_type)
    return table


class _Call:
    """A pending client call on the runtime connection."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.response: Any = None
        self.error: BaseException | None = None


class Plugin:
    """An NRI plugin speaking the wire itself: blocking sockets, one reader thread.

    Each incoming call runs its handler in a thread of its own, so a handler
    that blocks (a plugin that hangs) does not stop the reader; the other
    calls, and the replies to this plugin's own calls, still flow.

    handlers maps a Plugin method name to a function of the decoded request
    returning the response (None: the empty response of the method's type;
    for Configure, the events mask). A handler raises PluginError(code, msg)
    to answer an error status; any other exception answers Unknown (2) and
    lands in handler_errors. As in the Go stub, Synchronize parts with
    more=true are answered {more: true} and collected; the Synchronize handler
    sees one request with every part's pods and containers, with the last
    part. The default StateChange handler calls the handler of the event's
    method (StateChange POST_START_CONTAINER -> handlers["PostStartContainer"])
    with the StateChangeEvent, which has .pod and .container like the requests.
    """

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        name: str = "test",
        idx: str = "10",
        events: Iterable[str | int] = LIFECYCLE_EVENTS,
        fd: int | None = None,
        api: str = "nri.pkg.api.v1alpha1",
    ) -> None:
        self.name = name
        self.idx = idx
        # The API package spoken: v1alpha1 (the stub's default) or v1beta1.
        self.plugin_service = f"{api}.Plugin"
        self.runtime_service = f"{api}.Runtime"
        self.events = event_mask(events)
        if fd is None and socket_path is None and os.environ.get(ENV_PLUGIN_SOCKET):
            fd = int(os.environ[ENV_PLUGIN_SOCKET])
        self.socket_path = socket_path or DEFAULT_SOCKET_PATH
        # socket(fileno=...) owns the fd from here on: close() closes it.
        self._sock: socket.socket | None = socket.socket(fileno=fd) if fd is not None else None

        self.methods = _plugin_methods()
        self.handlers: dict[str, Handler] = {m: self._empty_handler(m) for m in self.methods}
        self.handlers["Configure"] = self._default_configure
        self.handlers["Synchronize"] = lambda req: nri_pb2.SynchronizeResponse()
        self.handlers["StateChange"] = self._default_state_change

        # (method or event name, request) in arrival order.
        self.received: list[tuple[str, Any]] = []
        self.configure_request: Any = None
        self.synchronize_requests: list[Any] = []
        # The final Synchronize as the handler saw it: every part's pods and containers.
        self.synchronize_merged: Any = None
        # Called in the reader thread as each call is recorded (before its handler runs).
        self.on_receive: Callable[[str, Any], None] | None = None
        # Exceptions handlers raised (other than PluginError), and wire violations seen.
        self.handler_errors: list[tuple[str, BaseException]] = []
        self.protocol_errors: list[str] = []

        self.closed = threading.Event()  # the trunk is gone (runtime hung up, or close())
        self.configured = threading.Event()
        self.synchronized = threading.Event()

        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._calls: dict[int, _Call] = {}
        self._next_stream = 1
        self._last_server_stream = 0
        self._sync_parts: list[Any] = []
        self._start_error: BaseException | None = None
        self._reader: threading.Thread | None = None
        self._closing = False
        self._close_lock = threading.Lock()

    # ---- default handlers ------------------------------------------------

    def _empty_handler(self, method: str) -> Handler:
        resp_type = self.methods[method][1]
        return lambda req: resp_type()

    def _default_configure(self, req: Any) -> Message:
        return nri_pb2.ConfigureResponse(events=self.events)

    def _default_state_change(self, req: Any) -> Message | None:
        # Like the stub: a StateChange goes to the handler of the same event, which
        # gets the StateChangeEvent (it has .pod and .container like the requests).
        method = method_name(EVENT_NAMES.get(req.event, ""))
        handler = self.handlers.get(method)
        if handler is not None:
            handler(req)
        return None

    # ---- lifecycle -------------------------------------------------------

    def __enter__(self) -> Plugin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout: float = 10.0) -> None:
        """Connect, register, and return once Configure and the final Synchronize are answered."""
        if self._reader is not None:
            raise RuntimeError("plugin already started")
        deadline = time.monotonic() + timeout
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(self.socket_path)
                sock.settimeout(None)
            except BaseException:
                sock.close()
                raise
            self._sock = sock
        self._reader = threading.Thread(
            target=self._read_loop, name=f"nri-plugin-{self.idx}-{self.name}", daemon=True
        )
        self._reader.start()
        try:
            self._register_and_wait(deadline, timeout)
        except BaseException:
            self.close()  # what arrived stays readable
            raise

    def _register_and_wait(self, deadline: float, timeout: float) -> None:
        self.call_runtime(
            "RegisterPlugin",
            nri_pb2.RegisterPluginRequest(plugin_name=self.name, plugin_idx=self.idx),
            nri_pb2.Empty,
            timeout=max(0.0, deadline - time.monotonic()),
        )

        def ready() -> bool:
            return (
                self.synchronized.is_set() or self._start_error is not None or self.closed.is_set()
            )

        with self._cond:
            self._cond.wait_for(ready, timeout=max(0.0, deadline - time.monotonic()))
        if self._start_error is not None:
            raise self._start_error
        if not self.synchronized.is_set():
            what = f"plugin {self.idx}-{self.name} not configured and synchronized"
            seen = [n for n, _ in self.received]
            if self.closed.is_set():
                raise ConnectionError(f"{what}: connection closed (received: {seen})")
            raise TimeoutError(f"{what} in {timeout}s (received: {seen})")

    def close(self) -> None:
        """Hang up and stop the reader (idempotent). Handler threads are left to finish."""
        with self._close_lock:
            if self._closing:
                return
            self._closing = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=10)
        if sock is not None:
            sock.close()
        self._fail_pending(ConnectionError("plugin closed"))
        self.closed.set()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until predicate() holds (checked on each call received, and every 50 ms)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.05))
            else:
                return
        raise TimeoutError(
            f"condition not met in {timeout}s; received: {[n for n, _ in self.received]}"
        )

    # ---- what arrived ----------------------------------------------------

    @staticmethod
    def normalize(name: str) -> str:
        """A received name as its method: POST_START_CONTAINER -> PostStartContainer."""
        return method_name(name) if name in EVENTS else name

    def names(self) -> list[str]:
        """Every received call, by uniform name, in arrival order."""
        return [self.normalize(n) for n, _ in list(self.received)]

    def events_for(self, object_id: str) -> list[str]:
        """The events seen for one container (or one pod's own events), uniform names, in order.

        A container id matches the calls about that container; a pod id matches
        the pod-level calls (RunPodSandbox, StopPodSandbox, ...) for that pod.
        Whether an event came as a StateChange or as its own method does not show.
        """
        out = []
        for name, req in list(self.received):
            method = self.normalize(name)
            if method in CONTAINER_METHODS:
                if req.HasField("container") and req.container.id == object_id:
                    out.append(method)
            elif method in POD_METHODS and req.HasField("pod") and req.pod.id == object_id:
                out.append(method)
        return out

    # ---- calls to the runtime --------------------------------------------

    def update_containers(
        self,
        updates: Iterable[Any],
        evictions: Iterable[Any] = (),
        timeout: float = 10.0,
    ) -> Any:
        """Runtime.UpdateContainers: unsolicited updates; returns the UpdateContainersResponse."""
        req = nri_pb2.UpdateContainersRequest(update=list(updates), evict=list(evictions))
        return self.call_runtime(
            "UpdateContainers", req, nri_pb2.UpdateContainersResponse, timeout=timeout
        )

    def call_runtime(
        self,
        method: str,
        request: Message,
        response_type: type[Message],
        timeout: float = 10.0,
        service: str | None = None,
    ) -> Any:
        """One unary ttrpc call on the runtime connection; RuntimeCallError on an error status."""
        service = service or self.runtime_service
        call = _Call()
        with self._cond:
            if self.closed.is_set() or self._sock is None:
                raise ConnectionError(f"{method}: not connected")
            stream_id = self._next_stream
            self._next_stream += 2
            self._calls[stream_id] = call
        req = ttrpc_pb2.Request(
            service=service,
            method=method,
            payload=request.SerializeToString(),
            timeout_nano=int(timeout * 1e9),
        )
        try:
            self._send(
                RUNTIME_SERVICE_CONN,
                ttrpc_message(stream_id, MESSAGE_REQUEST, req.SerializeToString()),
            )
            if not call.done.wait(timeout):
                raise TimeoutError(f"{method}: no reply in {timeout}s")
        finally:
            with self._cond:
                self._calls.pop(stream_id, None)
        if call.error is not None:
            raise call.error
        resp = call.response
        if resp.HasField("status") and resp.status.code != OK:
            raise RuntimeCallError(method, resp.status.code, resp.status.message)
        out = response_type()
        out.ParseFromString(resp.payload)
        return out

    # ---- raw access for fault tests --------------------------------------

    def raw_send(self, data: bytes) -> None:
        """Write bytes as they are on the trunk (no framing added)."""
        if self._sock is None:
            raise ConnectionError("not connected")
        with self._write_lock:
            self._sock.sendall(data)

    def send_frame(self, conn_id: int, payload: bytes) -> None:
        """Write one mux frame."""
        self.raw_send(mux_frame(conn_id, payload))

    # ---- internals -------------------------------------------------------

    def _send(self, conn_id: int, message: bytes) -> None:
        # One frame per ttrpc message when it fits, as the Go mux would cut it.
        for off in range(0, max(len(message), 1), MUX_PAYLOAD_MAX):
            self.send_frame(conn_id, message[off : off + MUX_PAYLOAD_MAX])

    def _fail_pending(self, error: BaseException) -> None:
        with self._cond:
            calls = list(self._calls.values())
            self._calls.clear()
        for call in calls:
            call.error = error
            call.done.set()

    def _read_loop(self) -> None:
        assert self._sock is not None
        mux = MuxDecoder()
        streams = {PLUGIN_SERVICE_CONN: TtrpcDecoder(), RUNTIME_SERVICE_CONN: TtrpcDecoder()}
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    break
                for conn_id, payload in mux.feed(data):
                    decoder = streams.get(conn_id)
                    if decoder is None:
                        # Like the Go mux: data for a connection nobody opened is dropped.
                        self._protocol_error(f"frame for unknown connection {conn_id} dropped")
                        continue
                    for stream_id, mtype, _flags, body in decoder.feed(payload):
                        if conn_id == PLUGIN_SERVICE_CONN:
                            self._on_server_message(stream_id, mtype, body)
                        else:
                            self._on_client_message(stream_id, mtype, body)
        except OSError:
            pass
        finally:
            if mux.pending:
                self._protocol_error(f"trunk ended inside a frame ({mux.pending} bytes left)")
            self.closed.set()
            self._fail_pending(ConnectionError("NRI connection closed"))
            with self._cond:
                self._cond.notify_all()

    def _protocol_error(self, text: str) -> None:
        with self._cond:
            self.protocol_errors.append(text)
            self._cond.notify_all()

    def _on_client_message(self, stream_id: int, mtype: int, body: bytes | None) -> None:
        with self._cond:
            call = self._calls.get(stream_id)
        if mtype != MESSAGE_RESPONSE or call is None:
            self._protocol_error(f"unexpected message type {mtype} on client stream {stream_id}")
            return
        if body is None:
            call.error = RuntimeCallError("?", RESOURCE_EXHAUSTED, "oversized response")
        else:
            try:
                resp = ttrpc_pb2.Response()
                resp.ParseFromString(body)
                call.response = resp
            except DecodeError as exc:
                call.error = exc
        call.done.set()

    def _reply(
        self, stream_id: int, payload: bytes = b"", code: int = OK, message: str = ""
    ) -> None:
        resp = ttrpc_pb2.Response(payload=payload)
        resp.status.SetInParent()  # the Go server always sends a status, code 0 when fine
        resp.status.code = code
        resp.status.message = message
        with contextlib.suppress(OSError):  # the runtime hung up; the reader notices
            self._send(
                PLUGIN_SERVICE_CONN,
                ttrpc_message(stream_id, MESSAGE_RESPONSE, resp.SerializeToString()),
            )

    def _on_server_message(self, stream_id: int, mtype: int, body: bytes | None) -> None:
        if mtype != MESSAGE_REQUEST:
            self._protocol_error(f"message type {mtype} on server stream {stream_id} ignored")
            return
        if stream_id % 2 != 1:
            self._protocol_error(f"request on even stream id {stream_id}")
            self._reply(stream_id, code=INVALID_ARGUMENT, message="StreamID must be odd")
            return
        if stream_id <= self._last_server_stream:
            self._protocol_error(f"stream id {stream_id} not increasing")
            self._reply(stream_id, code=INVALID_ARGUMENT, message="StreamID must increment")
            return
        self._last_server_stream = stream_id
        if body is None:
            self._protocol_error(f"oversized request on stream {stream_id}")
            self._reply(stream_id, code=RESOURCE_EXHAUSTED, message="message too large")
            return
        try:
            req = ttrpc_pb2.Request()
            req.ParseFromString(body)
        except DecodeError as exc:
            self._protocol_error(f"undecodable ttrpc request on stream {stream_id}: {exc}")
            self._reply(stream_id, code=INVALID_ARGUMENT, message="bad request")
            return
        if req.service != self.plugin_service:
            self._reply(stream_id, code=UNIMPLEMENTED, message=f"service {req.service}")
            return
        if req.method not in self.methods:
            self._reply(stream_id, code=UNIMPLEMENTED, message=f"method {req.method}")
            return
        req_type = self.methods[req.method][0]
        msg: Any = req_type()
        try:
            msg.ParseFromString(req.payload)
        except DecodeError as exc:
            self._reply(stream_id, code=INVALID_ARGUMENT, message=f"bad {req_type.__name__}: {exc}")
            return
        final_sync = self._record(req.method, msg)
        threading.Thread(
            target=self._serve,
            args=(stream_id, req.method, msg, final_sync),
            name=f"nri-plugin-{req.method}-{stream_id}",
            daemon=True,
        ).start()

    def _record(self, method: str, msg: Any) -> Any:
        """Record one call in arrival order; for the last Synchronize part, the merged request."""
        name = method
        if method == "StateChange":
            name = EVENT_NAMES.get(msg.event, f"EVENT_{msg.event}")
        merged = None
        with self._cond:
            if method == "Configure":
                self.configure_request = msg
            elif method == "Synchronize":
                self.synchronize_requests.append(msg)
                self._sync_parts.append(msg)
                if not msg.more:
                    merged = nri_pb2.SynchronizeRequest(more=False)
                    for part in self._sync_parts:
                        merged.pods.extend(part.pods)
                        merged.containers.extend(part.containers)
                    self._sync_parts = []
            self.received.append((name, msg))
            self._cond.notify_all()
        if self.on_receive is not None:
            self.on_receive(name, msg)
        return merged

    def _serve(self, stream_id: int, method: str, msg: Any, merged_sync: Any) -> None:
        resp_type = self.methods[method][1]
        try:
            if method == "Synchronize" and msg.more:
                # Collect; the handler sees everything with the last part.
                resp: Message | None = nri_pb2.SynchronizeResponse(more=True)
            elif method == "Synchronize":
                self.synchronize_merged = merged_sync
                resp = self.handlers[method](merged_sync)
                if resp is not None:
                    assert isinstance(resp, nri_pb2.SynchronizeResponse)
                    resp.more = False
            else:
                resp = self.handlers[method](msg)
            if resp is None:
                resp = self._default_configure(msg) if method == "Configure" else resp_type()
        except PluginError as exc:
            self._answer_error(stream_id, method, exc.code, exc.message, exc)
            return
        except Exception as exc:
            with self._cond:
                self.handler_errors.append((method, exc))
            self._answer_error(stream_id, method, UNKNOWN, f"{type(exc).__name__}: {exc}", exc)
            return
        self._reply(stream_id, payload=resp.SerializeToString())
        with self._cond:
            if method == "Configure":
                self.configured.set()
            elif method == "Synchronize" and not msg.more and self.configured.is_set():
                self.synchronized.set()
            self._cond.notify_all()

    def _answer_error(
        self, stream_id: int, method: str, code: int, message: str, exc: Exception
    ) -> None:
        self._reply(stream_id, code=code, message=message)
        with self._cond:
            # A failed Configure or final Synchronize fails start() with the handler's error.
            if method in ("Configure", "Synchronize") and not self.synchronized.is_set():
                self._start_error = exc
            self._cond.notify_all()


# --------------------------------------------------------------------------
# As a plugin process
# --------------------------------------------------------------------------


def _identity(argv0: str) -> tuple[str, str]:
    """(idx, name) from the environment, else from a '<idx>-<name>' program name."""
    name = os.environ.get(ENV_PLUGIN_NAME, "")
    idx = os.environ.get(ENV_PLUGIN_IDX, "")
    base = os.path.basename(argv0)
    match = re.fullmatch(r"(\d\d)-(.+?)(\.py)?", base)
    if not idx:
        idx = match.group(1) if match else "10"
    if not name:
        name = match.group(2) if match else "test"
    return idx, name


def _log_line(path: str, record: dict[str, Any]) -> None:
    # One write on an O_APPEND fd: lines from several plugins never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    """Run as an NRI plugin until the runtime hangs up.

    Environment: NRI_PLUGIN_SOCKET (an inherited, connected fd, as the runtime
    gives a plugin it launches), NRI_PLUGIN_NAME, NRI_PLUGIN_IDX; NRI_TEST_LOG
    (append one JSON line per call received: {"event", "pod", "container", ...});
    NRI_TEST_ANNOTATE=1 (CreateContainer adds annotation "nri-test/<name>": "<idx>");
    NRI_TEST_EVENTS (comma-separated events to subscribe, default the lifecycle).
    """
    parser = argparse.ArgumentParser(prog="nri_plugin", description=main.__doc__)
    parser.add_argument("--socket", help=f"NRI socket to dial (default {DEFAULT_SOCKET_PATH})")
    parser.add_argument("--name")
    parser.add_argument("--idx")
    parser.add_argument("--events", default=os.environ.get("NRI_TEST_EVENTS", ""))
    opts = parser.parse_args(argv)

    idx, name = _identity(sys.argv[0])
    name = opts.name or name
    idx = opts.idx or idx
    events = [e.strip() for e in opts.events.split(",") if e.strip()] or list(LIFECYCLE_EVENTS)
    log_path = os.environ.get("NRI_TEST_LOG")
    annotate = os.environ.get("NRI_TEST_ANNOTATE") == "1"

    plugin = Plugin(opts.socket, name=name, idx=idx, events=events)

    def log(received: str, msg: Any) -> None:
        if not log_path:
            return
        event = Plugin.normalize(received)
        record: dict[str, Any] = {"event": event, "plugin": f"{idx}-{name}"}
        if received != event:
            record["state_change"] = received
        if event == "Configure":
            record["config"] = msg.config
        elif event == "Synchronize":
            record["pods"] = [p.id for p in msg.pods]
            record["containers"] = [c.id for c in msg.containers]
            record["more"] = msg.more
        else:
            if event in POD_METHODS or event in CONTAINER_METHODS:
                record["pod"] = msg.pod.id if msg.HasField("pod") else ""
            if event in CONTAINER_METHODS:
                record["container"] = msg.container.id if msg.HasField("container") else ""
        _log_line(log_path, record)

    plugin.on_receive = log
    if annotate:

        def create(req: Any) -> Message:
            resp = nri_pb2.CreateContainerResponse()
            resp.adjust.annotations[f"nri-test/{name}"] = idx
            return resp

        plugin.handlers["CreateContainer"] = create

    try:
        plugin.start()
    except Exception as exc:
        print(f"nri plugin {idx}-{name}: {exc}", file=sys.stderr)
        plugin.close()
        return 1
    plugin.closed.wait()
    plugin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
