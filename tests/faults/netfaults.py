"""Network faults the image tests' FaultProxy does not make.

    with SlowProxy(registry.port, rate=2 << 20) as p:   # bytes per second, all traffic
        pull from f"{p.host}/..."; p.rate = None         # full speed from now on

    with LyingRegistry(image_blobs) as reg:             # {digest: bytes}, plus manifests
        reg.behave["manifest"] = "endless"               # see BEHAVIOURS
        pull from f"{reg.host}/repo:tag"

SlowProxy is a plain TCP pump (it does not parse HTTP), so keep-alive and
ranges pass through as they are; it only slows the bytes down, which makes
a pull last long enough to be killed at a chosen moment. LyingRegistry is a
small hand-written registry (manifests and blobs from a dict) whose answers
can be made to hang, never end, or lie about their sizes, one kind of
request at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable

BEHAVIOURS = (
    "ok",  # answer truthfully
    "hang-headers",  # accept the request, never answer
    "hang-body",  # send the headers, then nothing
    "endless",  # a body that never ends (chunked)
    "endless-length",  # Content-Length: 2**62, then bytes forever
    "short",  # Content-Length larger than the body, then close
    "slow-drip",  # one byte every 0.2 s: progress, but hopelessly slow
)


class _LoopThread:
    """An asyncio server on 127.0.0.1 run by a thread of its own."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server thread did not start")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _guarded(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # the server is closing
        finally:
            writer.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._guarded, "127.0.0.1", 0))
        self.port: int = server.sockets[0].getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self._ready.set()
        self._loop.run_forever()
        server.close()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
            self._loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> _LoopThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SlowProxy(_LoopThread):
    def __init__(self, upstream_port: int, rate: float | None) -> None:
        self.upstream_port = upstream_port
        self.rate = rate  # bytes per second downstream, per connection; None: unlimited
        super().__init__()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, slow: bool) -> None:
            try:
                while chunk := await src.read(16 << 10):
                    dst.write(chunk)
                    await dst.drain()
                    if slow and self.rate:
                        await asyncio.sleep(len(chunk) / self.rate)
            finally:
                with contextlib.suppress(Exception):
                    dst.write_eof()

        try:
            await asyncio.gather(pump(reader, up_w, False), pump(up_r, writer, True))
        finally:
            up_w.close()


class LyingRegistry(_LoopThread):
    """Serves `/v2/<repo>/manifests/<tag or digest>` and `/v2/<repo>/blobs/<digest>`.

    `behave` maps "manifest", "blob" (every blob) or a blob's digest to one of
    BEHAVIOURS; with a "token" entry every request must carry a bearer token
    from the registry's own /token endpoint, which behaves as that entry says.
    `requests` counts what was asked; `misbehaving` is how many bad answers are
    still being given (0 once every client has hung up on them).
    """

    def __init__(self) -> None:
        self.manifests: dict[str, tuple[bytes, str]] = {}  # tag or digest -> (body, type)
        self.blobs: dict[str, bytes] = {}
        self.behave: dict[str, str] = {}
        self.requests: Counter[str] = Counter()
        self.open_connections = 0
        self.misbehaving = 0  # answers being hung, dripped or streamed without end
        self._lock = threading.Lock()
        super().__init__()

    def add_manifest(self, ref: str, body: bytes, media_type: str) -> None:
        self.manifests[ref] = (body, media_type)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.open_connections += 1
        try:
            while await self._one_request(reader, writer):
                pass
        finally:
            with self._lock:
                self.open_connections -= 1

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        with self._lock:
            self.requests[f"{method} {path}"] += 1
        if path.startswith("/token"):
            body = json.dumps({"token": "pyctr-test-token"}).encode()
            how = self.behave.get("token", "ok")
            with self._lock:
                self.misbehaving += how != "ok"
            try:
                await self._send(writer, 200, body, "application/json", how, reader=reader)
            finally:
                with self._lock:
                    self.misbehaving -= how != "ok"
            return how == "ok"
        if "token" in self.behave and b"\r\nauthorization:" not in head.lower():
            realm = f"http://{self.host}/token"
            challenge = f'Bearer realm="{realm}",service="lying",scope="repository:x:pull"'
            await self._send(writer, 401, b"{}", "application/json", "ok", challenge=challenge)
            return True
        if path in ("/v2/", "/v2"):
            await self._send(writer, 200, b"{}", "application/json", "ok")
            return True
        parts = path.split("/")
        body: bytes | None = None
        ctype = "application/octet-stream"
        how = "ok"
        if len(parts) >= 5 and parts[-2] == "manifests":
            found = self.manifests.get(parts[-1])
            if found is not None:
                body, ctype = found
                how = self.behave.get("manifest", "ok")
        elif len(parts) >= 5 and parts[-2] == "blobs":
            body = self.blobs.get(parts[-1])
            how = self.behave.get(parts[-1], self.behave.get("blob", "ok"))
        if body is None:
            err = json.dumps({"errors": [{"code": "NOT_FOUND", "message": "not here"}]})
            await self._send(writer, 404, err.encode(), "application/json", "ok")
            return True
        if how != "ok":
            with self._lock:
                self.misbehaving += 1
        try:
            await self._send(
                writer, 200, body, ctype, how, head_only=method == "HEAD", reader=reader
            )
        finally:
            if how != "ok":
                with self._lock:
                    self.misbehaving -= 1
        return how == "ok"

    @staticmethod
    async def _until_closed(reader: asyncio.StreamReader | None) -> None:
        """Hang, until the client gives up and closes the connection."""
        if reader is None:
            await asyncio.sleep(3600)
            return
        while await reader.read(65536):
            pass

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        ctype: str,
        how: str,
        head_only: bool = False,
        challenge: str = "",
        reader: asyncio.StreamReader | None = None,
    ) -> None:
        if how == "hang-headers":
            await self._until_closed(reader)
            return
        reason = {200: "OK", 401: "Unauthorized", 404: "Not Found"}[status]
        headers = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {ctype}"]
        if challenge:
            headers.append(f"WWW-Authenticate: {challenge}")
        if how == "endless":
            headers.append("Transfer-Encoding: chunked")
        elif how == "endless-length":
            headers.append(f"Content-Length: {2**62}")
        elif how == "short":
            headers.append(f"Content-Length: {len(body) + 4096}")
        else:
            headers.append(f"Content-Length: {len(body)}")
        if body[:1] == b"{" and status == 200:
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            headers.append(f"Docker-Content-Digest: {digest}")
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        if head_only:
            return
        if how == "hang-body":
            await self._until_closed(reader)
        elif how == "endless":
            chunk = b" " * 65536
            while True:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
        elif how == "endless-length":
            chunk = body or b"\0" * 65536
            while True:
                writer.write(chunk)
                await writer.drain()
        elif how == "slow-drip":
            for i in range(len(body)):
                writer.write(body[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.2)
        else:
            writer.write(body)
            await writer.drain()


def wait_until(check: Callable[[], object], timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return bool(check())
