"""``core.hub`` without sockets (issue 10): the fan-out fast path, the coalescing window
and idle hubs.

Real subscriptions of a real ``Core`` (embedded store, in-process broker) feed fake
sinks and direct writers that record what the hub hands them. The coalescing window
runs on an event loop whose clock moves only when the test advances it, so "within
the window" and "a fan-out that took 10 ms" are arithmetic, not the scheduling of a
loaded machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from core.auth import Authenticator
from core.broker.base import Listener
from core.broker.local import LocalBroker
from core.codec import Encoded, frame_events
from core.hub import HUB_LINGER, MAX_HOLD, Hub
from core.model import Event, Execution, PublishItem
from core.service import Core
from core.settings import Settings
from core.store.memory import MemoryStore
from core.subscription import Subscription
from core.timing import coalesce_window_end
from core.transport import Encoding

SCENARIO_TIMEOUT = 10.0
#: Where the manual clock starts (any value far from 0: the hub's first window is "long ago").
CLOCK_START = 1000.0


class ManualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` moves only by ``advance``: timers (the hub's
    window) fire when the test has moved the clock past them, never by themselves."""

    def __init__(self) -> None:
        super().__init__()
        self.now = CLOCK_START

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_TIMEOUT))


def run_on_manual_clock(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    # No wait_for here: its timeout would be on the frozen clock. pytest-timeout bounds it.
    with asyncio.Runner(loop_factory=ManualClockLoop) as runner:
        runner.run(scenario())


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait (bounded, real clock) for a subscription's store re-read to have delivered."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


def clock() -> ManualClockLoop:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, ManualClockLoop)
    return loop


async def settle() -> None:
    """Let callbacks that are due (a window's flush) run."""
    for _ in range(3):
        await asyncio.sleep(0)


class RecordingBroker(LocalBroker):
    """The in-process broker, with its subscriptions recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []

    def subscribe(self, channel: str, listener: Listener) -> None:
        self.subscribed.append(channel)
        super().subscribe(channel, listener)

    def unsubscribe(self, channel: str) -> None:
        self.unsubscribed.append(channel)
        super().unsubscribe(channel)


class RecordingWriter:
    """A DirectWriter: keeps each write; ``accepts`` False plays a peer too slow to
    read; ``takes`` seconds of the manual clock pass during each write (a slow fan-out)."""

    def __init__(self, encoding: Encoding = Encoding.WS, accepts: bool = True, takes: float = 0.0) -> None:
        self.encoding = encoding
        self.accepts = accepts
        self.takes = takes
        self.writes: list[bytes] = []
        self.slow = 0

    def write(self, data: bytes) -> bool:
        self.writes.append(data)
        if self.takes:
            clock().advance(self.takes)
        return self.accepts

    def on_slow(self) -> None:
        self.slow += 1


class RecordingSink:
    """A Sink recording what its subscription delivers (the hub's slow path)."""

    def __init__(self, writer: RecordingWriter | None = None, transport_name: str = "websocket") -> None:
        self.writer = writer
        self.transport_name = transport_name
        self.batches: list[list[int]] = []
        self.ends = 0

    def send_events(self, batch: list[Encoded]) -> None:
        self.batches.append([e.seq for e in batch])

    def send_reset(self, execution: Execution) -> None:
        raise AssertionError("no retention in these tests")

    def end_stream(self) -> None:
        self.ends += 1


def make_core(coalesce_ms: float = 0.0, broker: LocalBroker | None = None) -> Core:
    settings = Settings(coalesce_ms=coalesce_ms)
    return Core(settings, MemoryStore(), broker or LocalBroker(), Authenticator(secret="hub-tests"))


async def new_execution(core: Core) -> Execution:
    return await core.create_execution("alice", "chat", {}, None)


async def store(core: Core, execution_id: str, count: int, event: str = "token") -> list[Event]:
    """Append events to the store only: the test hands them to the hub itself."""
    data = {"text": "x"} if event == "token" else {"result": None}
    plan = await core.store.append(execution_id, [PublishItem(event, data) for _ in range(count)])
    return plan.events


async def live(core: Core, execution_id: str, sink: RecordingSink) -> Subscription:
    """A subscription caught up to the store's head, taking live events from the hub."""
    sub = core.follow(execution_id, 0, sink)
    await sub.start(await core.get_execution(execution_id))
    assert sub.live
    return sub


def hub_of(core: Core, execution_id: str) -> Hub:
    hub = core.hubs.get(execution_id)
    assert hub is not None
    return hub


def framed(core: Core, events: list[Event], encoding: Encoding) -> bytes:
    return frame_events(core.encoded.encode(events[0].execution_id, events), encoding)


# --- the fan-out -----------------------------------------------------------------------


def test_a_batch_is_framed_once_per_encoding_and_shared_by_every_fast_subscriber() -> None:
    async def scenario() -> None:
        core = make_core()
        execution = await new_execution(core)
        ws = [RecordingWriter(Encoding.WS) for _ in range(3)]
        sse = [RecordingWriter(Encoding.SSE) for _ in range(2)]
        chunked = RecordingWriter(Encoding.SSE_CHUNK)
        plain = RecordingSink()  # no direct writer (a long-poll page): through on_live
        for writer in ws:
            await live(core, execution.id, RecordingSink(writer))
        for writer in (*sse, chunked):
            await live(core, execution.id, RecordingSink(writer, transport_name="sse"))
        await live(core, execution.id, plain)
        delivered = dict(core.metrics.delivered)

        events = await store(core, execution.id, 2)  # status, token, token: one broker message
        hub_of(core, execution.id).on_events(events)

        assert all(len(w.writes) == 1 for w in (*ws, *sse, chunked))
        assert ws[0].writes[0] == framed(core, events, Encoding.WS)
        assert sse[0].writes[0] == framed(core, events, Encoding.SSE)
        assert chunked.writes[0] == framed(core, events, Encoding.SSE_CHUNK)
        # Built once: every subscriber of an encoding got the very same bytes object.
        assert all(w.writes[0] is ws[0].writes[0] for w in ws)
        assert all(w.writes[0] is sse[0].writes[0] for w in sse)
        assert plain.batches == [[1, 2, 3]]
        assert core.metrics.delivered["websocket"] - delivered["websocket"] == 4 * 3
        assert core.metrics.delivered["sse"] - delivered["sse"] == 3 * 3

    run(scenario)


def test_a_slow_writer_is_told_and_the_others_still_get_the_batch() -> None:
    async def scenario() -> None:
        core = make_core()
        execution = await new_execution(core)
        slow, fine = RecordingWriter(accepts=False), RecordingWriter()
        await live(core, execution.id, RecordingSink(slow))
        await live(core, execution.id, RecordingSink(fine))
        events = await store(core, execution.id, 1)
        hub_of(core, execution.id).on_events(events)
        assert slow.slow == 1 and len(slow.writes) == 1
        assert fine.slow == 0 and fine.writes == [framed(core, events, Encoding.WS)]

    run(scenario)


def test_a_terminal_batch_never_takes_the_fast_path() -> None:
    async def scenario() -> None:
        core = make_core()
        execution = await new_execution(core)
        writer = RecordingWriter()
        sink = RecordingSink(writer)
        sub = await live(core, execution.id, sink)
        hub = hub_of(core, execution.id)
        hub.on_events(await store(core, execution.id, 1))  # status, token: fast
        assert len(writer.writes) == 1 and sink.batches == []
        hub.on_events(await store(core, execution.id, 1, "complete"))
        # Through the subscription, which ends the stream after writing it.
        assert len(writer.writes) == 1
        assert sink.batches == [[3]] and sink.ends == 1 and sub.closed

    run(scenario)


def test_a_batch_that_is_not_one_contiguous_run_is_not_written_fast() -> None:
    async def scenario() -> None:
        core = make_core()
        execution = await new_execution(core)
        writer = RecordingWriter()
        sink = RecordingSink(writer)
        sub = await live(core, execution.id, sink)
        events = await store(core, execution.id, 3)  # 1..4
        hub_of(core, execution.id).on_events([events[0], events[2]])  # 1 and 3
        assert writer.writes == []
        assert sink.batches == [[1]]  # the run after the cursor; 2 is read from the store
        await until(lambda: sub.live)
        assert sink.batches == [[1], [2, 3, 4]] and writer.writes == []

    run(scenario)


def test_a_subscriber_not_exactly_one_batch_behind_goes_through_its_subscription() -> None:
    async def scenario() -> None:
        core = make_core()
        execution = await new_execution(core)
        await store(core, execution.id, 1)  # 1, 2
        behind_writer, ahead_writer = RecordingWriter(), RecordingWriter()
        behind, ahead = RecordingSink(behind_writer), RecordingSink(ahead_writer)
        behind_sub = await live(core, execution.id, behind)  # its cursor: 2
        events = await store(core, execution.id, 2)  # 3, 4: the broker brings only 4
        await live(core, execution.id, ahead)  # its cursor: 4, read from the store
        hub_of(core, execution.id).on_events(events[1:])
        assert ahead_writer.writes == [] and ahead.batches == [[1, 2, 3, 4]]  # a repeat: dropped
        assert behind_writer.writes == [] and not behind_sub.live  # 4 follows a hole at 3
        await until(lambda: behind_sub.live)
        assert behind.batches == [[1, 2], [3, 4]] and behind_writer.writes == []

    run(scenario)


# --- the coalescing window --------------------------------------------------------------


def test_the_window_gathers_batches_and_sorts_and_dedupes_them() -> None:
    async def scenario() -> None:
        core = make_core(coalesce_ms=2)
        execution = await new_execution(core)
        writer = RecordingWriter()
        await live(core, execution.id, RecordingSink(writer))
        hub = hub_of(core, execution.id)
        events = await store(core, execution.id, 4)  # 1..5, as several broker messages
        hub.on_events(events[0:2])  # the first after a quiet time: written at once
        assert writer.writes == [framed(core, events[0:2], Encoding.WS)]
        # Within the window, from two processes: out of order and repeated.
        hub.on_events(events[4:5])
        hub.on_events(events[2:4])
        hub.on_events(events[3:5])
        clock().advance(0.0019)
        await settle()
        assert len(writer.writes) == 1  # the window is still open
        clock().advance(0.0002)
        await settle()
        assert writer.writes[1:] == [framed(core, events[2:5], Encoding.WS)]  # one write: 3, 4, 5

    run_on_manual_clock(scenario)


def test_a_lone_event_after_the_window_closed_is_written_at_once() -> None:
    async def scenario() -> None:
        core = make_core(coalesce_ms=2)
        execution = await new_execution(core)
        writer = RecordingWriter()
        await live(core, execution.id, RecordingSink(writer))
        hub = hub_of(core, execution.id)
        events = await store(core, execution.id, 2)  # 1..3
        hub.on_events(events[0:1])
        clock().advance(0.003)
        hub.on_events(events[1:2])
        assert len(writer.writes) == 2  # no timer, no wait
        clock().advance(0.5)
        hub.on_events(events[2:3])
        assert len(writer.writes) == 3

    run_on_manual_clock(scenario)


def test_the_window_stretches_after_fan_outs_slower_than_it_run_back_to_back() -> None:
    async def scenario() -> None:
        core = make_core(coalesce_ms=2)
        execution = await new_execution(core)
        writer = RecordingWriter(takes=0.010)  # every fan-out takes 10 ms
        await live(core, execution.id, RecordingSink(writer))
        hub = hub_of(core, execution.id)
        events = await store(core, execution.id, 4)  # 1..5
        hub.on_events(events[0:1])  # slow, but after a quiet time: the window stays 2 ms
        assert len(writer.writes) == 1
        began = clock().time()
        hub.on_events(events[1:2])  # at once (the window closed during the fan-out)...
        assert len(writer.writes) == 2
        # ...and it began 10 ms after the previous slow one: the hub is falling behind,
        # so what follows is held for another min(took, MAX_HOLD) = 10 ms after it.
        hub.on_events(events[2:3])
        hub.on_events(events[3:5])
        closes = began + 0.010 + min(0.010, MAX_HOLD)
        clock().advance(closes - clock().time() - 0.0005)
        await settle()
        assert len(writer.writes) == 2
        clock().advance(0.001)
        await settle()
        assert writer.writes[2:] == [framed(core, events[2:5], Encoding.WS)]

    run_on_manual_clock(scenario)


def test_the_window_flush_sorts_what_a_subscription_without_a_writer_gets() -> None:
    async def scenario() -> None:
        core = make_core(coalesce_ms=2)
        execution = await new_execution(core)
        sink = RecordingSink()
        await live(core, execution.id, sink)
        hub = hub_of(core, execution.id)
        events = await store(core, execution.id, 3)  # 1..4
        hub.on_events(events[0:1])
        hub.on_events(events[3:4])
        hub.on_events(events[1:3])
        hub.on_events(events[1:2])
        clock().advance(0.003)
        await settle()
        assert sink.batches == [[1], [2, 3, 4]]

    run_on_manual_clock(scenario)


@pytest.mark.parametrize(
    ("took", "gap", "closes_after"),
    [
        (0.0, 0.0, 0.002),  # an instant fan-out right after another: the plain window
        (0.002, 0.001, 0.002),  # exactly as long as the window is not slower than it
        (0.004, 0.008, 0.002),  # began 2 x took after the previous one: not back to back
        (0.004, 0.0079, 0.008),  # just under 2 x took: held another took
        (0.025, 0.03, 0.05),  # took == max_hold
        (0.030, 0.03, 0.055),  # held max_hold at most
    ],
)
def test_coalesce_window_end_at_its_boundaries(took: float, gap: float, closes_after: float) -> None:
    end = coalesce_window_end(start=5.0, took=took, gap=gap, window=0.002, max_hold=MAX_HOLD)
    assert end == pytest.approx(5.0 + closes_after)


# --- idle hubs ----------------------------------------------------------------------------


def test_an_idle_hub_is_dropped_after_its_linger_and_its_broker_subscription_removed() -> None:
    async def scenario() -> None:
        broker = RecordingBroker()
        core = make_core(broker=broker)
        execution = await new_execution(core)
        first = await live(core, execution.id, RecordingSink())
        second = await live(core, execution.id, RecordingSink())
        assert broker.subscribed == [execution.id]  # one broker subscription per hub
        hubs = core.hubs
        assert hubs.linger == HUB_LINGER

        first.close()
        hubs.drop_idle(time.monotonic() + 10 * HUB_LINGER)
        assert execution.id in hubs  # still followed by the second

        second.close()
        left = time.monotonic()
        hubs.drop_idle(left + HUB_LINGER / 2)
        assert execution.id in hubs and broker.unsubscribed == []  # kept for the next poll
        hubs.drop_idle(left + HUB_LINGER + 0.01)
        assert execution.id not in hubs
        assert broker.unsubscribed == [execution.id]

        # A later follower gets a new hub and a new broker subscription.
        again = await live(core, execution.id, RecordingSink())
        assert execution.id in hubs and broker.subscribed == [execution.id, execution.id]
        again.close()

    run(scenario)


def test_a_hub_joined_again_within_its_linger_is_kept() -> None:
    async def scenario() -> None:
        broker = RecordingBroker()
        core = make_core(broker=broker)
        execution = await new_execution(core)
        sink = RecordingSink()
        (await live(core, execution.id, RecordingSink())).close()
        hub = hub_of(core, execution.id)
        await live(core, execution.id, sink)  # the long-poller's next poll
        core.hubs.drop_idle(time.monotonic() + 10 * HUB_LINGER)
        assert hub_of(core, execution.id) is hub
        assert broker.subscribed == [execution.id] and broker.unsubscribed == []
        await core.publish(execution.id, [PublishItem("token", {"text": "x"})])
        assert sink.batches == [[1, 2]]

    run(scenario)
