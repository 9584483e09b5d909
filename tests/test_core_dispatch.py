"""``core.dispatch`` without sockets (issue 10): which worker gets what, and what happens
when it stops.

A real ``Core`` over the embedded store and the in-process broker, started as
``server.py`` starts it; workers are ``RecordingLink``s that keep the ``execute`` and
``cancel`` messages the dispatcher sends them. Executions are created and ended
through the Core, so the dispatcher learns of them the way it does in production,
through the change channel.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from core.auth import Authenticator
from core.broker.local import LocalBroker
from core.dispatch import Dispatcher
from core.errors import ErrorCode, HeraldError, bad_request, stream_closed
from core.model import Execution, PublishItem, Status
from core.service import Core
from core.settings import Settings
from core.store.memory import MemoryStore

SCENARIO_TIMEOUT = 10.0
QUEUE = "gpu"
EXECUTION_TIMEOUT = 60.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_TIMEOUT))


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait (bounded) for the dispatcher's background hand-out to have happened."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


class RecordingLink:
    """A connected worker as the dispatcher sees it; ``delivers`` False plays a
    connection that is already gone when an execution is sent to it."""

    def __init__(self, name: str, queue: str = QUEUE, delivers: bool = True) -> None:
        self.queue = queue
        self.name = name
        self.delivers = delivers
        self.executed: list[str] = []
        self.cancels: list[tuple[str, str]] = []

    def execute(self, execution: Execution) -> bool:
        self.executed.append(execution.id)
        return self.delivers

    def cancel(self, execution_id: str, reason: str) -> None:
        self.cancels.append((execution_id, reason))


@asynccontextmanager
async def dispatching(**settings: Any) -> AsyncIterator[tuple[Core, Dispatcher]]:
    options: dict[str, Any] = {"execution_timeout": EXECUTION_TIMEOUT, **settings}
    core = Core(Settings(**options), MemoryStore(), LocalBroker(), Authenticator(secret="dispatch-tests" * 3))
    await core.start()
    dispatcher = Dispatcher(core)
    try:
        yield core, dispatcher
    finally:
        await core.stop()


async def queued(core: Core, queue: str = QUEUE) -> Execution:
    return await core.create_execution("alice", "inference", {}, queue)


async def handed_to(link: RecordingLink, execution: Execution) -> None:
    await until(lambda: execution.id in link.executed)


async def doc(core: Core, execution: Execution) -> Execution:
    return await core.get_execution(execution.id)


async def events_of(core: Core, execution: Execution) -> list[tuple[str, Any]]:
    return [(e.event, e.data) for e in await core.store.events_after(execution.id, 0, 100)]


async def finish_by_worker(core: Core, dispatcher: Dispatcher, link: RecordingLink, execution: Execution) -> None:
    """The worker sends the terminal event itself, as the worker socket does."""
    dispatcher.ending(link, execution.id)
    await core.publish(execution.id, [PublishItem("complete", {"result": "ok"})])


# --- who gets what ---------------------------------------------------------------------------


def test_an_execution_goes_to_the_worker_with_fewest_in_hand_then_to_the_longest_idle() -> None:
    async def scenario() -> None:
        async with dispatching() as (core, dispatcher):
            one, two = RecordingLink("one"), RecordingLink("two")
            for link in (one, two):
                await dispatcher.connect(link)
                dispatcher.set_capacity(link, 3)
            ex1 = await queued(core)
            await handed_to(one, ex1)  # a tie: neither holds any, neither was given one
            ex2 = await queued(core)
            await handed_to(two, ex2)  # fewest in hand
            ex3 = await queued(core)
            await handed_to(one, ex3)  # one each: "one" has waited longer
            await finish_by_worker(core, dispatcher, one, ex3)
            ex4 = await queued(core)
            await handed_to(two, ex4)  # one each again: now "two" has waited longer
            await finish_by_worker(core, dispatcher, two, ex2)
            await finish_by_worker(core, dispatcher, two, ex4)
            # "one" holds one and has waited longer; "two" holds none: fewest in hand wins.
            ex5 = await queued(core)
            await handed_to(two, ex5)
            assert one.executed == [ex1.id, ex3.id] and two.executed == [ex2.id, ex4.id, ex5.id]
            assert (await doc(core, ex5)).worker == "two"
            assert one.cancels == [] and two.cancels == []  # each ended its own

    run(scenario)


def test_a_worker_takes_no_more_than_its_capacity() -> None:
    async def scenario() -> None:
        async with dispatching() as (core, dispatcher):
            link = RecordingLink("one")
            await dispatcher.connect(link)  # capacity 1 until it says otherwise
            first, second = await queued(core), await queued(core)
            await handed_to(link, first)
            await asyncio.sleep(0.05)
            assert link.executed == [first.id]
            assert await core.store.pending_counts() == {QUEUE: 1}
            dispatcher.set_capacity(link, 2)
            await handed_to(link, second)
            assert await core.store.pending_counts() == {}
            (described,) = await dispatcher.describe()
            (worker,) = described["workers"]
            assert (worker["name"], worker["capacity"]) == ("one", 2)
            assert worker["executions"] == sorted([first.id, second.id])

    run(scenario)


def test_an_execution_waits_for_a_worker_of_its_queue() -> None:
    async def scenario() -> None:
        async with dispatching() as (core, dispatcher):
            elsewhere = RecordingLink("cpu-1", queue="cpu")
            await dispatcher.connect(elsewhere)
            execution = await queued(core)
            await asyncio.sleep(0.05)
            assert elsewhere.executed == []
            link = RecordingLink("gpu-1")
            await dispatcher.connect(link)  # connecting is enough: it is handed what waits
            await handed_to(link, execution)
            assert (await doc(core, execution)).attempts == 1

    run(scenario)


# --- lost workers ----------------------------------------------------------------------------


def test_a_lost_worker_s_execution_goes_back_to_pending_and_to_another_worker() -> None:
    async def scenario() -> None:
        async with dispatching() as (core, dispatcher):
            lost = RecordingLink("lost")
            await dispatcher.connect(lost)
            running, waiting = await queued(core), await queued(core)
            dispatcher.set_capacity(lost, 2)
            await handed_to(lost, waiting)
            await core.publish(running.id, [PublishItem("progress", {"progress": 10})])  # now running
            await dispatcher.disconnect(lost)
            # The running one says so: a status event back to pending, then no worker.
            assert await events_of(core, running) == [
                ("status", {"status": "running"}),
                ("progress", {"progress": 10}),
                ("status", {"status": "pending"}),
            ]
            for execution in (running, waiting):
                now = await doc(core, execution)
                assert (now.status, now.worker, now.attempts) == (Status.PENDING, None, 1)
            assert await events_of(core, waiting) == []  # never started: nothing to say
            other = RecordingLink("other")
            await dispatcher.connect(other)
            dispatcher.set_capacity(other, 2)
            await until(lambda: len(other.executed) == 2)
            assert (await doc(core, running)).attempts == 2
            assert lost.cancels == [] and not dispatcher.holds(lost, running.id)

    run(scenario)


def test_an_execution_lost_max_attempts_times_fails_with_worker_lost() -> None:
    async def scenario() -> None:
        async with dispatching(max_attempts=2) as (core, dispatcher):
            execution = await queued(core)
            for name in ("first", "second"):
                link = RecordingLink(name)
                await dispatcher.connect(link)
                await handed_to(link, execution)
                await dispatcher.disconnect(link)
            failed = await doc(core, execution)
            assert failed.status is Status.FAILED and failed.error is not None
            assert failed.error["error_type"] == "worker_lost"
            assert failed.error["details"] == {"worker": "second", "attempts": 2}
            assert await core.store.pending_counts() == {}

    run(scenario)


def test_an_execution_that_could_not_be_sent_goes_back_without_being_burnt() -> None:
    """``execute`` answers False when the worker's connection is already gone (its
    disconnect is on its way): the execution goes back to the queue, and the gone
    worker is not handed it again and again until ``max_attempts`` fails it."""

    async def scenario() -> None:
        async with dispatching(max_attempts=3) as (core, dispatcher):
            gone = RecordingLink("gone", delivers=False)
            await dispatcher.connect(gone)
            execution, next_one = await queued(core), await queued(core)
            await handed_to(gone, execution)
            await asyncio.sleep(0.05)
            assert gone.executed == [execution.id]
            now, waiting = await doc(core, execution), await doc(core, next_one)
            assert (now.status, now.worker, now.attempts) == (Status.PENDING, None, 1)
            assert (waiting.status, waiting.worker, waiting.attempts) == (Status.PENDING, None, 0)
            await dispatcher.disconnect(gone)  # what the socket's exit path does next
            alive = RecordingLink("alive")
            await dispatcher.connect(alive)
            dispatcher.set_capacity(alive, 2)
            await until(lambda: alive.executed == [execution.id, next_one.id])

    run(scenario)


# --- ends ---------------------------------------------------------------------------------


def test_a_silent_execution_times_out_at_the_sweep_and_its_worker_is_told() -> None:
    async def scenario() -> None:
        async with dispatching() as (core, dispatcher):
            link = RecordingLink("one")
            await dispatcher.connect(link)
            held, unheld = await queued(core), await queued(core, queue="nobody")
            await handed_to(link, held)
            await dispatcher.sweep(time.time() + EXECUTION_TIMEOUT / 2)
            assert (await doc(core, held)).status is Status.PENDING
            await dispatcher.sweep(time.time() + EXECUTION_TIMEOUT + 1)
            failed = await doc(core, held)
            assert failed.status is Status.FAILED and failed.error is not None
            assert failed.error["error_type"] == "timeout"
            assert failed.error["details"] == {"worker": "one", "execution_timeout": EXECUTION_TIMEOUT}
            assert link.cancels == [(held.id, "timeout")]
            assert not dispatcher.holds(link, held.id)
            # Waiting for a worker is not silence: only executions in hand time out.
            assert (await doc(core, unheld)).status is Status.PENDING

    run(scenario)


def test_an_execution_ended_elsewhere_is_cancelled_at_its_worker_which_takes_the_next() -> None:
    async def scenario() -> None:
        async with dispatching() as (core, dispatcher):
            link = RecordingLink("one")
            await dispatcher.connect(link)
            first, second = await queued(core), await queued(core)
            await handed_to(link, first)
            await core.publish(first.id, [PublishItem("cancelled", {"reason": "user asked"})])
            assert link.cancels == [(first.id, "user asked")]
            assert not dispatcher.holds(link, first.id)
            await handed_to(link, second)  # its capacity is free again

    run(scenario)


def test_a_worker_that_ends_its_own_execution_gets_no_cancel() -> None:
    async def scenario() -> None:
        async with dispatching() as (core, dispatcher):
            link = RecordingLink("one")
            await dispatcher.connect(link)
            execution = await queued(core)
            await handed_to(link, execution)
            await finish_by_worker(core, dispatcher, link, execution)
            assert link.cancels == [] and not dispatcher.holds(link, execution.id)
            assert (await doc(core, execution)).status is Status.SUCCEEDED

    run(scenario)


# --- what the worker socket asks and tells ---------------------------------------------------


def test_holds_refused_and_serves() -> None:
    async def scenario() -> None:
        async with dispatching() as (core, dispatcher):
            assert not dispatcher.serves(QUEUE)
            link, stranger = RecordingLink("one"), RecordingLink("stranger")
            await dispatcher.connect(link)
            assert dispatcher.serves(QUEUE) and not dispatcher.serves("other")
            execution = await queued(core)
            await handed_to(link, execution)
            assert dispatcher.holds(link, execution.id)
            assert not dispatcher.holds(stranger, execution.id)  # never connected
            assert not dispatcher.holds(link, "ex_unknown")

            # A refusal that says nothing about the execution's end keeps it in hand...
            dispatcher.refused(link, execution.id, bad_request("bad event"))
            assert dispatcher.holds(link, execution.id) and link.cancels == []
            # ...one that says it ended elsewhere takes it out, and the worker is told.
            dispatcher.refused(link, execution.id, stream_closed(execution.id, "cancelled"))
            assert not dispatcher.holds(link, execution.id)
            assert link.cancels == [(execution.id, "stream_closed")]

            await dispatcher.disconnect(link)
            assert not dispatcher.serves(QUEUE) and not dispatcher.holds(link, execution.id)
            claim = asyncio.ensure_future(dispatcher.claim(QUEUE, "http-worker", wait=5))
            await until(lambda: dispatcher.serves(QUEUE))  # a waiting HTTP claim serves it
            another = await queued(core)
            claimed = await asyncio.wait_for(claim, 2)
            assert claimed is not None and claimed.id == another.id
            assert not dispatcher.serves(QUEUE)

    run(scenario)


def test_a_second_worker_with_a_taken_name_is_refused_409() -> None:
    async def scenario() -> None:
        async with dispatching() as (_, dispatcher):
            await dispatcher.connect(RecordingLink("one"))
            with pytest.raises(HeraldError) as refused:
                await dispatcher.connect(RecordingLink("one"))
            assert (refused.value.code, refused.value.status) == (ErrorCode.CONFLICT, 409)
            await dispatcher.connect(RecordingLink("one", queue="cpu"))  # a name is per queue

    run(scenario)
