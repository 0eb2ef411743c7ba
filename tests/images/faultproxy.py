"""An HTTP proxy in front of a test registry that counts requests and injects faults.

    with FaultProxy(registry.port) as proxy:
        proxy.cut_blobs_after = 4096      # blob bodies stop after 4 KiB (connection closed)
        proxy.cut_times = 1               # ... for the first cut only
        proxy.flip_blobs = True           # one byte of each blob body flipped
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
        self.cut_blobs_after: int | None = None
        self.cut_times = 1_000_000
        self.flip_blobs = False
        self.stall_blobs = False
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
            out_head = out_head[:-2] + b"Connection: close\r\n\r\n"
            writer.write(out_head)
            sent = 0
            cut = None
            if is_blob and self.cut_blobs_after is not None:
                with self._lock:
                    if self.cut_times > 0:
                        self.cut_times -= 1
                        cut = self.cut_blobs_after
            if is_blob and self.stall_blobs:
                await asyncio.sleep(3600)
            flipped = False
            while chunk := await up_r.read(64 << 10):
                if cut is not None and sent + len(chunk) >= cut:
                    writer.write(chunk[: cut - sent])
                    await writer.drain()
                    writer.transport.abort()
                    return
                if is_blob and self.flip_blobs and not flipped:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    flipped = True
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        finally:
            up_w.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
