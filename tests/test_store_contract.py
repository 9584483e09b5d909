"""One contract, run unchanged against every Store: the embedded MemoryStore and the
MongoStore (on SecantusDB, a MongoDB wire-protocol server started by the fixtures)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from core.errors import HeraldError
from core.model import Execution, PublishItem, Status, new_execution_id
from core.store.base import Store
from core.store.memory import MemoryStore

Scenario = Callable[..., Awaitable[Any]]


class Backend:
    """Makes started stores of one kind on the running loop; several stores of one
    backend share the data, like several Herald processes on one database."""

    def __init__(self, kind: str, target: Any = None) -> None:
        self.kind = kind
        self.target = target
        self._memory: MemoryStore | None = None

    @property
    def shared_by_processes(self) -> bool:
        return self.kind == "mongo"

    async def store(self) -> Store:
        if self.kind == "memory":
            if self._memory is None:
                self._memory = MemoryStore()
            return self._memory
        from core.store.mongo import MongoStore

        store = MongoStore(self.target.uri, self.target.database, "majority")
        await store.start()
        return store

    def run(self, scenario: Scenario, stores: int = 1) -> Any:
        """``scenario(*stores)`` on a fresh event loop; closes the stores after."""

        async def main() -> Any:
            made = [await self.store() for _ in range(stores)]
            try:
                return await asyncio.wait_for(scenario(*made), 60)
            finally:
                for s in made:
                    await s.close()

        return asyncio.run(main())


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.mongo)])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "mongo":
        return Backend("mongo", request.getfixturevalue("mongo_target"))
    return Backend("memory")


_clock = [time.time()]


def new_execution(owner: str = "alice", kind: str = "chat", queue: str | None = None, **fields: Any) -> Execution:
    """A fresh document; creation times strictly increase so listing order is exact."""
    _clock[0] = max(time.time(), _clock[0] + 0.001)
    return Execution(
        id=new_execution_id(),
        owner=owner,
        kind=kind,
        queue=queue,
        input={"q": "why?", "n": [1, 2]},
        created_at=_clock[0],
        updated_at=_clock[0],
        **fields,
    )


def tok(text: str, key: str | None = None) -> PublishItem:
    return PublishItem("token", {"text": text}, key)


async def created(store: Store, **kw: Any) -> Execution:
    ex = new_execution(**kw)
    await store.create_execution(ex)
    return ex


# --- executions ---------------------------------------------------------------------
def test_create_and_get_round_trip(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        ex = await created(store, queue="gpu")
        got = await store.get_execution(ex.id)
        assert got is not None
        assert got.to_public() == ex.to_public()
        assert got.status is Status.PENDING and got.last_seq == 0
        assert await store.get_execution("ex_nope") is None

    backend.run(scenario)


def test_get_returns_a_copy(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        ex = await created(store)
        got = await store.get_execution(ex.id)
        assert got is not None
        got.progress = 42
        got.status = Status.FAILED
        again = await store.get_execution(ex.id)
        assert again is not None and again.progress == 0 and again.status is Status.PENDING

    backend.run(scenario)


def test_list_newest_first_with_filters_and_paging(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        a1 = await created(store, owner="alice", kind="chat")
        b1 = await created(store, owner="bob", kind="chat")
        a2 = await created(store, owner="alice", kind="diagnosis", queue="q1")
        a3 = await created(store, owner="alice", kind="chat")
        await store.append(a3.id, [tok("x")])

        ids = [e.id for e in await store.list_executions(owner="alice")]
        assert ids == [a3.id, a2.id, a1.id]
        assert [e.id for e in await store.list_executions(owner=None)] == [a3.id, a2.id, b1.id, a1.id]
        assert [e.id for e in await store.list_executions(owner="alice", kind="chat")] == [a3.id, a1.id]
        assert [e.id for e in await store.list_executions(owner="alice", status=Status.RUNNING)] == [a3.id]
        assert [e.id for e in await store.list_executions(owner=None, queue="q1")] == [a2.id]
        page1 = await store.list_executions(owner=None, limit=2)
        assert [e.id for e in page1] == [a3.id, a2.id]
        page2 = await store.list_executions(owner=None, limit=2, before=page1[-1].id)
        assert [e.id for e in page2] == [b1.id, a1.id]
        assert await store.list_executions(owner=None, limit=2, before=a1.id) == []
        assert await store.list_executions(owner="carol") == []

    backend.run(scenario)


# --- append -------------------------------------------------------------------------
def test_append_numbers_from_one_after_the_status_event(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        ex = await created(store)
        plan = await store.append(ex.id, [PublishItem("progress", {"progress": 10, "stage": "fetch"})])
        assert plan.seqs == [2]
        assert [(e.seq, e.event, e.data) for e in plan.events] == [
            (1, "status", {"status": "running"}),
            (2, "progress", {"progress": 10, "stage": "fetch"}),
        ]
        plan = await store.append(ex.id, [tok("a"), tok("b"), tok("c")])
        assert plan.seqs == [3, 4, 5]
        doc = await store.get_execution(ex.id)
        assert doc is not None
        assert (doc.status, doc.progress, doc.stage, doc.last_seq) == (Status.RUNNING, 10, "fetch", 5)
        events = await store.events_after(ex.id, 0, 100)
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]
        assert [e.data.get("text") for e in events[2:]] == ["a", "b", "c"]

    backend.run(scenario)


def test_terminal_event_closes_the_stream(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        ex = await created(store)
        await store.append(ex.id, [tok("a")])
        plan = await store.append(ex.id, [PublishItem("complete", {"result": {"answer": 42}})])
        assert plan.seqs == [3]
        doc = await store.get_execution(ex.id)
        assert doc is not None and doc.status is Status.SUCCEEDED and doc.result == {"answer": 42}
        with pytest.raises(HeraldError) as refused:
            await store.append(ex.id, [tok("late")])
        assert refused.value.status == 409 and refused.value.code == "stream_closed"
        assert [e.seq for e in await store.events_after(ex.id, 0, 10)] == [1, 2, 3]

    backend.run(scenario)


def test_terminal_first_event_needs_no_status_event(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        ex = await created(store)
        plan = await store.append(ex.id, [PublishItem("error", {"error_type": "boom", "message": "no"})])
        assert [e.event for e in plan.events] == ["error"] and plan.seqs == [1]
        doc = await store.get_execution(ex.id)
        assert doc is not None and doc.status is Status.FAILED
        assert doc.error == {"error_type": "boom", "message": "no", "details": None}

    backend.run(scenario)


def test_idempotency_keys(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        ex = await created(store)
        first = await store.append(ex.id, [tok("a", key="k1"), tok("b", key="k2")])
        assert first.seqs == [2, 3]
        again = await store.append(ex.id, [tok("a", key="k1"), tok("c", key="k3"), tok("b", key="k2")])
        assert again.seqs == [2, 4, 3]
        assert [e.seq for e in again.events] == [4]
        repeated = await store.append(ex.id, [tok("d", key="k4"), tok("d", key="k4")])
        assert repeated.seqs == [5, 5] and len(repeated.events) == 1
        nothing = await store.append(ex.id, [tok("a", key="k1")])
        assert nothing.seqs == [2] and nothing.events == []
        assert [e.seq for e in await store.events_after(ex.id, 0, 100)] == [1, 2, 3, 4, 5]
        # After the terminal event, a known key still answers its seq: no 409.
        await store.append(ex.id, [PublishItem("complete", {}, key="done")])
        assert (await store.append(ex.id, [PublishItem("complete", {}, key="done")])).seqs == [6]

    backend.run(scenario)


def test_unknown_execution_is_404(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        with pytest.raises(HeraldError) as refused:
            await store.append("ex_missing", [tok("a")])
        assert refused.value.status == 404
        assert await store.events_after("ex_missing", 0, 10) == []

    backend.run(scenario)


def test_events_after_honours_cursor_and_limit(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        ex = await created(store)
        await store.append(ex.id, [tok(str(i)) for i in range(9)])  # seq 1..10
        assert [e.seq for e in await store.events_after(ex.id, 0, 3)] == [1, 2, 3]
        assert [e.seq for e in await store.events_after(ex.id, 7, 100)] == [8, 9, 10]
        assert await store.events_after(ex.id, 10, 100) == []
        event = (await store.events_after(ex.id, 4, 1))[0]
        assert (event.execution_id, event.seq, event.event, event.data) == (ex.id, 5, "token", {"text": "3"})

    backend.run(scenario)


def test_prune_drops_old_events_and_leaves_a_visible_gap(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        ex = await created(store)
        other = await created(store)
        await store.append(ex.id, [tok("old1"), tok("old2")])  # 1..3
        await store.append(other.id, [tok("old")])  # 1..2
        await asyncio.sleep(0.02)
        cut = time.time()
        await asyncio.sleep(0.02)
        await store.append(ex.id, [tok("new1"), tok("new2")])  # 4..5
        assert await store.prune(cut) == 5
        assert [e.seq for e in await store.events_after(ex.id, 0, 10)] == [4, 5]  # first seq > after + 1
        assert [e.seq for e in await store.events_after(ex.id, 3, 10)] == [4, 5]
        assert await store.events_after(other.id, 0, 10) == []
        doc = await store.get_execution(ex.id)
        assert doc is not None and doc.last_seq == 5
        assert (await store.append(ex.id, [tok("more")])).seqs == [6]
        assert await store.prune(cut) == 0

    backend.run(scenario)


# --- concurrency --------------------------------------------------------------------
def _assert_dense(events: list[Any], n: int) -> None:
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, n + 1)), f"gaps or duplicates: {seqs}"


def test_concurrent_appends_to_one_execution(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        ex = await created(store)
        plans = await asyncio.gather(*(store.append(ex.id, [tok(f"{i}a"), tok(f"{i}b")]) for i in range(40)))
        got = sorted(s for p in plans for s in p.seqs)
        assert got == list(range(2, 82))  # seq 1 is the status event
        _assert_dense(await store.events_after(ex.id, 0, 1000), 81)
        doc = await store.get_execution(ex.id)
        assert doc is not None and doc.last_seq == 81

    backend.run(scenario)


def test_concurrent_appends_from_two_processes(backend: Backend) -> None:
    """Two stores with their own connections, as two Herald processes on one database."""
    if not backend.shared_by_processes:
        pytest.skip("the embedded store lives in one process")

    async def scenario(one: Store, two: Store) -> None:
        ex = await created(one)

        async def writer(store: Store, name: str, count: int) -> list[int]:
            seqs: list[int] = []
            for i in range(count):
                plan = await store.append(ex.id, [tok(f"{name}{i}"), tok(f"{name}{i}'", key=f"{name}-{i}")])
                seqs += plan.seqs
            return seqs

        results = await asyncio.gather(
            *(writer(s, f"{s_i}.{w}", 10) for s_i, s in enumerate((one, two)) for w in range(3))
        )
        got = sorted(s for r in results for s in r)
        assert got == list(range(2, 122))
        events = await two.events_after(ex.id, 0, 1000)
        _assert_dense(events, 121)
        texts = [e.data["text"] for e in events[1:]]
        assert len(set(texts)) == 120
        # Keys stay idempotent across processes.
        again = await one.append(ex.id, [tok("x", key="1.2-9")])
        assert again.events == [] and again.seqs[0] in got

    backend.run(scenario, stores=2)


# --- state every process shares: tickets, leases, the feed's cursor -------------------
def test_ticket_is_redeemed_once_then_only_for_its_stream_reconnects(backend: Backend) -> None:
    async def scenario(a: Store, b: Store) -> None:
        now = time.time()
        claims = {"sub": "alice", "scope": ["executions:read"], "exp": now + 60}
        await a.put_ticket("tk_1", claims, now + 30, now + 60)
        # Another process redeems it (the stores share the data, as processes do).
        assert await b.redeem_ticket("tk_1", "/s/1", False, now) == claims
        assert await a.redeem_ticket("tk_1", "/s/1", False, now) is None  # single use
        assert await a.redeem_ticket("tk_1", "/s/2", True, now) is None  # another stream
        assert await a.redeem_ticket("tk_1", "/s/1", True, now + 45) == claims  # its reconnect, past the window
        assert await a.redeem_ticket("tk_1", "/s/1", True, now + 61) is None  # never past the token's exp
        await a.put_ticket("tk_2", claims, now + 30, now + 60)
        assert await a.redeem_ticket("tk_2", "/s/1", False, now + 31) is None  # first use too late
        assert await a.redeem_ticket("tk_2", "/s/3", True, now + 1) == claims  # a first use may carry Last-Event-ID
        assert await a.redeem_ticket("tk_missing", "/s/1", False, now) is None

    if backend.shared_by_processes:
        backend.run(scenario, stores=2)
    else:
        backend.run(lambda s: scenario(s, s))


def test_ticket_redeemed_by_racing_processes_opens_one_stream(backend: Backend) -> None:
    async def scenario(*stores: Store) -> None:
        now = time.time()
        await stores[0].put_ticket("tk_race", {"sub": "a", "scope": [], "exp": now + 60}, now + 30, now + 60)
        got = await asyncio.gather(*(s.redeem_ticket("tk_race", f"/s/{i}", False, now) for i, s in enumerate(stores)))
        assert sum(1 for g in got if g is not None) == 1

    backend.run(scenario, stores=3 if backend.shared_by_processes else 1)


def test_lease_is_held_by_one_holder_until_it_expires_or_is_released(backend: Backend) -> None:
    async def scenario(a: Store, b: Store) -> None:
        now = time.time()
        assert await a.acquire_lease("worker:q:w1", "p1", {"name": "w1"}, now + 10, now)
        assert not await b.acquire_lease("worker:q:w1", "p2", {"name": "w1"}, now + 10, now)
        assert await a.acquire_lease("worker:q:w1", "p1", {"name": "w1", "n": 2}, now + 20, now)  # renewal
        assert await b.acquire_lease("worker:q:w2", "p2", {"name": "w2"}, now + 10, now)
        assert await b.acquire_lease("other:x", "p2", {}, now + 10, now)
        listed = await a.leases("worker:q:", now)
        assert [(x["key"], x["holder"], x["name"]) for x in listed] == [
            ("worker:q:w1", "p1", "w1"),
            ("worker:q:w2", "p2", "w2"),
        ]
        assert listed[0]["n"] == 2
        await b.release_lease("worker:q:w1", "p2")  # not its holder: nothing happens
        assert not await b.acquire_lease("worker:q:w1", "p2", {}, now + 10, now)
        await a.release_lease("worker:q:w1", "p1")
        assert await b.acquire_lease("worker:q:w1", "p2", {"name": "w1"}, now + 10, now)
        # A holder that died stops renewing: its lease expires and is taken over.
        assert await a.acquire_lease("worker:q:w3", "dead", {}, now + 1, now)
        assert await b.acquire_lease("worker:q:w3", "p2", {}, now + 12, now + 2)
        assert [x["key"] for x in await a.leases("worker:", now + 11)] == ["worker:q:w3"]

    if backend.shared_by_processes:
        backend.run(scenario, stores=2)
    else:
        backend.run(lambda s: scenario(s, s))


def test_changed_since_lists_changes_oldest_first(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        first = await created(store, owner="feed-a")
        second = await created(store, owner="feed-b")
        mark = time.time()
        await asyncio.sleep(0.01)
        await store.append(second.id, [PublishItem("progress", {"progress": 10})])
        await asyncio.sleep(0.01)
        await store.append(first.id, [PublishItem("progress", {"progress": 20})])
        changed = await store.changed_since(owner=None, since=mark)
        ours = [e.id for e in changed if e.id in (first.id, second.id)]
        assert ours == [second.id, first.id]
        assert [e.id for e in await store.changed_since(owner="feed-a", since=mark)] == [first.id]

    backend.run(scenario)
