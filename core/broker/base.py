"""The Broker protocol: carries freshly stored events to the *other* Herald processes.

The publishing process delivers to its own subscribers itself, at once, whatever the
broker's health (``Publisher``, ``ChangeChannel``); a broker never echoes a process's
own messages back to it. The in-process broker (``local.py``) has no other process to
reach; a Redis broker reaches the others. The broker is only a doorbell with the
events attached: correctness never depends on it, because a subscription that sees a
hole in ``seq`` re-reads the store, and while the broker is down (``healthy`` False)
the Core reads the store for every followed execution once a second.
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

    @property
    def shared(self) -> bool:
        """Whether other processes publish too (then what this process heard of an
        execution is complete only while it was subscribed)."""

    @property
    def healthy(self) -> bool:
        """Whether messages from other processes are arriving (subscribed and connected)."""

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
        """Hand ``events`` (already stored, in seq order) to the listeners of ``channel``
        in every other process."""
