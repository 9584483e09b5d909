"""Hubs: this process's subscribers of each execution, fed by the broker.

A ``Hub`` receives an execution's freshly stored events from the broker, encodes them
once (``EncodedCache``) and fans them out to its subscriptions, gathering events that
arrive close together into one write per subscriber (its coalescing window; the
window's rule is the pure ``core.timing.coalesce_window_end``). ``Hubs`` makes one hub
per followed execution (one broker subscription each) and drops it a moment after its
last subscriber left.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from core.broker.base import Broker
from core.codec import Encoded, EncodedCache, frame_events
from core.errors import StoreUnavailable
from core.metrics import Metrics
from core.model import Event
from core.store.base import Store
from core.tail import Tails
from core.timing import coalesce_window_end
from core.transport import Encoding

if TYPE_CHECKING:
    from core.subscription import Subscription

#: Longest a hub holds live events after a slow fan-out, seconds.
MAX_HOLD = 0.025
#: Seconds a hub without subscribers is kept for the next poll before it is dropped.
HUB_LINGER = 1.0
#: Events read per execution and second while the broker is down.
READ_STORE_PAGE = 1000
#: Seconds a hub follows an execution before its tail is trusted for resumes (its broker
#: subscription is in effect well within it).
WARMUP = 1.0


class Hub:
    """This process's subscribers of one execution, and its coalescing window.

    The first batch after a quiet period is written at once; batches that follow
    within ``window`` seconds are gathered and written together when it closes. So a
    lone token is never delayed, and a burst costs one write per window per subscriber.
    Under load the window stretches (``coalesce_window_end``): without it a fan-out
    slower than the publish rate queues without bound.

    Batches gathered from several broker messages may be out of seq order (several
    processes publish to one execution); they are sorted before the fan-out, and the
    fast path takes only a batch that is one contiguous run.
    """

    __slots__ = (
        "_last_start",
        "_pending",
        "_timer",
        "_unsorted",
        "_window_until",
        "born",
        "execution_id",
        "hubs",
        "subs",
    )

    def __init__(self, hubs: Hubs, execution_id: str) -> None:
        self.hubs = hubs
        self.execution_id = execution_id
        #: Since when (monotonic) everything published of it reaches this hub.
        self.born = time.monotonic()
        self.subs: set[Subscription] = set()
        self._pending: list[Encoded] = []
        self._unsorted = False
        self._timer: asyncio.TimerHandle | None = None
        self._window_until = 0.0
        self._last_start = 0.0

    def on_events(self, events: list[Event]) -> None:
        """Broker listener: events just stored (one append's, in seq order)."""
        batch = self.hubs.encoded.encode(self.execution_id, events)
        self.hubs.tails.add(self.execution_id, batch)
        window = self.hubs.coalesce_window
        if window <= 0:
            self._fan_out(batch)
            return
        loop = asyncio.get_running_loop()
        if self._timer is None and loop.time() >= self._window_until:
            self._write(loop, batch, window)
            return
        if self._pending and batch[0].seq <= self._pending[-1].seq:
            self._unsorted = True
        self._pending.extend(batch)
        if self._timer is None:
            self._timer = loop.call_at(self._window_until, self._flush)

    def _flush(self) -> None:
        self._timer = None
        batch, self._pending = self._pending, []
        if self._unsorted:
            self._unsorted = False
            batch = sorted({e.seq: e for e in batch}.values(), key=lambda e: e.seq)
        if batch:
            self._write(asyncio.get_running_loop(), batch, self.hubs.coalesce_window)

    def _write(self, loop: asyncio.AbstractEventLoop, batch: list[Encoded], window: float) -> None:
        """Fan out now and open the next window (stretched after a slow fan-out)."""
        start = loop.time()
        gap, self._last_start = start - self._last_start, start
        self._window_until = start + window
        self._fan_out(batch)
        took = loop.time() - start
        self._window_until = coalesce_window_end(start=start, took=took, gap=gap, window=window, max_hold=MAX_HOLD)

    def _fan_out(self, batch: list[Encoded]) -> None:
        """Hand ``batch`` to every subscriber.

        The fast path: a live subscriber that is exactly one batch behind and has a
        direct writer gets the batch's bytes (built once per encoding) sent straight
        to its socket here, inline. Everyone else, and every batch that ends the
        stream, goes through ``Subscription.on_live``, which owns the ordering rules.
        """
        before = batch[0].seq - 1
        last = batch[-1].seq
        fast = not batch[-1].terminal and last - before == len(batch)
        frames: dict[Encoding, bytes] = {}
        per_transport: dict[str, int] = {}
        for sub in tuple(self.subs):
            writer = sub.take_fast(before, last) if fast else None
            transport = sub.sink.transport_name
            per_transport[transport] = per_transport.get(transport, 0) + 1
            if writer is None:
                sub.on_live(batch)
                continue
            encoding = writer.encoding
            data = frames.get(encoding)
            if data is None:
                data = frames[encoding] = frame_events(batch, encoding)
            if not writer.write(data):
                writer.on_slow()
        if per_transport:
            metrics = self.hubs.metrics
            latency = time.time() - batch[0].event.timestamp
            n = len(batch)
            for transport, count in per_transport.items():
                metrics.delivered[transport] += count * n
                metrics.latency.labels(transport).observe(latency)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Hubs:
    """One hub per execution followed in this process; each is one broker subscription."""

    def __init__(self, broker: Broker, encoded: EncodedCache, metrics: Metrics, coalesce_window: float) -> None:
        self.broker = broker
        self.encoded = encoded
        self.metrics = metrics
        self.coalesce_window = coalesce_window
        self.linger = HUB_LINGER
        #: The newest events of each execution heard here, for resumes without a store read.
        self.tails = Tails()
        self._hubs: dict[str, Hub] = {}
        #: Hubs with no subscriber, and since when (monotonic); dropped after ``linger``.
        self._idle: dict[str, float] = {}

    def __contains__(self, execution_id: object) -> bool:
        return execution_id in self._hubs

    def get(self, execution_id: str) -> Hub | None:
        return self._hubs.get(execution_id)

    def join(self, execution_id: str, sub: Subscription) -> Hub:
        """The execution's hub (made, and subscribed at the broker, on first use)."""
        self._idle.pop(execution_id, None)
        hub = self._hubs.get(execution_id)
        if hub is None:
            hub = self._hubs[execution_id] = Hub(self, execution_id)
            self.broker.subscribe(execution_id, hub.on_events)
        hub.subs.add(sub)
        return hub

    def leave(self, hub: Hub, sub: Subscription) -> None:
        hub.subs.discard(sub)
        if not hub.subs:
            # Kept a moment (the shared timer drops it): a long-poller leaves and
            # comes back with its next poll within milliseconds, and each hub costs a
            # broker subscription (a Redis round trip) to make and to drop.
            self._idle[hub.execution_id] = time.monotonic()

    def drop_idle(self, mono: float) -> None:
        """Drop hubs that have had no subscriber for ``linger`` seconds."""
        for execution_id, since in list(self._idle.items()):
            hub = self._hubs.get(execution_id)
            if hub is None or hub.subs:
                del self._idle[execution_id]
            elif mono - since >= self.linger:
                del self._idle[execution_id]
                del self._hubs[execution_id]
                hub.cancel()
                self.broker.unsubscribe(execution_id)

    def deliver(self, execution_id: str, events: list[Event]) -> None:
        """Events this process just stored: to its own subscribers, at once (and to the
        execution's tail, followed or not)."""
        hub = self._hubs.get(execution_id)
        if hub is not None:
            hub.on_events(events)
        else:
            self.tails.add(execution_id, self.encoded.encode(execution_id, events))

    def warm(self, execution_id: str) -> bool:
        """Whether this process's tail of ``execution_id`` holds every event stored until
        now that it holds the seq of: always with no other process publishing; with
        several, only when a hub has followed it (subscribed at the broker) for
        ``WARMUP`` seconds and the broker is healthy."""
        if not self.broker.shared:
            return True
        hub = self._hubs.get(execution_id)
        return hub is not None and self.broker.healthy and time.monotonic() - hub.born >= WARMUP

    async def read_store(self, store: Store) -> None:
        """While the broker is down: read what every followed execution has after its
        most advanced subscriber, once, and fan it out as if the broker had brought it
        (subscribers further behind see a hole and read the store themselves)."""
        for execution_id, hub in list(self._hubs.items()):
            if not hub.subs:
                continue
            after = max(sub.last for sub in hub.subs)
            try:
                events = await store.events_after(execution_id, after, READ_STORE_PAGE)
            except StoreUnavailable:
                return
            if events and self._hubs.get(execution_id) is hub:
                hub.on_events(events)

    def resync(self) -> None:
        """Every subscription re-reads the store: called after a broker outage (whose
        messages are lost: no tail is known complete, every hub is cold again)."""
        self.tails.forget()
        now = time.monotonic()
        for hub in list(self._hubs.values()):
            hub.born = now
            for sub in tuple(hub.subs):
                sub.resync()

    def stop(self) -> None:
        for hub in self._hubs.values():
            hub.cancel()
