"""An HTTP proxy in front of a test registry that counts requests and injects faults.

    with FaultProxy(registry.port) as proxy:
        proxy.cuts = [100_000]            # the next blob body longer than that is cut there
        proxy.cut_forever = 0             # then every blob body is cut at byte 0
        proxy.flip_digest = layer_digest  # that blob's first byte is flipped
        proxy.grow_digest = layer_digest  # that blob comes with 16 bytes too many
        proxy.stall_digest = "*"          # blob bodies (all, or that digest's) never come
        proxy.manifest = (body, type)     # every manifest GET answers this instead
        pull from f"127.0.0.1:{proxy.port}/..."
        proxy.blob_gets(digest)           # GETs seen for that blob

Faults we cannot produce otherwise (a connection cut mid-body, a registry
that lies about content) need a man in the middle; everything else about the
exchange is the real registry's. One connection per request (we send
`Connection: close` both ways) keeps the proxy a plain byte pump.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: Counter[str] = Counter()
        self.ranges: list[str] = []
        self.cuts: list[int] = []
        self.cut_forever: int | None = None
        self.flip_digest = ""
        self.grow_digest = ""
        self.stall_digest = ""
        self.stalled = 0  # stalled bodies whose client has not hung up yet
        self.manifest: tuple[bytes, str] | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
            self._loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    def blob_gets(self, digest: str) -> int:
        with self._lock:
            return sum(n for k, n in self.requests.items() if k.endswith(f"/blobs/{digest}"))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._proxy(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = [h for h in header_lines if h and not h.lower().startswith("connection:")]
        with self._lock:
            self.requests[f"{method} {path}"] += 1
            for h in headers:
                if h.lower().startswith("range:"):
                    self.ranges.append(h.split(":", 1)[1].strip())
        if self.manifest is not None and "/manifests/" in path:
            body, media_type = self.manifest
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n" % (media_type.encode(), len(body))
            )
            writer.write(body)
            await writer.drain()
            return
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            forwarded = request_line + "\r\n" + "".join(h + "\r\n" for h in headers)
            up_w.write(forwarded.encode("latin-1") + b"Connection: close\r\n\r\n")
            await up_w.drain()
            resp_head = await up_r.readuntil(b"\r\n\r\n")
            status_line = resp_head.split(b"\r\n", 1)[0]
            is_blob = (
                method == "GET"
                and re.search(r"/blobs/sha256:[0-9a-f]{64}$", path) is not None
                and status_line.split(b" ")[1] in (b"200", b"206")
            )
            out_head = re.sub(rb"(?im)^connection:[^\r]*\r\n", b"", resp_head)
            digest = path.rsplit("/", 1)[-1]
            grow = 16 if is_blob and digest == self.grow_digest else 0
            if grow:
                length = int(re.search(rb"(?im)^content-length: *(\d+)", out_head)[1])  # type: ignore[index]
                out_head = re.sub(
                    rb"(?im)^content-length: *\d+",
                    b"Content-Length: %d" % (length + grow),
                    out_head,
                )
            writer.write(out_head[:-2] + b"Connection: close\r\n\r\n")
            if is_blob and self.stall_digest in ("*", digest):
                await writer.drain()
                with self._lock:
                    self.stalled += 1
                try:
                    await reader.read()  # until the client hangs up (or the proxy stops)
                finally:
                    with self._lock:
                        self.stalled -= 1
                return
            sent = 0
            flip = is_blob and digest == self.flip_digest
            while chunk := await up_r.read(64 << 10):
                if is_blob and self._cut_now(sent + len(chunk)) is not None:
                    cut = self._take_cut()
                    writer.write(chunk[: max(0, cut - sent)])
                    await writer.drain()
                    writer.close()  # flushes what was written, then FIN: a short body
                    return
                if flip:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    flip = False
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            if grow:
                writer.write(b"\0" * grow)
                await writer.drain()
        finally:
            up_w.close()

    def _cut_now(self, reached: int) -> int | None:
        """The cut position if a body that reached `reached` bytes must be cut."""
        with self._lock:
            pos = self.cuts[0] if self.cuts else self.cut_forever
        return pos if pos is not None and reached >= pos else None

    def _take_cut(self) -> int:
        with self._lock:
            if self.cuts:
                return self.cuts.pop(0)
            assert self.cut_forever is not None
            return self.cut_forever

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
