"""Exec, attach and port-forward streams for the kubelet (CRI streaming).

- `spdy`: SPDY/3.1 framing, header compression and flow control, no I/O;
- `session`: a SPDY session on an asyncio transport, streams with backpressure;
- `websocket`: Kubernetes' channel framing over aiohttp's WebSocket;
- `remotecommand`, `portforward`: the Kubernetes protocols over either;
- `requests`: what a URL stands for, and the single-use token cache;
- `server`: the aiohttp server and protocol negotiation; `backend`: the runtime.

pyctrd's `Daemon` starts a `StreamingServer` over the runtime and stops it at shutdown.
"""

from __future__ import annotations

from pyctr.daemon.streaming.server import StreamingServer

__all__ = ["StreamingServer"]
