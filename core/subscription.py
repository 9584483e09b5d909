"""Subscription: one client's position in one execution's stream, and the one place
that owns delivery order.

A subscription joins the execution's ``Hub`` *first* (live events are buffered while it
catches up), reads ``store.events_after(cursor)`` until it has caught up, then takes
live events. Live events can arrive out of order, twice, or with holes: with several
Herald processes each process's appends reach the others through the broker in arrival
order, not seq order, and a broker outage loses some. So ordering is a property of this
code, not of the broker: what arrives is merged by seq, anything at or below the cursor
is dropped, only the contiguous run right after the cursor is delivered, and a hole is
filled from the store (``next_run``). Sequences have no gaps in the store, so that one
rule gives exactly-once, in-order delivery on every transport.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from core.codec import Encoded
from core.errors import HeraldError, StoreUnavailable, not_found
from core.model import Execution
from core.transport import Encoding

if TYPE_CHECKING:
    from core.hub import Hub
    from core.service import Core

log = logging.getLogger("herald.subscription")

CATCH_UP_PAGE = 1000
#: A cursor no document can be behind: forces a fresh document read before a drop check.
MAX_SEQ = 1 << 62


class DirectWriter(Protocol):
    """A streaming connection's write side, for the hub's fan-out fast path: the hub
    hands it the shared bytes of a batch directly, with no call through the
    Subscription and its Sink (three Python call layers per delivery, which at 1,000
    subscribers cost more than the write)."""

    encoding: Encoding

    def write(self, data: bytes) -> bool:
        """Send, straight to the socket when nothing is queued; False when too slow."""

    def on_slow(self) -> None:
        """Disconnect a subscriber whose buffer overflowed (it resumes with its cursor)."""


class Sink(Protocol):
    """Where a Subscription delivers: write-only, never awaited."""

    @property
    def transport_name(self) -> str:
        """The transport's name, for the delivery metrics."""

    @property
    def writer(self) -> DirectWriter | None:
        """The socket the hub may write live batches to directly, when there is one."""

    def send_events(self, batch: list[Encoded]) -> None:
        """Write events (seq-ordered, no duplicates, no gaps)."""

    def send_reset(self, execution: Execution) -> None:
        """Tell the client events were dropped by retention; the cursor jumps."""

    def end_stream(self) -> None:
        """The terminal event was written: end the stream normally."""


def next_run(last: int, events: Iterable[Encoded]) -> tuple[list[Encoded], list[Encoded]]:
    """Split ``events`` into the contiguous run that follows ``last`` and what lies past
    a hole, both in seq order, without duplicates and without anything at or below
    ``last``. ``([], rest)`` means the next event is missing (read the store)."""
    by_seq: dict[int, Encoded] = {}
    for event in events:
        if event.seq > last and event.seq not in by_seq:
            by_seq[event.seq] = event
    ordered = [by_seq[seq] for seq in sorted(by_seq)]
    run = 0
    while run < len(ordered) and ordered[run].seq == last + 1 + run:
        run += 1
    return ordered[:run], ordered[run:]


def is_next_run(last: int, batch: list[Encoded]) -> bool:
    """Whether ``batch`` is exactly seqs ``last + 1 .. last + len(batch)`` in order."""
    return all(event.seq == i for i, event in enumerate(batch, start=last + 1))


class Subscription:
    """One client's position in one execution's stream."""

    __slots__ = (
        "_catching",
        "_closed",
        "_hub",
        "_known_last",
        "_pending",
        "_task",
        "core",
        "execution_id",
        "last",
        "limit",
        "sink",
        "writer",
    )

    def __init__(self, core: Core, execution_id: str, after: int, sink: Sink, limit: int = CATCH_UP_PAGE):
        self.core = core
        self.execution_id = execution_id
        self.last = after
        self.sink = sink
        #: The hub writes live batches straight to this when the sink has one.
        self.writer = sink.writer
        self.limit = limit
        self._catching = True
        self._pending: list[Encoded] = []
        self._hub: Hub | None = None
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._known_last = after  # the document's last_seq seen at start()

    async def start(self, execution: Execution) -> None:
        """Join the hub, replay from the store, then go live. ``execution`` is the
        document the caller authorised against (it tells a finished stream)."""
        hubs = self.core.hubs
        warm = hubs.warm(self.execution_id)  # asked before joining: joining makes a hub
        self._hub = hubs.join(self.execution_id, self)
        if execution.status.terminal and self.last >= execution.last_seq:
            self._finish()
            return
        self._known_last = execution.last_seq
        began, first = time.monotonic(), self.last
        outcome = await self._catch_up(from_memory=warm)
        metrics = self.core.metrics
        metrics.resumes.labels("reset" if self.last < first else outcome).inc()
        metrics.replay_seconds.observe(time.monotonic() - began)
        metrics.replay_events.observe(max(0, self.last - first))

    async def _catch_up(self, from_memory: bool = False) -> str:
        """Replay until caught up — from this process's tail when it holds everything
        up to the document's ``last_seq`` (``from_memory``), else from the store — then
        drain what arrived live meanwhile. Returns where the replay came from."""
        store = self.core.store
        outcome = "from_memory"
        while not self._closed:
            if from_memory:
                held = self.core.hubs.tails.covering(
                    self.execution_id, self.last, self._known_last, self.limit, self.core.retained_since()
                )
                if held is not None:
                    if held:
                        self._deliver(held)
                        self.core.metrics.delivered[self.sink.transport_name] += len(held)
                    if self.last >= self._known_last or self._closed:
                        break
                    continue
                from_memory = False
            outcome = "from_store"
            events = await store.events_after(self.execution_id, self.last, self.limit)
            if events and events[0].seq > self.last + 1:
                await self._reset()
                continue
            if not events:
                if await self._dropped_everything():
                    await self._reset()
                    continue
                break
            self._deliver(self.core.encoded.encode(self.execution_id, events))
            self.core.metrics.delivered[self.sink.transport_name] += len(events)
            if len(events) < self.limit or self._closed:
                break
        if self._closed:
            return outcome
        pending, self._pending = self._pending, []
        self._catching = False
        if pending:
            self.on_live(pending)
        return outcome

    async def _dropped_everything(self) -> bool:
        """No event after the cursor: retention dropped them, or there are none yet.
        Checked against a fresh document, then the log again, so that an event
        published in between is not mistaken for a drop."""
        if self._known_last <= self.last:
            # The caller's document, read before the log: nothing was stored after the
            # cursor then, so nothing can have been dropped (the usual held poll or
            # stream at the head; saves a store read per request).
            return False
        doc = await self.core.store.get_execution(self.execution_id)
        if doc is None or doc.last_seq <= self.last:
            return False
        again = await self.core.store.events_after(self.execution_id, self.last, 1)
        return not again or again[0].seq > self.last + 1

    async def _reset(self) -> None:
        doc = await self.core.store.get_execution(self.execution_id)
        if doc is None:
            raise not_found()
        self.last = doc.last_seq
        self._pending = [e for e in self._pending if e.seq > self.last]
        self.sink.send_reset(doc)
        if doc.status.terminal:
            self._finish()

    def _deliver(self, batch: list[Encoded]) -> None:
        self.last = batch[-1].seq
        self.sink.send_events(batch)
        if batch[-1].terminal:
            self._finish()

    @property
    def live(self) -> bool:
        """Caught up: what it delivers now comes from the hub, as it is published."""
        return not self._catching

    def take_fast(self, before: int, last: int) -> DirectWriter | None:
        """The hub's fast path: when this subscription is live, has a direct writer and
        its cursor is ``before``, move the cursor to ``last`` and return the writer the
        hub sends the batch's shared bytes to; else None (the hub calls ``on_live``)."""
        writer = self.writer
        if writer is None or self.last != before or self._catching:
            return None
        self.last = last
        return writer

    def on_live(self, batch: list[Encoded]) -> None:
        """Called by the hub with a fan-out batch; delivers what follows the cursor."""
        if self._catching:
            self._pending.extend(batch)
            return
        if is_next_run(self.last, batch):
            self._deliver(batch)
            return
        run, rest = next_run(self.last, batch)
        if run:
            self._deliver(run)
        if rest and not self._closed:
            # A hole: something was stored that the broker has not brought (yet).
            self._catching = True
            self._pending.extend(rest)
            self._task = asyncio.ensure_future(self._recover())

    def resync(self) -> None:
        """Re-read the store from the cursor (the broker may have lost messages)."""
        if self._closed or self._catching:
            return
        self._catching = True
        self._task = asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        self._known_last = MAX_SEQ  # no document read here: check drops against a fresh one
        try:
            await self._catch_up()
        except (StoreUnavailable, HeraldError) as exc:
            log.warning("catch-up of %s failed: %s; retrying", self.execution_id, exc)
            await asyncio.sleep(1)
            if not self._closed:
                self._task = asyncio.ensure_future(self._recover())

    def _finish(self) -> None:
        self.close()
        self.sink.end_stream()

    def close(self) -> None:
        """Leave the hub; idempotent, called on every exit path."""
        if self._closed:
            return
        self._closed = True
        if self._hub is not None:
            self.core.hubs.leave(self._hub, self)
        if self._task is not None and not self._task.done() and self._task is not asyncio.current_task():
            self._task.cancel()

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
