"""Tails: the newest events of each execution this process has seen, kept encoded, so a
resume (a reconnect with a cursor, a long-poller's next poll) is served from memory
instead of a store read.

A tail is fed by everything this process hears of an execution: its own publishes
(always) and other processes' through the broker (while a hub follows it). Events may
arrive out of seq order from several processes, so a tail is a window of seqs, and it
answers only a range it holds *completely* (``covering``): a hole means the store.

Whether a tail can be trusted up to "now" is the caller's question, not the tail's:
``Subscription`` asks it only when the execution's hub was already following before the
document it resumes against was read (``Hubs.warm``), so that nothing published after
that read can have escaped the tail (a newer event then arrives live, or as a hole).
"""

from __future__ import annotations

from collections import OrderedDict

from core.codec import Encoded

#: Events kept per execution, and executions kept (least recently fed go first).
TAIL_EVENTS = 512
TAIL_EXECUTIONS = 5_000


class _Tail:
    __slots__ = ("events", "newest")

    def __init__(self) -> None:
        self.events: dict[int, Encoded] = {}
        self.newest = 0


class Tails:
    """Per execution, a window of its newest events, encoded."""

    def __init__(self, per_execution: int = TAIL_EVENTS, executions: int = TAIL_EXECUTIONS) -> None:
        self.per_execution = per_execution
        self.executions = executions
        self._tails: OrderedDict[str, _Tail] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tails)

    def add(self, execution_id: str, batch: list[Encoded]) -> None:
        """Events just stored or heard (any order, duplicates harmless)."""
        tail = self._tails.get(execution_id)
        if tail is None:
            tail = self._tails[execution_id] = _Tail()
            if len(self._tails) > self.executions:
                self._tails.popitem(last=False)
        else:
            self._tails.move_to_end(execution_id)
        events = tail.events
        for event in batch:
            events[event.seq] = event
            if event.seq > tail.newest:
                tail.newest = event.seq
        floor = tail.newest - self.per_execution
        if len(events) > self.per_execution:
            for seq in [s for s in events if s <= floor]:
                del events[seq]

    def covering(
        self, execution_id: str, after: int, upto: int, limit: int, retained_since: float = 0.0
    ) -> list[Encoded] | None:
        """Events ``after+1 .. min(upto, after+limit)`` when the tail holds every one of
        them and none is older than ``retained_since`` (retention applies to memory as
        to the store: such a resume gets its ``reset``); ``[]`` when there are none to
        give; else None."""
        end = min(upto, after + limit)
        if end <= after:
            return []
        tail = self._tails.get(execution_id)
        if tail is None:
            return None
        events = tail.events
        out = []
        for seq in range(after + 1, end + 1):
            event = events.get(seq)
            if event is None or event.event.timestamp < retained_since:
                return None
            out.append(event)
        return out

    def forget(self) -> None:
        """Drop everything (after a broker outage nothing heard is known complete)."""
        self._tails.clear()
