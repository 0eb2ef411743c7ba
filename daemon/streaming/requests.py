"""What a streaming URL stands for, and the single-use tokens that name them.

The CRI calls Exec, Attach and PortForward only validate and remember the
request; the client then comes to the streaming server with the URL's token
within `token_ttl` seconds. A token is random (128 bits), works once, and
expires: a URL that leaks later is worthless. The cache is bounded, as a
kubelet's is, so a flood of RPCs cannot grow it without limit.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pyctr.daemon.errors import ResourceExhausted

MAX_IN_FLIGHT = 1000


@dataclass(frozen=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool

    kind = "exec"


@dataclass(frozen=True)
class AttachRequest:
    container_id: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool

    kind = "attach"


@dataclass(frozen=True)
class PortForwardRequest:
    sandbox_id: str
    netns: str  # path of the pod's network namespace
    ports: tuple[int, ...]  # allowed ports; empty = any

    kind = "portforward"


StreamRequest = ExecRequest | AttachRequest | PortForwardRequest


class TokenCache:
    def __init__(
        self,
        ttl: float,
        max_in_flight: int = MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_in_flight = max_in_flight
        self._clock = clock
        # token -> (expiry, request), oldest first (insertion order = expiry order)
        self._entries: OrderedDict[str, tuple[float, StreamRequest]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _evict_expired(self, now: float) -> None:
        while self._entries:
            token, (expiry, _) = next(iter(self._entries.items()))
            if expiry > now:
                break
            del self._entries[token]

    def insert(self, request: StreamRequest) -> str:
        now = self._clock()
        self._evict_expired(now)
        if len(self._entries) >= self.max_in_flight:
            raise ResourceExhausted(
                f"too many streaming requests in flight ({self.max_in_flight}); retry later"
            )
        token = secrets.token_urlsafe(16)
        self._entries[token] = (now + self.ttl, request)
        return token

    def consume(self, token: str) -> StreamRequest | None:
        """The request for `token`, once; None if unknown, used or expired."""
        entry = self._entries.pop(token, None)
        if entry is None:
            return None
        expiry, request = entry
        return request if expiry > self._clock() else None
