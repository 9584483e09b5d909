"""In-process broker: a single process has no other process to reach.

Its ``publish`` therefore delivers nothing (the publishing process delivers to its own
subscribers itself); it keeps the listeners so that the Core's life cycle is the same
with or without Redis.
"""

from __future__ import annotations

from collections.abc import Callable

from core.broker.base import Listener
from core.model import Event


class LocalBroker:
    """Broker protocol for a single process (the embedded default)."""

    def __init__(self) -> None:
        self._listeners: dict[str, Listener] = {}
        #: Never called: an in-process broker loses nothing.
        self.on_resync: Callable[[], None] | None = None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._listeners.clear()

    async def ping(self) -> None:
        return None

    def subscribe(self, channel: str, listener: Listener) -> None:
        self._listeners[channel] = listener

    def unsubscribe(self, channel: str) -> None:
        self._listeners.pop(channel, None)

    @property
    def shared(self) -> bool:
        return False  # no other process

    @property
    def healthy(self) -> bool:
        return True

    async def publish(self, channel: str, events: list[Event]) -> None:
        return None  # no other process
