"""What the SPDY codec (spdy.py) reports: one event per thing the peer did."""

from __future__ import annotations

from dataclasses import dataclass

Headers = dict[str, list[str]]


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class StreamOpened(Event):
    """The peer sent SYN_STREAM. Answer with `reply` (or `reset`)."""

    stream_id: int
    headers: Headers
    fin: bool  # the peer will send nothing on it
    unidirectional: bool  # we may send nothing on it
    associated_id: int = 0
    priority: int = 0


@dataclass(frozen=True)
class StreamReplied(Event):
    stream_id: int
    headers: Headers
    fin: bool


@dataclass(frozen=True)
class HeadersReceived(Event):
    stream_id: int
    headers: Headers
    fin: bool


@dataclass(frozen=True)
class DataReceived(Event):
    """Part of a DATA frame's payload (a large frame comes in pieces); fin on the last."""

    stream_id: int
    data: bytes
    fin: bool


@dataclass(frozen=True)
class StreamReset(Event):
    stream_id: int
    status: int


@dataclass(frozen=True)
class SettingsReceived(Event):
    settings: dict[int, int]


@dataclass(frozen=True)
class PingReceived(Event):
    """A ping the peer started (already answered) or the answer to ours."""

    ping_id: int
    ours: bool


@dataclass(frozen=True)
class WindowUpdated(Event):
    """We may send more on stream_id (0: the whole session)."""

    stream_id: int
    delta: int


@dataclass(frozen=True)
class GoAwayReceived(Event):
    last_stream_id: int
    status: int
