"""The daemon's event bus: lifecycle events fanned out to subscribers.

Publishers (image store, runtime manager) call `publish`; each subscriber
(`pyctr events`, CRI GetContainerEvents) gets its own bounded queue. A slow
subscriber loses its oldest events (and is told how many) rather than making
publishers wait or the daemon's memory grow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

QUEUE_LIMIT = 1024


@dataclass(frozen=True)
class Event:
    topic: str  # e.g. "/tasks/exit", "/images/create"
    subject: str  # the container, image or snapshot it is about
    data: dict[str, Any] = field(default_factory=dict)
    timestamp_ns: int = field(default_factory=time.time_ns)


class Subscription:
    def __init__(self, bus: EventBus, prefixes: tuple[str, ...]) -> None:
        self._bus = bus
        self.prefixes = prefixes
        self.queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_LIMIT)
        self.dropped = 0

    def offer(self, event: Event) -> None:
        if self.prefixes and not event.topic.startswith(self.prefixes):
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()

    def close(self) -> None:
        self._bus._subscribers.discard(self)


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def publish(self, topic: str, subject: str, **data: Any) -> Event:
        """Fan out to every subscriber; safe to call from the event loop only."""
        event = Event(topic, subject, data)
        for sub in list(self._subscribers):
            sub.offer(event)
        return event

    def publish_threadsafe(
        self, loop: asyncio.AbstractEventLoop, topic: str, subject: str, **data: Any
    ) -> None:
        loop.call_soon_threadsafe(lambda: self.publish(topic, subject, **data))

    def subscribe(self, *prefixes: str) -> Subscription:
        """Events whose topic starts with one of `prefixes` (all when none)."""
        sub = Subscription(self, prefixes)
        self._subscribers.add(sub)
        return sub
