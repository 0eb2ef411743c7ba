"""The test-side NRI plugin (tests/support/nri_plugin.py) against a fake runtime.

No daemon: the fake runtime below holds the other end of a socketpair and
frames bytes with struct itself, so these tests check the stub's wire, not
the stub against its own helpers.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message

from pyctr.proto import nri_pb2, ttrpc_pb2
from tests.support import nri_plugin
from tests.support.nri_plugin import Plugin, PluginError

REPO = Path(__file__).resolve().parents[2]
PLUGIN_SVC = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SVC = "nri.pkg.api.v1alpha1.Runtime"


class FakeRuntime:
    """The runtime end of the trunk: serves conn 2, calls the plugin on conn 1."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(10)
        self.trunk = b""
        self.conns: dict[int, bytes] = {1: b"", 2: b""}
        self.next_stream = 1

    def _frame(self) -> None:
        while len(self.trunk) < 8 or len(self.trunk) < 8 + struct.unpack(">I", self.trunk[4:8])[0]:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("plugin hung up")
            self.trunk += data
        conn, length = struct.unpack(">II", self.trunk[:8])
        self.conns[conn] += self.trunk[8 : 8 + length]
        self.trunk = self.trunk[8 + length :]

    def read(self, conn: int) -> tuple[int, int, bytes]:
        """The next ttrpc message on a connection: (stream id, type, data)."""
        while (
            len(self.conns[conn]) < 10
            or len(self.conns[conn]) < 10 + struct.unpack(">I", self.conns[conn][:4])[0]
        ):
            self._frame()
        length, stream, mtype, _flags = struct.unpack(">IIBB", self.conns[conn][:10])
        data = self.conns[conn][10 : 10 + length]
        self.conns[conn] = self.conns[conn][10 + length :]
        return stream, mtype, data

    def send(self, conn: int, stream: int, mtype: int, data: bytes, split: bool = False) -> None:
        msg = struct.pack(">IIBB", len(data), stream, mtype, 0) + data
        # split: the message across two mux frames, cut inside the ttrpc header.
        parts = [msg[:3], msg[3:]] if split else [msg]
        self.sock.sendall(b"".join(struct.pack(">II", conn, len(p)) + p for p in parts))

    def serve(self, method: str, reply: Message, code: int = 0) -> Any:
        """Answer the plugin's next call on conn 2; returns its decoded request."""
        stream, mtype, data = self.read(2)
        assert mtype == 1 and stream % 2 == 1
        req = ttrpc_pb2.Request.FromString(data)
        assert (req.service, req.method) == (RUNTIME_SVC, method)
        resp = ttrpc_pb2.Response(payload=reply.SerializeToString())
        resp.status.code = code
        self.send(2, stream, 2, resp.SerializeToString())
        return stream, req.payload

    def call(self, method: str, request: Message, resp_type: type[Any], split: bool = False) -> Any:
        """Call the plugin; returns (status, response)."""
        stream = self.next_stream
        self.next_stream += 2
        req = ttrpc_pb2.Request(
            service=PLUGIN_SVC, method=method, payload=request.SerializeToString()
        )
        self.send(1, stream, 1, req.SerializeToString(), split=split)
        got, mtype, data = self.read(1)
        assert (got, mtype) == (stream, 2)
        resp = ttrpc_pb2.Response.FromString(data)
        return resp.status, resp_type.FromString(resp.payload)


def pod(pid: str) -> nri_pb2.PodSandbox:
    return nri_pb2.PodSandbox(id=pid, name=f"name-{pid}", namespace="default")


def ctr(cid: str, pid: str) -> nri_pb2.Container:
    return nri_pb2.Container(id=cid, pod_sandbox_id=pid, name=f"name-{cid}")


def handshake(rt: FakeRuntime, plugin: Plugin) -> tuple[Any, nri_pb2.SynchronizeResponse]:
    """Register, Configure, a Synchronize in two parts; start() must return only after."""
    errors: list[BaseException] = []

    def start() -> None:
        try:
            plugin.start(timeout=10)
        except BaseException as exc:
            errors.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    stream, payload = rt.serve("RegisterPlugin", nri_pb2.Empty())
    assert stream == 1  # client streams are odd, from 1
    reg = nri_pb2.RegisterPluginRequest.FromString(payload)
    assert (reg.plugin_name, reg.plugin_idx) == (plugin.name, plugin.idx)

    status, cfg = rt.call(
        "Configure",
        nri_pb2.ConfigureRequest(
            config="cfg", runtime_name="pyctr", runtime_version="0.1", request_timeout=2000
        ),
        nri_pb2.ConfigureResponse,
    )
    assert status.code == 0
    status, part = rt.call(
        "Synchronize",
        nri_pb2.SynchronizeRequest(pods=[pod("p1")], containers=[ctr("c1", "p1")], more=True),
        nri_pb2.SynchronizeResponse,
        split=True,
    )
    assert status.code == 0 and part.more and not part.update
    assert not plugin.synchronized.is_set()
    status, final = rt.call(
        "Synchronize",
        nri_pb2.SynchronizeRequest(pods=[pod("p2")], containers=[ctr("c2", "p2")], more=False),
        nri_pb2.SynchronizeResponse,
    )
    assert status.code == 0 and not final.more
    starter.join(10)
    assert not starter.is_alive() and not errors, errors
    return cfg, final


@pytest.fixture
def pair() -> Iterator[tuple[FakeRuntime, socket.socket]]:
    runtime_end, plugin_end = socket.socketpair()
    try:
        yield FakeRuntime(runtime_end), plugin_end
    finally:
        runtime_end.close()
        plugin_end.close()


def test_event_numbers_match_the_proto() -> None:
    proto = {v.name: v.number for v in nri_pb2.Event.DESCRIPTOR.values}
    assert proto.pop("UNKNOWN") == 0 and proto.pop("LAST") == 15
    assert proto == nri_plugin.EVENTS
    assert nri_plugin.event_mask(["CREATE_CONTAINER"]) == 1 << 3
    assert nri_plugin.event_mask(["RunPodSandbox", "stop_container"]) == 1 | 1 << 9


def test_register_configure_and_split_synchronize(pair: tuple[FakeRuntime, socket.socket]) -> None:
    rt, plugin_end = pair
    synced: list[Any] = []

    def sync(req: Any) -> nri_pb2.SynchronizeResponse:
        synced.append(req)
        return nri_pb2.SynchronizeResponse(update=[nri_pb2.ContainerUpdate(container_id="c1")])

    with Plugin(
        name="stub",
        idx="05",
        events=["CREATE_CONTAINER", "START_CONTAINER"],
        fd=plugin_end.detach(),
    ) as plugin:
        plugin.handlers["Synchronize"] = sync
        cfg, final = handshake(rt, plugin)
        assert cfg.events == (1 << 3) | (1 << 5)
        assert plugin.configure_request.runtime_name == "pyctr"
        assert plugin.configure_request.request_timeout == 2000
        # The handler saw both parts at once, with the last one; its updates went back.
        assert [(list(p.id for p in r.pods), list(c.id for c in r.containers)) for r in synced] == [
            (["p1", "p2"], ["c1", "c2"])
        ]
        assert [u.container_id for u in final.update] == ["c1"]
        assert [r.more for r in plugin.synchronize_requests] == [True, False]
        assert plugin.names() == ["Configure", "Synchronize", "Synchronize"]
        assert plugin.protocol_errors == []

        # An unsolicited update: the next client stream, 3.
        done: list[Any] = []
        caller = threading.Thread(
            target=lambda: done.append(
                plugin.update_containers([nri_pb2.ContainerUpdate(container_id="c2")])
            )
        )
        caller.start()
        failed = nri_pb2.UpdateContainersResponse(
            failed=[nri_pb2.ContainerUpdate(container_id="c2")]
        )
        stream, payload = rt.serve("UpdateContainers", failed)
        caller.join(10)
        assert stream == 3
        assert [
            u.container_id for u in nri_pb2.UpdateContainersRequest.FromString(payload).update
        ] == ["c2"]
        assert [u.container_id for u in done[0].failed] == ["c2"]


def test_calls_handlers_errors_and_state_changes(pair: tuple[FakeRuntime, socket.socket]) -> None:
    rt, plugin_end = pair
    release = threading.Event()

    def create(req: Any) -> nri_pb2.CreateContainerResponse:
        resp = nri_pb2.CreateContainerResponse()
        resp.adjust.annotations["stub/seen"] = req.container.id
        return resp

    def update(req: Any) -> None:
        raise PluginError(9, "refused by the test")

    def stop(req: Any) -> None:
        release.wait(10)  # a hung handler must not stop the reader

    with Plugin(fd=plugin_end.detach()) as plugin:
        plugin.handlers["CreateContainer"] = create
        plugin.handlers["UpdateContainer"] = update
        plugin.handlers["StopContainer"] = stop
        handshake(rt, plugin)

        status, resp = rt.call(
            "CreateContainer",
            nri_pb2.CreateContainerRequest(pod=pod("p1"), container=ctr("c9", "p1")),
            nri_pb2.CreateContainerResponse,
        )
        assert status.code == 0
        assert dict(resp.adjust.annotations) == {"stub/seen": "c9"}

        status, _ = rt.call(
            "UpdateContainer",
            nri_pb2.UpdateContainerRequest(pod=pod("p1"), container=ctr("c9", "p1")),
            nri_pb2.UpdateContainerResponse,
        )
        assert (status.code, status.message) == (9, "refused by the test")

        # StopContainer hangs in its handler; a StateChange behind it is still answered.
        stop_req = ttrpc_pb2.Request(
            service=PLUGIN_SVC,
            method="StopContainer",
            payload=nri_pb2.StopContainerRequest(container=ctr("c9", "p1")).SerializeToString(),
        )
        rt.send(1, rt.next_stream, 1, stop_req.SerializeToString())
        stop_stream = rt.next_stream
        rt.next_stream += 2
        status, _ = rt.call(
            "StateChange",
            nri_pb2.StateChangeEvent(
                event=nri_pb2.POST_START_CONTAINER, pod=pod("p1"), container=ctr("c9", "p1")
            ),
            nri_pb2.Empty,
        )
        assert status.code == 0
        release.set()
        got, mtype, _ = rt.read(1)
        assert (got, mtype) == (stop_stream, 2)

        status, _ = rt.call("NoSuchMethod", nri_pb2.Empty(), nri_pb2.Empty)
        assert status.code == 12  # Unimplemented, as a ttrpc server answers

        names = [n for n, _ in plugin.received]
        assert names[-4:] == [
            "CreateContainer",
            "UpdateContainer",
            "StopContainer",
            "POST_START_CONTAINER",
        ]
        assert plugin.events_for("c9") == [
            "CreateContainer",
            "UpdateContainer",
            "StopContainer",
            "PostStartContainer",
        ]
        assert plugin.protocol_errors == []

        rt.sock.close()
        assert plugin.closed.wait(5)


def test_start_fails_when_configure_is_refused(pair: tuple[FakeRuntime, socket.socket]) -> None:
    rt, plugin_end = pair

    def refuse(req: Any) -> None:
        raise PluginError(3, "bad config")

    with Plugin(fd=plugin_end.detach()) as plugin:
        plugin.handlers["Configure"] = refuse
        errors: list[BaseException] = []
        starter = threading.Thread(target=lambda: _capture(plugin.start, errors))
        starter.start()
        rt.serve("RegisterPlugin", nri_pb2.Empty())
        status, _ = rt.call("Configure", nri_pb2.ConfigureRequest(), nri_pb2.ConfigureResponse)
        assert (status.code, status.message) == (3, "bad config")
        starter.join(10)
        assert len(errors) == 1 and isinstance(errors[0], PluginError)
        assert plugin.closed.is_set()


def _capture(fn: Any, errors: list[BaseException]) -> None:
    try:
        fn()
    except BaseException as exc:
        errors.append(exc)


def test_main_as_a_launched_plugin(tmp_path: Path) -> None:
    """`python -m tests.support.nri_plugin` on an inherited fd: logs, annotates, exits on hangup."""
    runtime_end, plugin_end = socket.socketpair()
    log = tmp_path / "events.jsonl"
    env = dict(
        os.environ,
        NRI_PLUGIN_SOCKET=str(plugin_end.fileno()),
        NRI_PLUGIN_NAME="logger",
        NRI_PLUGIN_IDX="20",
        NRI_TEST_LOG=str(log),
        NRI_TEST_ANNOTATE="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.nri_plugin"],
        cwd=REPO,
        env=env,
        pass_fds=[plugin_end.fileno()],
    )
    plugin_end.close()
    try:
        rt = FakeRuntime(runtime_end)
        _, payload = rt.serve("RegisterPlugin", nri_pb2.Empty())
        reg = nri_pb2.RegisterPluginRequest.FromString(payload)
        assert (reg.plugin_name, reg.plugin_idx) == ("logger", "20")
        _, cfg = rt.call("Configure", nri_pb2.ConfigureRequest(), nri_pb2.ConfigureResponse)
        assert cfg.events & (1 << 3)
        rt.call("Synchronize", nri_pb2.SynchronizeRequest(), nri_pb2.SynchronizeResponse)
        _, resp = rt.call(
            "CreateContainer",
            nri_pb2.CreateContainerRequest(pod=pod("p1"), container=ctr("c1", "p1")),
            nri_pb2.CreateContainerResponse,
        )
        assert dict(resp.adjust.annotations) == {"nri-test/logger": "20"}
        rt.call(
            "StateChange",
            nri_pb2.StateChangeEvent(
                event=nri_pb2.START_CONTAINER, pod=pod("p1"), container=ctr("c1", "p1")
            ),
            nri_pb2.Empty,
        )
    finally:
        runtime_end.close()
        try:
            rc = proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rc == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    events = [(r["event"], r.get("pod"), r.get("container")) for r in lines]
    assert events == [
        ("Configure", None, None),
        ("Synchronize", None, None),
        ("CreateContainer", "p1", "c1"),
        ("StartContainer", "p1", "c1"),
    ]
    assert lines[-1]["state_change"] == "START_CONTAINER"


def test_decoders_take_bytes_in_any_cut() -> None:
    """A ttrpc message cut across two mux frames, fed one byte at a time."""
    msg = struct.pack(">IIBB", 3, 7, 1, 0) + b"abc"
    frames = struct.pack(">II", 1, 4) + msg[:4] + struct.pack(">II", 1, len(msg) - 4) + msg[4:]
    mux, tt = nri_plugin.MuxDecoder(), nri_plugin.TtrpcDecoder()
    out: list[tuple[int, int, int, bytes | None]] = []
    for i in range(len(frames)):
        for conn, payload in mux.feed(frames[i : i + 1]):
            assert conn == 1
            out.extend(tt.feed(payload))
    assert out == [(7, 1, 0, b"abc")]
    assert nri_plugin.mux_frame(2, b"xy") == b"\0\0\0\x02\0\0\0\x02xy"
