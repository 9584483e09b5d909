"""The change channel: every process hears when an execution is created or its status,
progress or stage moves.

The dispatcher (which worker gets what; cancels reaching workers) and the dashboard
feed observe it. A change reaches this process's observers at once and the other
processes' through the broker, on one channel. Tokens and logs are not changes: a
token stream costs this channel nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from core.broker.base import Broker
from core.model import TERMINAL_EVENTS, Event, Execution

log = logging.getLogger("herald.changes")

#: Broker channel of execution changes (no execution id can take this name).
CHANNEL = "_changes"
#: Events that move what a dashboard row or a dispatcher cares about.
CHANGE_EVENTS = frozenset({"status", "progress", *TERMINAL_EVENTS})

#: Called with (execution, events): ``events == []`` for a creation, else
#: ``[the newest event]`` of an append that moved the execution.
Observer = Callable[[Execution, list[Event]], None]


class ChangeChannel:
    """Announces execution changes through the broker and calls the observers."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.observers: list[Observer] = []
        self.gap_observers: list[Callable[[], None]] = []

    def observe(self, observer: Observer) -> None:
        self.observers.append(observer)

    def observe_gaps(self, observer: Callable[[], None]) -> None:
        """``observer()`` when changes of other processes may have been missed (the
        broker lost messages during an outage)."""
        self.gap_observers.append(observer)

    def lost(self) -> None:
        """The broker is back after an outage: tell the gap observers."""
        for observer in self.gap_observers:
            try:
                observer()
            except Exception:
                log.exception("a change-gap observer failed")

    def start(self) -> None:
        self.broker.subscribe(CHANNEL, self._on_changes)

    @staticmethod
    def moves(events: list[Event]) -> bool:
        """Whether an append of ``events`` changes what observers see."""
        return any(e.event in CHANGE_EVENTS for e in events)

    async def announce(self, execution: Execution, last: Event | None) -> None:
        """Tell every process's observers that ``execution`` was created (``last`` is
        None) or moved (``last`` is its newest event)."""
        if not self.observers:
            return
        change = Event(
            execution.id,
            execution.last_seq,
            "change",
            {"execution": execution.to_record(), "last": None if last is None else dataclasses.asdict(last)},
            time.time(),
        )
        self._on_changes([change])  # this process's observers, whatever the broker's health
        try:
            await self.broker.publish(CHANNEL, [change])
        except Exception:
            log.exception("broker publish failed for the change channel")

    def _on_changes(self, changes: list[Event]) -> None:
        """Broker listener of the change channel."""
        for change in changes:
            execution = Execution.from_record(change.data["execution"])
            last = change.data["last"]
            events = [] if last is None else [Event(**last)]
            for observer in self.observers:
                try:
                    observer(execution, events)
                except Exception:
                    log.exception("an execution observer failed")
