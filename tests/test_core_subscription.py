"""``core.subscription`` without sockets (issue 10): the one class that owns delivery order.

A real ``Core`` over the embedded ``MemoryStore`` and the in-process ``LocalBroker``
(real implementations, not mocks); the subscription delivers to a ``RecordingSink``.
Live batches are handed to the hub or to ``Subscription.on_live`` directly, in the
orders several Herald processes and a lossy broker produce: out of order, twice,
interleaved, with holes. Whatever arrives, the sink must see every event exactly once,
in seq order, and the cursor must never move backwards.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable

import pytest

from core.auth import Authenticator
from core.broker.local import LocalBroker
from core.codec import Encoded
from core.errors import StoreUnavailable
from core.hub import Hub
from core.model import Event, Execution, PublishItem, Status
from core.service import Core
from core.settings import Settings
from core.store.memory import MemoryStore
from core.subscription import Subscription, is_next_run, next_run
from core.transport import Encoding

#: Bound of every scenario: a rule broken by a hang fails instead of stalling the run.
SCENARIO_TIMEOUT = 10.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_TIMEOUT))


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait (bounded) for a background re-read to have delivered."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


class RecordingStore(MemoryStore):
    """The embedded store, with its log reads recorded (the cursor each read starts
    after) and, while ``gate`` is set and closed, each read's answer held back: a
    slow read whose answer is the log as it was when the read began."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[int] = []
        self.gate: asyncio.Event | None = None
        #: Reads that fail with StoreUnavailable before the store answers again.
        self.outages = 0

    async def events_after(self, execution_id: str, after: int, limit: int) -> list[Event]:
        self.reads.append(after)
        if self.outages:
            self.outages -= 1
            raise StoreUnavailable("the store did not answer")
        events = await super().events_after(execution_id, after, limit)
        if self.gate is not None:
            await self.gate.wait()
        return events


class RecordingWriter:
    """A DirectWriter that keeps what the hub sends it."""

    encoding = Encoding.WS

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.slow = 0

    def write(self, data: bytes) -> bool:
        self.writes.append(data)
        return True

    def on_slow(self) -> None:
        self.slow += 1


class RecordingSink:
    """A Sink that records every call, in order."""

    transport_name = "websocket"

    def __init__(self, writer: RecordingWriter | None = None) -> None:
        self.writer = writer
        self.batches: list[list[int]] = []
        self.resets: list[Execution] = []
        self.ends = 0
        #: "events", "reset" and "end", in the order they were called.
        self.calls: list[str] = []

    @property
    def seqs(self) -> list[int]:
        return [seq for batch in self.batches for seq in batch]

    def send_events(self, batch: list[Encoded]) -> None:
        self.batches.append([e.seq for e in batch])
        self.calls.append("events")

    def send_reset(self, execution: Execution) -> None:
        self.resets.append(execution)
        self.calls.append("reset")

    def end_stream(self) -> None:
        self.ends += 1
        self.calls.append("end")


def make_core(store: MemoryStore) -> Core:
    """A Core that is never started: subscriptions need its store, hubs, cache and
    metrics, not its timers. No coalescing window, so every broker message reaches the
    subscriptions as it is (the window has its own tests in test_core_hub.py)."""
    return Core(Settings(coalesce_ms=0), store, LocalBroker(), Authenticator(secret="subscription-tests"))


async def new_execution(core: Core, tokens: int = 0) -> tuple[Execution, list[Event]]:
    """An execution with ``tokens`` token events stored (seq 1 is the server's
    ``status: running``), published to no one."""
    execution = await core.create_execution("alice", "chat", {}, None)
    events: list[Event] = []
    if tokens:
        plan = await core.store.append(execution.id, [PublishItem("token", {"text": f"t{i}"}) for i in range(tokens)])
        events = plan.events
    return execution, events


async def append(core: Core, execution_id: str, count: int) -> list[Event]:
    """Store ``count`` more token events without publishing them (the broker has not
    brought them, or lost them)."""
    plan = await core.store.append(execution_id, [PublishItem("token", {"text": "x"}) for _ in range(count)])
    return plan.events


async def follow(core: Core, execution_id: str, after: int, sink: RecordingSink, limit: int = 1000) -> Subscription:
    sub = core.follow(execution_id, after, sink, limit=limit)
    await sub.start(await core.get_execution(execution_id))
    return sub


def hub_of(core: Core, execution_id: str) -> Hub:
    hub = core.hubs.get(execution_id)
    assert hub is not None
    return hub


def encoded(seqs: Iterable[int], terminal_at: int | None = None) -> list[Encoded]:
    """Stand-alone encoded events, for the pure functions."""
    return [
        Encoded(Event("ex_pure", seq, "complete" if seq == terminal_at else "token", {"text": str(seq)}, 1.0))
        for seq in seqs
    ]


def seqs_of(batch: list[Encoded]) -> list[int]:
    return [e.seq for e in batch]


# --- the pure rules -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "arriving", "run", "rest"),
    [
        (0, [1, 2, 3], [1, 2, 3], []),
        (797, [799, 800, 798], [798, 799, 800], []),  # one batch, out of order
        (5, [6, 6, 7, 7], [6, 7], []),  # duplicates
        (5, [3, 4, 5], [], []),  # all at or below the cursor
        (5, [4, 5, 6, 7], [6, 7], []),  # overlapping the cursor
        (5, [7, 8], [], [7, 8]),  # a hole right after the cursor
        (5, [9, 6, 8], [6], [8, 9]),  # a run, then a hole
        (5, [10, 6, 7, 12, 10], [6, 7], [10, 12]),
        (0, [], [], []),
    ],
)
def test_next_run_splits_what_follows_the_cursor_from_what_lies_past_a_hole(
    last: int, arriving: list[int], run: list[int], rest: list[int]
) -> None:
    got_run, got_rest = next_run(last, encoded(arriving))
    assert (seqs_of(got_run), seqs_of(got_rest)) == (run, rest)


@pytest.mark.parametrize("seed", range(20))
def test_next_run_properties_on_random_arrivals(seed: int) -> None:
    rng = random.Random(seed)
    last = rng.randrange(0, 50)
    arriving = [rng.randrange(0, 80) for _ in range(rng.randrange(0, 40))]
    run_, rest = next_run(last, encoded(arriving))
    run, rest_seqs = seqs_of(run_), seqs_of(rest)
    # Everything after the cursor, once each, in order, split in two.
    assert run + rest_seqs == sorted({seq for seq in arriving if seq > last})
    # The run is exactly last + 1, last + 2, ...: deliverable as it is.
    assert run == list(range(last + 1, last + 1 + len(run)))
    # What is left starts past a hole (or there is nothing left).
    assert not rest_seqs or rest_seqs[0] > last + 1 + len(run)
    assert is_next_run(last, run_)


@pytest.mark.parametrize(
    ("last", "batch", "expected"),
    [
        (0, [1], True),
        (4, [5, 6, 7], True),
        (4, [], True),  # nothing to deliver is trivially in order
        (4, [6, 7], False),  # a hole
        (4, [4, 5], False),  # a duplicate of the cursor
        (4, [5, 7], False),  # a hole inside
        (4, [6, 5], False),  # out of order
        (4, [5, 5], False),  # a duplicate inside
    ],
)
def test_is_next_run_accepts_only_the_exact_run_after_the_cursor(last: int, batch: list[int], expected: bool) -> None:
    assert is_next_run(last, encoded(batch)) is expected


@pytest.mark.parametrize("seed", range(20))
def test_is_next_run_agrees_with_next_run(seed: int) -> None:
    """``is_next_run`` is the fast check of the common case: it must say yes exactly
    when ``next_run`` would deliver the whole batch as it is."""
    rng = random.Random(seed)
    last = rng.randrange(0, 10)
    start = last + rng.choice((-1, 0, 1, 1, 1, 2))
    batch = list(range(start, start + rng.randrange(1, 6)))
    if rng.random() < 0.4:
        rng.shuffle(batch)
    if rng.random() < 0.3:
        batch.append(rng.choice(batch))
    events = encoded(batch)
    run_, rest = next_run(last, events)
    assert is_next_run(last, events) == (seqs_of(run_) == batch and not rest)


# --- catch-up, then live --------------------------------------------------------------


def test_catch_up_reads_the_store_in_pages_then_goes_live() -> None:
    async def scenario() -> None:
        store = RecordingStore()
        core = make_core(store)
        execution, _ = await new_execution(core, tokens=4)  # seqs 1..5
        sink = RecordingSink()
        sub = await follow(core, execution.id, 1, sink, limit=2)
        assert sink.batches == [[2, 3], [4, 5]]
        assert store.reads == [1, 3, 5]  # a short page ends the catch-up
        assert sub.live and sub.last == 5
        seqs = await core.publish(execution.id, [PublishItem("token", {"text": "live"})])
        assert seqs == [6]
        assert sink.batches[-1] == [6]
        assert store.reads == [1, 3, 5]  # live events come from the hub, not the store

    run(scenario)


def test_live_events_published_during_a_slow_catch_up_are_held_and_delivered_after_it() -> None:
    async def scenario() -> None:
        store = RecordingStore()
        core = make_core(store)
        execution, _ = await new_execution(core, tokens=3)  # seqs 1..4
        store.gate = asyncio.Event()
        sink = RecordingSink(RecordingWriter())
        sub = core.follow(execution.id, 0, sink)
        starting = asyncio.ensure_future(sub.start(await core.get_execution(execution.id)))
        await until(lambda: store.reads == [0])  # the read has begun: its answer is 1..4
        await core.publish(execution.id, [PublishItem("token", {"text": "a"})])
        await core.publish(execution.id, [PublishItem("token", {"text": "b"}), PublishItem("token", {"text": "c"})])
        # Held, not sent: the fast path is closed to a subscription still catching up.
        assert sink.batches == [] and not sub.live
        assert sub.take_fast(4, 5) is None
        assert sink.writer is not None and sink.writer.writes == []
        store.gate.set()
        await starting
        assert sink.batches == [[1, 2, 3, 4], [5, 6, 7]]
        assert sub.live and sub.last == 7

    run(scenario)


def test_a_subscription_at_the_end_of_a_finished_execution_ends_without_reading() -> None:
    async def scenario() -> None:
        store = RecordingStore()
        core = make_core(store)
        execution, _ = await new_execution(core)
        await core.publish(execution.id, [PublishItem("complete", {"result": 1})])
        sink = RecordingSink()
        sub = await follow(core, execution.id, 1, sink)
        assert sink.calls == ["end"] and sub.closed
        assert store.reads == []

    run(scenario)


def test_the_terminal_event_ends_the_stream_once() -> None:
    async def scenario() -> None:
        core = make_core(MemoryStore())
        execution, _ = await new_execution(core, tokens=1)
        sink = RecordingSink()
        sub = await follow(core, execution.id, 0, sink)
        await core.publish(execution.id, [PublishItem("complete", {"result": "done"})])
        assert sink.batches == [[1, 2], [3]]
        assert sink.calls[-1] == "end" and sink.ends == 1
        assert sub.closed
        hub = hub_of(core, execution.id)
        assert sub not in hub.subs
        # The same terminal event brought again (another process's broker message).
        events = await core.store.events_after(execution.id, 2, 10)
        hub.on_events(events)
        sub.on_live(core.encoded.encode(execution.id, events))
        assert sink.ends == 1 and sink.seqs == [1, 2, 3]

    run(scenario)


def test_the_terminal_event_read_during_the_catch_up_ends_the_stream() -> None:
    async def scenario() -> None:
        core = make_core(MemoryStore())
        execution, _ = await new_execution(core, tokens=2)
        await core.publish(execution.id, [PublishItem("error", {"error_type": "boom", "message": "m"})])
        sink = RecordingSink()
        sub = await follow(core, execution.id, 1, sink)
        assert sink.batches == [[2, 3, 4]] and sink.calls == ["events", "end"]
        assert sub.closed

    run(scenario)


# --- live batches in every order --------------------------------------------------------


def test_one_live_batch_out_of_order_is_sorted_without_a_store_read() -> None:
    async def scenario() -> None:
        store = RecordingStore()
        core = make_core(store)
        execution, _ = await new_execution(core)
        sink = RecordingSink()
        sub = await follow(core, execution.id, 0, sink)
        events = await append(core, execution.id, 4)  # 1..4
        reads = list(store.reads)
        batch = core.encoded.encode(execution.id, [events[2], events[3], events[1], events[0], events[2]])
        sub.on_live(batch)
        assert sink.batches == [[1, 2, 3, 4]]
        assert store.reads == reads

    run(scenario)


def test_events_at_or_below_the_cursor_are_dropped() -> None:
    async def scenario() -> None:
        store = RecordingStore()
        core = make_core(store)
        execution, _ = await new_execution(core, tokens=3)  # 1..4
        sink = RecordingSink()
        sub = await follow(core, execution.id, 0, sink)
        assert sink.batches == [[1, 2, 3, 4]]
        stored = core.encoded.encode(execution.id, await core.store.events_after(execution.id, 0, 10))
        reads = list(store.reads)
        sub.on_live(stored[2:4])  # 3, 4: already delivered
        sub.on_live(stored[:1])  # 1
        assert sink.batches == [[1, 2, 3, 4]] and sub.last == 4
        more = core.encoded.encode(execution.id, await append(core, execution.id, 1))  # 5
        sub.on_live(stored[1:] + more)  # 2, 3, 4, 5: only 5 is new
        assert sink.batches == [[1, 2, 3, 4], [5]]
        assert store.reads == reads  # nothing here needed the store

    run(scenario)


def test_a_hole_is_filled_from_the_store_and_what_was_held_is_not_sent_twice() -> None:
    async def scenario() -> None:
        store = RecordingStore()
        core = make_core(store)
        execution, _ = await new_execution(core, tokens=1)  # 1, 2
        sink = RecordingSink()
        sub = await follow(core, execution.id, 0, sink)
        events = await append(core, execution.id, 4)  # 3..6, the broker brings only 5 and 6
        hub = hub_of(core, execution.id)
        hub.on_events(events[2:])
        assert not sub.live  # re-reading the store from the cursor
        await until(lambda: sub.live)
        assert store.reads[-1] == 2
        assert sink.batches == [[1, 2], [3, 4, 5, 6]]
        hub.on_events(events[:2])  # 3 and 4 arrive after all
        assert sink.seqs == [1, 2, 3, 4, 5, 6]

    run(scenario)


def test_batches_of_several_processes_interleaved_and_repeated_are_delivered_once_in_order() -> None:
    """Two processes append to one execution; each one's broker messages reach this
    process in its own order, interleaved with the other's, some twice (a resync), one
    lost. Delivered: every seq once, in order; the cursor only moves forward."""

    async def scenario(seed: int) -> None:
        rng = random.Random(seed)
        core = make_core(MemoryStore())
        execution, _ = await new_execution(core)
        sink = RecordingSink()
        sub = await follow(core, execution.id, 0, sink)
        hub = hub_of(core, execution.id)
        appends: list[list[Event]] = []
        for _ in range(12):  # each append is one broker message of 1..4 events
            appends.append(await append(core, execution.id, rng.randrange(1, 5)))
        total = appends[-1][-1].seq
        messages = [batch for batch in appends if rng.random() > 0.1]  # the broker lost some
        messages += rng.sample(appends, 4)  # and brought some twice
        rng.shuffle(messages)
        cursor = [sub.last]
        for message in messages:
            hub.on_events(message)
            cursor.append(sub.last)
            if rng.random() < 0.5:
                await asyncio.sleep(0)  # let a store re-read run in between, or not
                cursor.append(sub.last)
        sub.resync()  # what a broker outage ends with: the store has the lost ones
        await until(lambda: sub.live and sub.last == total)
        cursor.append(sub.last)
        assert sink.seqs == list(range(1, total + 1)), f"seed {seed}"
        assert cursor == sorted(cursor), f"seed {seed}: the cursor moved backwards"

    async def scenarios() -> None:
        for seed in range(25):
            await scenario(seed)

    run(scenarios)


def test_resync_reads_what_the_broker_lost() -> None:
    async def scenario() -> None:
        store = RecordingStore()
        core = make_core(store)
        execution, _ = await new_execution(core, tokens=1)
        sink = RecordingSink()
        sub = await follow(core, execution.id, 0, sink)
        await append(core, execution.id, 3)  # stored, never published: lost
        core.hubs.resync()
        await until(lambda: sub.live)
        assert sink.batches == [[1, 2], [3, 4, 5]]
        assert store.reads[-1] == 2

    run(scenario)


def test_a_store_outage_during_a_re_read_is_retried() -> None:
    async def scenario() -> None:
        store = RecordingStore()
        core = make_core(store)
        execution, _ = await new_execution(core, tokens=1)
        sink = RecordingSink()
        sub = await follow(core, execution.id, 0, sink)
        events = await append(core, execution.id, 2)  # 3, 4
        store.outages = 1
        sub.on_live(core.encoded.encode(execution.id, events[1:]))  # 4: a hole
        await until(lambda: sub.live, timeout=5)  # the retry comes a second later
        assert sink.seqs == [1, 2, 3, 4]

    run(scenario)


# --- retention ------------------------------------------------------------------------


async def store_then_expire(core: Core, execution_id: str, old: int, new: int) -> None:
    """Store ``old`` events, then ``new`` ones a moment later, and let retention drop
    everything before the new ones (the store's own ``prune``)."""
    await append(core, execution_id, old)
    await asyncio.sleep(0.01)
    cutoff = time.time()
    await asyncio.sleep(0.01)
    kept = await append(core, execution_id, new)
    await core.prune(cutoff)
    assert await core.store.events_after(execution_id, 0, 1000) == kept


def test_events_dropped_after_the_cursor_give_a_reset_with_the_document_then_the_stream_goes_on() -> None:
    async def scenario() -> None:
        core = make_core(MemoryStore())
        execution, _ = await new_execution(core)
        await core.store.append(execution.id, [PublishItem("progress", {"progress": 40, "stage": "s"})])  # 1, 2
        await store_then_expire(core, execution.id, old=2, new=3)  # 3, 4 dropped; 5..7 kept
        sink = RecordingSink()
        sub = await follow(core, execution.id, 1, sink)
        assert sink.calls == ["reset"]
        (doc,) = sink.resets
        assert (doc.last_seq, doc.progress, doc.stage, doc.status) == (7, 40, "s", Status.RUNNING)
        assert sub.last == 7 and sub.live
        await core.publish(execution.id, [PublishItem("token", {"text": "after"})])
        assert sink.calls == ["reset", "events"] and sink.batches == [[8]]

    run(scenario)


def test_every_event_after_the_cursor_dropped_gives_a_reset() -> None:
    async def scenario() -> None:
        core = make_core(MemoryStore())
        execution, _ = await new_execution(core, tokens=3)  # 1..4
        await asyncio.sleep(0.01)
        assert await core.prune(time.time()) == 4
        sink = RecordingSink()
        sub = await follow(core, execution.id, 2, sink)
        assert sink.calls == ["reset"] and sink.resets[0].last_seq == 4
        assert sub.last == 4 and sub.live

    run(scenario)


def test_a_cursor_at_the_head_of_a_pruned_log_gets_no_reset() -> None:
    async def scenario() -> None:
        core = make_core(MemoryStore())
        execution, _ = await new_execution(core, tokens=3)  # 1..4
        await asyncio.sleep(0.01)
        await core.prune(time.time())
        sink = RecordingSink()
        sub = await follow(core, execution.id, 4, sink)
        assert sink.calls == [] and sub.live

    run(scenario)


def test_retention_noticed_while_filling_a_live_hole_gives_a_reset() -> None:
    async def scenario() -> None:
        core = make_core(MemoryStore())
        execution, _ = await new_execution(core, tokens=2)  # 1..3
        sink = RecordingSink()
        sub = await follow(core, execution.id, 0, sink)
        await store_then_expire(core, execution.id, old=2, new=2)  # 4, 5 dropped; 6, 7 kept
        newest = await core.store.events_after(execution.id, 6, 10)
        hub_of(core, execution.id).on_events(newest)  # 7: a hole at 4
        await until(lambda: sub.live)
        assert sink.calls == ["events", "reset"]
        assert sink.resets[0].last_seq == 7 and sub.last == 7
        await core.publish(execution.id, [PublishItem("token", {"text": "after"})])
        assert sink.batches == [[1, 2, 3], [8]]

    run(scenario)


def test_a_reset_to_a_finished_execution_ends_the_stream() -> None:
    async def scenario() -> None:
        core = make_core(MemoryStore())
        execution, _ = await new_execution(core, tokens=2)
        await core.publish(execution.id, [PublishItem("complete", {"result": 1})])  # 4
        await asyncio.sleep(0.01)
        await core.prune(time.time())
        sink = RecordingSink()
        sub = await follow(core, execution.id, 1, sink)
        assert sink.calls == ["reset", "end"]
        assert sink.resets[0].status is Status.SUCCEEDED and sub.closed

    run(scenario)


# --- the hub's fast path, as the subscription grants it -----------------------------------


def test_take_fast_only_when_live_with_a_writer_and_exactly_one_batch_behind() -> None:
    async def scenario() -> None:
        core = make_core(MemoryStore())
        execution, _ = await new_execution(core, tokens=3)  # 1..4
        without_writer = await follow(core, execution.id, 0, RecordingSink())
        assert without_writer.live and without_writer.take_fast(4, 5) is None

        writer = RecordingWriter()
        sub = await follow(core, execution.id, 0, RecordingSink(writer))
        assert sub.last == 4
        assert sub.take_fast(3, 5) is None  # the batch repeats the cursor's event
        assert sub.take_fast(5, 6) is None  # a hole before the batch
        assert sub.last == 4
        assert sub.take_fast(4, 6) is writer  # the batch is 5, 6: right after the cursor
        assert sub.last == 6

        # While a hole is being filled from the store, the fast path is closed.
        events = await append(core, execution.id, 4)  # 5..8; the cursor is at 6
        sub.on_live(core.encoded.encode(execution.id, events[3:]))  # 8 only: a hole at 7
        assert not sub.live and sub.take_fast(6, 7) is None
        await until(lambda: sub.live)
        assert sub.last == 8 and sub.take_fast(8, 9) is writer

    run(scenario)
