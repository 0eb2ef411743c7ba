"""Exec, attach and port-forward streams for the kubelet (CRI streaming).

- `spdy`: SPDY/3.1 framing, header compression and flow control, no I/O;
- `session`: a SPDY session on an asyncio transport, streams with backpressure;
- `websocket`: Kubernetes' channel framing over aiohttp's WebSocket;
- `remotecommand`, `portforward`: the Kubernetes protocols over either;
- `requests`: what a URL stands for, and the single-use token cache;
- `server`: the aiohttp server and protocol negotiation; `backend`: the runtime.

pyctrd starts it with `start_streaming(ctx)` and stops it with `server.stop()`.
"""

from __future__ import annotations

from typing import Any

from pyctr.daemon.streaming.server import StreamingServer


async def start_streaming(ctx: Any) -> StreamingServer:
    """Start the server on [cri.streaming] address/port, over ctx.runtime; sets ctx.streaming."""
    from pyctr.daemon.main import StartupError
    from pyctr.daemon.streaming.backend import RuntimeBackend

    server = StreamingServer(ctx.config.cri.streaming, RuntimeBackend(ctx.runtime))
    try:
        await server.start()
    except OSError as e:
        raise StartupError(str(e)) from None
    ctx.streaming = server
    return server
