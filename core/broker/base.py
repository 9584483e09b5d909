"""The Broker protocol: carries freshly stored events to every Herald process.

The in-process broker (``local.py``) serves a single process; a Redis broker serves
several. The broker is only a doorbell with the events attached: correctness never
depends on it, because a subscription that sees a gap in ``seq`` re-reads the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from core.model import Event

Listener = Callable[[list[Event]], None]


class Broker(Protocol):
    """Channel-per-execution publish/subscribe."""

    #: Called after an outage in which messages may have been lost (set by the Core):
    #: every subscription then re-reads the store from its cursor.
    on_resync: Callable[[], None] | None

    async def start(self) -> None:
        """Connect."""

    async def close(self) -> None:
        """Disconnect."""

    async def ping(self) -> None:
        """Return when the broker answers."""

    def subscribe(self, channel: str, listener: Listener) -> None:
        """Call ``listener(events)`` for every batch published on ``channel``."""

    def unsubscribe(self, channel: str) -> None:
        """Stop listening on ``channel``."""

    async def publish(self, channel: str, events: list[Event]) -> None:
        """Hand ``events`` (already stored, in seq order) to every listener."""
