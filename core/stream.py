"""Publishing and following: the one place that owns delivery order.

``Core.publish`` group-commits: concurrent publishes to one execution are appended by
one ``store.append`` (one seq range, one insert), then handed to the broker in seq
order. ``Core.follow`` returns a ``Subscription``, which:

1. joins the execution's ``Hub`` *first* (live events are buffered while it catches up),
2. reads ``store.events_after(cursor)`` until it has caught up,
3. then takes live events, dropping any with ``seq <= last`` and going back to the
   store whenever it sees a gap (``seq > last + 1``).

Sequences have no gaps, so that rule gives exactly-once, in-order delivery on every
transport. A transport is a ``Sink``: it only frames and writes what it is given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from core.auth import Authenticator
from core.broker.base import Broker
from core.codec import Encoded, EncodedCache, batch_bytes
from core.errors import ErrorCode, HeraldError, StoreUnavailable, bad_request, not_found, store_unavailable
from core.metrics import Metrics
from core.model import TERMINAL_EVENTS, Event, Execution, PublishItem, new_execution_id
from core.settings import Settings
from core.store.base import Store
from core.tickets import TicketBook
from core.timing import heartbeat_due

log = logging.getLogger("herald.stream")

CATCH_UP_PAGE = 1000
#: Longest a hub holds live events after a slow fan-out (see ``Hub``), seconds.
MAX_HOLD = 0.025
#: Seconds a hub without subscribers is kept for the next poll before it is dropped.
HUB_LINGER = 1.0
#: The shared timer's period at most (heartbeats, token expiry, long-poll deadlines).
TICK = 1.0
#: With at least this many long-polls held in the process, an answer to a live event
#: waits up to ``LONGPOLL_HOLD`` seconds so that events published meanwhile share it.
LONGPOLL_BATCH_FROM = 100
LONGPOLL_HOLD = 0.025
#: Broker channel of execution changes (no execution id can take this name).
CHANGES_CHANNEL = "_changes"
#: Events that move what a dashboard row or a dispatcher cares about.
CHANGE_EVENTS = frozenset({"status", "progress", *TERMINAL_EVENTS})


class Sink(Protocol):
    """What a transport offers a Subscription: write-only, never awaited."""

    transport: str

    def send_events(self, batch: list[Encoded]) -> None:
        """Write events (seq-ordered, no duplicates, no gaps)."""

    def send_reset(self, execution: Execution) -> None:
        """Tell the client events were dropped by retention; the cursor jumps."""

    def end_stream(self) -> None:
        """The terminal event was written: end the stream normally."""


class DirectWriter(Protocol):
    """A streaming sink's socket, for the hub's fan-out fast path (``FastWriter``):
    the hub hands it the shared bytes of a batch directly, with no call through the
    Subscription and the Sink (three Python call layers per delivery, which at 1,000
    subscribers cost more than the write)."""

    encoding: str

    def write(self, data: bytes) -> bool:
        """Send, straight to the socket when nothing is queued; False when too slow."""

    def on_slow(self) -> None:
        """Disconnect a subscriber whose buffer overflowed (it resumes with its cursor)."""


MAX_SEQ = 1 << 62


class Subscription:
    """One client's position in one execution's stream."""

    __slots__ = (
        "core",
        "execution_id",
        "last",
        "sink",
        "writer",
        "_catching",
        "_pending",
        "_hub",
        "_closed",
        "_task",
        "limit",
        "_known_last",
    )

    def __init__(self, core: Core, execution_id: str, after: int, sink: Sink, limit: int = CATCH_UP_PAGE):
        self.core = core
        self.execution_id = execution_id
        self.last = after
        self.sink = sink
        #: The hub writes live batches straight to this when the sink has one.
        self.writer: DirectWriter | None = getattr(sink, "writer", None)
        self.limit = limit
        self._catching = True
        self._pending: list[Encoded] = []
        self._hub: Hub | None = None
        self._closed = False
        self._task: asyncio.Task | None = None
        self._known_last = after  # the document's last_seq seen at start()

    async def start(self, execution: Execution) -> None:
        """Join the hub, replay from the store, then go live. ``execution`` is the
        document the caller authorised against (it tells a finished stream)."""
        self._hub = self.core._hub(self.execution_id)
        self._hub.add(self)
        if execution.status.terminal and self.last >= execution.last_seq:
            self._finish()
            return
        self._known_last = execution.last_seq
        await self._catch_up()

    async def _catch_up(self) -> None:
        """Read the store until caught up, then drain what arrived live meanwhile."""
        store = self.core.store
        while not self._closed:
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
            self.core.metrics.delivered[self.sink.transport] += len(events)
            if len(events) < self.limit or self._closed:
                break
        if self._closed:
            return
        pending, self._pending = self._pending, []
        self._catching = False
        if pending:
            self.on_live(pending)

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

    def on_live(self, batch: list[Encoded]) -> None:
        """Called by the hub with a fan-out batch (seq order)."""
        if self._catching:
            self._pending.extend(batch)
            return
        first = batch[0].seq
        if first == self.last + 1:
            self._deliver(batch)
            return
        if first <= self.last:
            batch = [e for e in batch if e.seq > self.last]
            if not batch:
                return
            if batch[0].seq == self.last + 1:
                self._deliver(batch)
                return
        # A gap: something was published that the broker did not bring us.
        self._catching = True
        self._pending.extend(batch)
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
            self._hub.discard(self)
        if self._task is not None and not self._task.done() and self._task is not asyncio.current_task():
            self._task.cancel()

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


class Hub:
    """This process's subscribers of one execution, and its coalescing window.

    The first batch after a quiet period is written at once; batches that follow
    within ``window`` seconds are gathered and written together when it closes. So a
    lone token is never delayed, and a burst costs one write per window per subscriber.

    Under load the window stretches: after a fan-out that took ``T`` > ``window`` (many
    subscribers) and began less than ``2T`` after the one before (fan-outs back to back,
    the hub is falling behind), what arrives in the next ``min(T, MAX_HOLD)`` is
    gathered too. The
    last subscriber of that fan-out already waited ``T``; holding the next batch as
    long at most doubles it, while every subscriber gets one write (one packet, one
    system call) for several events instead of one per event — without it a fan-out
    slower than the publish rate queues without bound.
    """

    __slots__ = ("core", "execution_id", "subs", "_pending", "_timer", "_window_until", "_last_start")

    def __init__(self, core: Core, execution_id: str) -> None:
        self.core = core
        self.execution_id = execution_id
        self.subs: set[Subscription] = set()
        self._pending: list[Encoded] = []
        self._timer: asyncio.TimerHandle | None = None
        self._window_until = 0.0
        self._last_start = 0.0

    def add(self, sub: Subscription) -> None:
        self.subs.add(sub)

    def discard(self, sub: Subscription) -> None:
        self.subs.discard(sub)
        if not self.subs:
            # Kept a moment (the shared timer drops it): a long-poller leaves and
            # comes back with its next poll within milliseconds, and each hub costs a
            # broker subscription (a Redis round trip) to make and to drop.
            self.core._idle_hubs[self.execution_id] = time.monotonic()

    def on_events(self, events: list[Event]) -> None:
        """Broker listener: events just stored, in seq order."""
        batch = self.core.encoded.encode(self.execution_id, events)
        window = self.core.coalesce_window
        if window <= 0:
            self._fan_out(batch)
            return
        loop = asyncio.get_running_loop()
        if self._timer is None and loop.time() >= self._window_until:
            self._write(loop, batch, window)
            return
        self._pending.extend(batch)
        if self._timer is None:
            self._timer = loop.call_at(self._window_until, self._flush)

    def _flush(self) -> None:
        self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            self._write(asyncio.get_running_loop(), batch, self.core.coalesce_window)

    def _write(self, loop: asyncio.AbstractEventLoop, batch: list[Encoded], window: float) -> None:
        """Fan out now and open the next window (stretched after a slow fan-out)."""
        start = loop.time()
        gap, self._last_start = start - self._last_start, start
        self._window_until = start + window
        self._fan_out(batch)
        took = loop.time() - start
        if took > window and gap < 2 * took:  # fan-outs back to back: falling behind
            self._window_until = start + took + min(took, MAX_HOLD)

    def _fan_out(self, batch: list[Encoded]) -> None:
        """Hand ``batch`` to every subscriber.

        The fast path: a live subscriber that is exactly one batch behind and has a
        ``DirectWriter`` gets the batch's bytes (built once per encoding) sent straight
        to its socket here, inline. Everyone else, and every batch that ends the
        stream, goes through ``Subscription.on_live``, which owns the ordering rules.
        """
        before = batch[0].seq - 1
        last = batch[-1].seq
        fast = not batch[-1].terminal
        frames: dict[str, bytes] = {}
        direct: dict[str, int] = {}  # deliveries by encoding on the fast path
        names: dict[str, str] = {}  # encoding -> transport, for the metrics
        per_transport: dict[str, int] = {}  # ... and by transport on the other
        for sub in tuple(self.subs):
            writer = sub.writer
            if writer is None or not fast or sub.last != before or sub._catching:
                sub.on_live(batch)
                t = sub.sink.transport
                per_transport[t] = per_transport.get(t, 0) + 1
                continue
            sub.last = last
            encoding = writer.encoding
            data = frames.get(encoding)
            if data is None:
                data = frames[encoding] = batch_bytes(batch, encoding)
                direct[encoding] = 0
                names[encoding] = sub.sink.transport
            direct[encoding] += 1
            if not writer.write(data):
                writer.on_slow()
        for encoding, count in direct.items():
            t = names[encoding]
            per_transport[t] = per_transport.get(t, 0) + count
        if per_transport:
            delivered = self.core.metrics.delivered
            latency = time.time() - batch[0].event.timestamp
            n = len(batch)
            for t, count in per_transport.items():
                delivered[t] += count * n
                self.core.metrics.latency.labels(t).observe(latency)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _AppendQueue:
    """Publishes to one execution waiting for the one append in flight."""

    __slots__ = ("waiting", "busy")

    def __init__(self) -> None:
        self.waiting: list[tuple[list[PublishItem], asyncio.Future]] = []
        self.busy = False


class Connection(Protocol):
    """An open stream, as the shared timer sees it."""

    transport: str
    expires_at: float

    def heartbeat(self, now: float) -> None:
        """Send a heartbeat (and close the connection if the peer went silent)."""

    def expire(self) -> None:
        """The token expired: end the stream with ``token_expired``."""

    def going_away(self) -> None:
        """The server is shutting down: end the stream so the client resumes elsewhere."""


class Core:
    """The domain service behind every handler and transport."""

    def __init__(self, settings: Settings, store: Store, broker: Broker, authenticator: Authenticator):
        self.settings = settings
        self.store = store
        self.broker = broker
        self.auth = authenticator
        self.tickets = TicketBook()
        self.metrics = Metrics()
        self.coalesce_window = settings.coalesce_ms / 1000.0
        self._hubs: dict[str, Hub] = {}
        #: Hubs with no subscriber, and since when (monotonic); dropped after ``hub_linger``.
        self._idle_hubs: dict[str, float] = {}
        self.hub_linger = HUB_LINGER
        self._queues: dict[str, _AppendQueue] = {}
        self._owners: dict[str, Execution] = {}
        #: Events encoded once for the hub and every catch-up (long-poll re-polls).
        self.encoded = EncodedCache()
        self.connections: set[Connection] = set()
        self._held_answers: list[Callable[[], None]] = []
        self.longpoll_batch_from = LONGPOLL_BATCH_FROM
        self._held_answers_timer: asyncio.TimerHandle | None = None
        self._last_heartbeat = time.monotonic()
        self._timer_task: asyncio.Task | None = None
        self._prune_task: asyncio.Task | None = None
        self.draining = False
        #: Called with (execution, events) in every process, through the broker, when
        #: an execution is created (events == []) or its status, progress or stage
        #: moves (events == [the newest event]); the dispatcher and the feed listen.
        self.observers: list[Any] = []

    # --- life cycle -------------------------------------------------------------
    async def start(self) -> None:
        await self.store.start()
        if hasattr(self.broker, "on_resync"):
            self.broker.on_resync = self.resync
        await self.broker.start()
        self.broker.subscribe(CHANGES_CHANNEL, self._on_changes)
        self._timer_task = asyncio.ensure_future(self._tick_forever())
        self._prune_task = asyncio.ensure_future(self._prune_forever())

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout``) for the publishes in flight to be stored and
        answered, so a shutdown never turns an accepted publish into a 500."""
        deadline = time.monotonic() + timeout
        while self._queues and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.draining = True
        if self._held_answers_timer is not None:
            self._held_answers_timer.cancel()
            self._answer_held()
        for task in (self._timer_task, self._prune_task):
            if task is not None:
                task.cancel()
        for hub in list(self._hubs.values()):
            hub.cancel()
        await self.broker.close()
        await self.store.close()

    # --- executions ---------------------------------------------------------------
    async def create_execution(self, owner: str, kind: str, input_: dict[str, Any], queue: str | None) -> Execution:
        now = time.time()
        execution = Execution(
            id=new_execution_id(), owner=owner, kind=kind, queue=queue, input=input_, created_at=now, updated_at=now
        )
        await self._guard(self.store.create_execution(execution))
        await self._announce_change(execution, None)
        return execution

    async def get_execution(self, execution_id: str) -> Execution:
        """The document, or 404."""
        found = await self._guard(self.store.get_execution(execution_id))
        if found is None:
            raise not_found()
        return found

    async def execution_for_auth(self, execution_id: str) -> Execution:
        """The document for a permission check. Owner and queue never change, so a
        cached copy serves publishes without a store round trip."""
        cached = self._owners.get(execution_id)
        if cached is not None:
            return cached
        found = await self.get_execution(execution_id)
        if len(self._owners) > 100_000:
            self._owners.clear()
        self._owners[execution_id] = found
        return found

    async def list_executions(self, **query: Any) -> list[Execution]:
        return await self._guard(self.store.list_executions(**query))

    # --- publishing -----------------------------------------------------------------
    def check_size(self, items: list[PublishItem]) -> None:
        """413 for an event whose envelope would exceed ``max_event_bytes``."""
        from core.codec import dumps

        limit = self.settings.max_event_bytes
        for i, item in enumerate(items):
            size = len(dumps(item.data).encode()) + len(item.event) + 160
            if size > limit:
                raise HeraldError(
                    ErrorCode.EVENT_TOO_LARGE,
                    413,
                    f"event is {size} bytes; the limit is {limit}",
                    {"index": i, "max_event_bytes": limit},
                )

    async def publish(self, execution_id: str, items: list[PublishItem]) -> list[int]:
        """Append ``items`` durably and fan them out; return each item's seq.

        Concurrent calls for one execution are gathered into one store append (group
        commit). Returns only after the store acknowledged the write.
        """
        self.check_size(items)
        queue = self._queues.get(execution_id)
        if queue is None:
            queue = self._queues[execution_id] = _AppendQueue()
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        queue.waiting.append((items, future))
        if not queue.busy:
            queue.busy = True
            asyncio.ensure_future(self._drain(execution_id, queue))
        return await future

    async def _drain(self, execution_id: str, queue: _AppendQueue) -> None:
        try:
            while queue.waiting:
                group, queue.waiting = queue.waiting, []
                if len(group) == 1:
                    await self._append_one(execution_id, *group[0])
                    continue
                merged = [item for items, _ in group for item in items]
                try:
                    plan = await self._guard(self.store.append(execution_id, merged))
                except HeraldError:
                    # One request of the group is refused (a publish after the
                    # terminal event): append them one by one for per-request answers.
                    for items, future in group:
                        await self._append_one(execution_id, items, future)
                    continue
                at = 0
                for items, future in group:
                    if not future.done():
                        future.set_result(plan.seqs[at : at + len(items)])
                    at += len(items)
                await self._announce(plan.execution, plan.events)
        finally:
            queue.busy = False
            if not queue.waiting:
                self._queues.pop(execution_id, None)

    async def _append_one(self, execution_id: str, items: list[PublishItem], future: asyncio.Future) -> None:
        try:
            plan = await self._guard(self.store.append(execution_id, items))
        except Exception as exc:  # handed to the caller, who renders it
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(plan.seqs)
        await self._announce(plan.execution, plan.events)

    async def _announce(self, execution: Execution, events: list[Event]) -> None:
        """Hand freshly stored events to the broker and the observers."""
        if not events:
            return
        self.metrics.published.inc(len(events))
        try:
            await self.broker.publish(execution.id, events)
        except Exception:  # the events are stored: subscribers catch up from the store
            log.exception("broker publish failed for %s", execution.id)
        if any(e.event in CHANGE_EVENTS for e in events):
            await self._announce_change(execution, events[-1])

    async def _announce_change(self, execution: Execution, last: Event | None) -> None:
        """Tell the observers of every process that an execution was created or its
        status, progress or stage moved. It goes through the broker (with Redis, to
        all processes, this one included); tokens and logs are not changes, so a token
        stream costs the change channel nothing."""
        if not self.observers:
            return
        change = Event(
            execution.id,
            execution.last_seq,
            "change",
            {"execution": execution.to_record(), "last": None if last is None else dataclasses.asdict(last)},
            time.time(),
        )
        try:
            await self.broker.publish(CHANGES_CHANNEL, [change])
        except Exception:  # keep this process's observers informed at least
            log.warning("broker unavailable for the change channel; local observers only")
            self._on_changes([change])

    def _on_changes(self, changes: list[Event]) -> None:
        """Broker listener of the change channel: call observers(execution, events)."""
        for change in changes:
            execution = Execution.from_record(change.data["execution"])
            last = change.data["last"]
            events = [] if last is None else [Event(**last)]
            for observer in self.observers:
                try:
                    observer(execution, events)
                except Exception:
                    log.exception("an execution observer failed")

    async def publish_server_event(self, execution_id: str, event: str, data: Any) -> list[int]:
        """Publish an event on the server's own behalf (cancel, timeouts)."""
        return await self.publish(execution_id, [PublishItem(event, data)])

    async def _guard(self, awaitable):
        """Map a store outage to 503 with ``Retry-After``."""
        try:
            return await awaitable
        except StoreUnavailable as exc:
            raise store_unavailable(str(exc) or "the store did not answer") from None

    # --- following --------------------------------------------------------------
    def follow(self, execution_id: str, after: int, sink: Sink, limit: int = CATCH_UP_PAGE) -> Subscription:
        """A subscription; call ``await sub.start(execution)``, ``close()`` on exit."""
        return Subscription(self, execution_id, after, sink, limit)

    @staticmethod
    def check_cursor(execution: Execution, after: int) -> None:
        if after < 0:
            raise bad_request("after must be a non-negative integer", ErrorCode.CURSOR_OUT_OF_RANGE)
        if after > execution.last_seq:
            raise bad_request(
                f"after={after} is past the newest event ({execution.last_seq})",
                ErrorCode.CURSOR_OUT_OF_RANGE,
                last_seq=execution.last_seq,
            )

    def _hub(self, execution_id: str) -> Hub:
        self._idle_hubs.pop(execution_id, None)
        hub = self._hubs.get(execution_id)
        if hub is None:
            hub = self._hubs[execution_id] = Hub(self, execution_id)
            self.broker.subscribe(execution_id, hub.on_events)
        return hub

    def _drop_idle_hubs(self, mono: float) -> None:
        for execution_id, since in list(self._idle_hubs.items()):
            hub = self._hubs.get(execution_id)
            if hub is None or hub.subs:
                del self._idle_hubs[execution_id]
            elif mono - since >= self.hub_linger:
                del self._idle_hubs[execution_id]
                self._drop_hub(hub)

    def _drop_hub(self, hub: Hub) -> None:
        if self._hubs.get(hub.execution_id) is hub:
            del self._hubs[hub.execution_id]
            hub.cancel()
            self.broker.unsubscribe(hub.execution_id)

    def resync(self) -> None:
        """Every subscription re-reads the store: called after a broker outage."""
        for hub in list(self._hubs.values()):
            for sub in tuple(hub.subs):
                sub.resync()

    # --- connections, heartbeats, expiry ---------------------------------------------
    def admit(self, connection: Connection) -> bool:
        """Register an open stream; False when the connection limit is reached."""
        if len(self.connections) >= self.settings.max_connections:
            return False
        self.connections.add(connection)
        self.metrics.connections[connection.transport] += 1
        return True

    def release(self, connection: Connection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            self.metrics.connections[connection.transport] -= 1

    def answer_soon(self, answer: Callable[[], None]) -> None:
        """Run ``answer`` (a long-poll's answer to a live event) now, or, with many
        polls held, up to ``LONGPOLL_HOLD`` later together with the others.

        A poll is a whole HTTP request: 1,000 pollers woken by one event cost ~0.5 s of
        server time to answer and to take back, and every event published during that
        time wakes them all again, one event per answer. Holding the answers 25 ms
        (a twentieth of that cost) lets events published together share one answer,
        as the hub coalesces stream writes after a slow fan-out. With few polls held
        nothing waits.
        """
        if self.metrics.connections["longpoll"] < self.longpoll_batch_from:
            answer()
            return
        self._held_answers.append(answer)
        if self._held_answers_timer is None:
            self._held_answers_timer = asyncio.get_running_loop().call_later(LONGPOLL_HOLD, self._answer_held)

    def _answer_held(self) -> None:
        self._held_answers_timer = None
        answers, self._held_answers = self._held_answers, []
        for answer in answers:
            answer()

    async def _tick_forever(self) -> None:
        """One shared timer for every connection: heartbeats and token expiry."""
        while True:
            await asyncio.sleep(min(TICK, self.settings.heartbeat / 2))
            try:
                self._tick(time.time(), time.monotonic())
            except Exception:
                log.exception("heartbeat tick failed")

    def _tick(self, wall: float, mono: float) -> None:
        self._drop_idle_hubs(mono)
        expired = [c for c in self.connections if c.expires_at <= wall]
        for connection in expired:
            connection.expire()
        if heartbeat_due(last_sent=self._last_heartbeat, interval=self.settings.heartbeat, now=mono):
            self._last_heartbeat = mono
            for connection in tuple(self.connections):
                connection.heartbeat(mono)

    async def _prune_forever(self) -> None:
        """Retention for stores that do not expire events by themselves."""
        interval = max(1.0, min(60.0, self.settings.retention / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.prune(time.time() - self.settings.retention)
            except Exception as exc:
                log.warning("pruning events failed: %s", exc)
