"""Delivery order on every transport, against a real server on a real port.

Replay then live, resume by ``after`` and ``Last-Event-ID``, a transport switch mid-
stream, long-poll wake-up latency, fan-out to 100 subscribers, terminal events closing
each kind of stream, and 409 after the terminal event.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from client.api import ApiError
from tests.fixtures_server import Herald, read_ws, ws_until_closed

TRANSPORTS = ("websocket", "sse", "longpoll")


def texts(events: list[dict]) -> list[str]:
    return [e["data"]["text"] for e in events if e["event"] == "token"]


def assert_in_order(events: list[dict], first: int, last: int) -> None:
    assert [e["seq"] for e in events] == list(range(first, last + 1))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_replays_then_follows_live_in_order(herald_run, transport):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        await h.tokens_batch(ex, 0, 5)  # seq 1 = status running, 2..6 tokens
        follower = h.client().follow(ex, transport=transport, wait=5)
        seen = []
        async for event in follower:
            seen.append(event)
            if len(seen) == 6:
                await h.tokens_batch(ex, 5, 3)
                await h.publish(ex, {"event": "complete", "data": {"result": 42}})
        assert_in_order(seen, 1, 10)
        assert seen[0]["event"] == "status" and seen[0]["data"] == {"status": "running"}
        assert texts(seen) == [f"t{i}" for i in range(8)]
        assert seen[-1]["event"] == "complete" and seen[-1]["execution_id"] == ex

    herald_run(scenario)


def test_websocket_resumes_by_after(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        await h.tokens_batch(ex, 0, 9)  # seq 1..10
        conn = await h.websocket(ex, after=4)
        assert (await read_ws(conn))["control"] == "ready"
        got = [await read_ws(conn) for _ in range(6)]
        assert_in_order(got, 5, 10)
        conn.close()

    herald_run(scenario)


def test_sse_resumes_by_after_and_last_event_id_wins(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        await h.tokens_batch(ex, 0, 9)  # seq 1..10
        by_after = h.sse(ex, after=7)
        assert_in_order(await by_after.events(3), 8, 10)
        by_header = h.sse(ex, after=2, headers={"Last-Event-ID": "8"})
        assert_in_order(await by_header.events(2), 9, 10)
        # Both stay live: the next event reaches both, exactly once.
        await h.tokens_batch(ex, 9, 1)
        assert_in_order(await by_after.events(1), 11, 11)
        assert_in_order(await by_header.events(1), 11, 11)
        by_after.close()
        by_header.close()

    herald_run(scenario)


def test_longpoll_resumes_by_after_and_pages_with_limit(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        await h.tokens_batch(ex, 0, 9)  # seq 1..10
        token = h.mint()
        page = json.loads((await h.fetch(f"/api/executions/{ex}/events?after=3&limit=4", token=token)).body)
        assert_in_order(page["events"], 4, 7)
        assert page["next_after"] == 7 and page["done"] is False and page["reset"] is None
        page = json.loads((await h.fetch(f"/api/executions/{ex}/events?after=7", token=token)).body)
        assert_in_order(page["events"], 8, 10)
        # Nothing after the end and no wait: an empty page at once.
        page = json.loads((await h.fetch(f"/api/executions/{ex}/events?after=10", token=token)).body)
        assert page == {"events": [], "next_after": 10, "done": False, "reset": None}

    herald_run(scenario)


def test_switch_websocket_sse_longpoll_without_gap_or_duplicate(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        client = h.client()
        seen: list[dict] = []
        await h.tokens_batch(ex, 0, 4)  # 1..5
        cursor = 0
        for n, transport in enumerate(TRANSPORTS):
            follower = client.follow(ex, transport=transport, after=cursor, wait=5)
            async for event in follower:
                seen.append(event)
                cursor = event["seq"]
                if transport == "longpoll" and cursor == 5 + 10 * n:
                    await h.publish(ex, {"event": "complete", "data": {}})
                elif cursor == 5 + 10 * n:
                    # Events published while nobody is connected, then leave mid-stream.
                    await h.tokens_batch(ex, 100 * (n + 1), 10)
                    await follower.aclose()
                    break
        assert_in_order(seen, 1, 26)
        assert seen[-1]["event"] == "complete"

    herald_run(scenario)


def test_longpoll_wakes_within_milliseconds_of_a_publish(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        await h.tokens_batch(ex, 0, 1)  # seq 1, 2
        token = h.mint()
        poll = asyncio.ensure_future(h.fetch(f"/api/executions/{ex}/events?after=2&wait=10", token=token))
        await asyncio.sleep(0.3)  # the poll is held
        assert not poll.done()
        started = time.perf_counter()
        await h.tokens_batch(ex, 1, 1)
        response = await poll
        elapsed = time.perf_counter() - started
        page = json.loads(response.body)
        assert_in_order(page["events"], 3, 3)
        assert page["next_after"] == 3
        assert elapsed < 0.5, f"the poll answered {elapsed:.3f}s after the publish"

    herald_run(scenario)


def test_longpoll_wait_runs_out_with_an_empty_page(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        started = time.perf_counter()
        response = await h.fetch(f"/api/executions/{ex}/events?wait=1", token=h.mint())
        elapsed = time.perf_counter() - started
        assert json.loads(response.body) == {"events": [], "next_after": 0, "done": False, "reset": None}
        assert 0.9 < elapsed < 3

    herald_run(scenario)


def test_hundred_subscribers_across_transports_get_a_thousand_events_in_order(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        client = h.client()

        async def subscriber(transport: str) -> list[int]:
            seqs = []
            follower = client.follow(ex, transport=transport, wait=10, limit=1000)
            async for event in follower:
                seqs.append(event["seq"])
            return seqs

        tasks = [asyncio.ensure_future(subscriber(TRANSPORTS[i % 3])) for i in range(100)]
        # Publish part of the stream before everyone is connected, the rest live.
        await h.tokens_batch(ex, 0, 200)
        deadline = time.monotonic() + 10
        while len(h.core.sessions) < 60 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for start in range(200, 999, 100):
            await h.tokens_batch(ex, start, min(100, 998 - start))
        await h.publish(ex, {"event": "complete", "data": {}})
        results = await asyncio.wait_for(asyncio.gather(*tasks), 25)
        # seq 1 is the server's status event; 998 tokens and the complete make 1,000.
        assert await h.last_seq(ex) == 1000
        for seqs in results:
            assert seqs == list(range(1, 1001))

    herald_run(scenario, coalesce_ms=5.0)


def test_terminal_event_closes_websocket_with_1000(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        conn = await h.websocket(ex)
        assert (await read_ws(conn))["control"] == "ready"
        await h.publish(ex, [{"event": "token", "data": {"text": "a"}}, {"event": "complete", "data": {}}])
        got = await ws_until_closed(conn)
        assert [e["event"] for e in got] == ["status", "token", "complete"]
        assert conn.close_code == 1000
        # A finished stream replays and closes at once.
        again = await h.websocket(ex, after=1)
        got = await ws_until_closed(again)
        assert [m.get("event", m.get("control")) for m in got] == ["ready", "token", "complete"]
        assert again.close_code == 1000
        # Caught up on a finished stream: ready, then the close.
        done = await h.websocket(ex, after=3)
        assert [m.get("control") for m in await ws_until_closed(done)] == ["ready"]
        assert done.close_code == 1000

    herald_run(scenario)


def test_terminal_event_ends_sse_response(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        stream = h.sse(ex)
        first = await stream.next()
        assert first is not None and json.loads(first.data) == {"control": "ready", "transport": "sse"}
        await h.publish(ex, {"event": "error", "data": {"error_type": "boom", "message": "it broke"}})
        rest = await stream.until_end()
        # A terminal first event carries the status change itself: no status event.
        assert [(m.event, m.id) for m in rest] == [("error", "1")]
        assert (await stream.response).code == 200

    herald_run(scenario)


def test_terminal_event_marks_longpoll_done(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        token = h.mint()
        poll = asyncio.ensure_future(h.fetch(f"/api/executions/{ex}/events?wait=5", token=token))
        await asyncio.sleep(0.2)
        await h.publish(ex, [{"event": "token", "data": {"text": "a"}}, {"event": "cancelled", "data": {}}])
        page = json.loads((await poll).body)
        assert [e["event"] for e in page["events"]] == ["status", "token", "cancelled"]
        assert page["done"] is True and page["next_after"] == 3
        # A page that stops before the terminal event is not done.
        page = json.loads((await h.fetch(f"/api/executions/{ex}/events?limit=2", token=token)).body)
        assert page["done"] is False and page["next_after"] == 2
        page = json.loads((await h.fetch(f"/api/executions/{ex}/events?after=3&wait=5", token=token)).body)
        assert page == {"events": [], "next_after": 3, "done": True, "reset": None}

    herald_run(scenario)


def test_publishing_after_the_terminal_event_is_409_and_stores_nothing(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        await h.publish(ex, {"event": "complete", "data": {"result": "ok"}})
        assert await h.last_seq(ex) == 1
        for body in ({"event": "token", "data": {"text": "late"}}, {"event": "complete", "data": {}}):
            with pytest.raises(ApiError) as refused:
                await h.client().request("POST", f"/api/executions/{ex}/events", body)
            assert refused.value.status == 409 and refused.value.code == "stream_closed"
        assert await h.last_seq(ex) == 1
        doc = await h.client().get(ex)
        assert doc["status"] == "succeeded" and doc["result"] == "ok" and doc["progress"] == 100

    herald_run(scenario)


def test_a_longpoll_page_reads_one_page_of_the_log_not_all_of_it(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        for start in range(0, 3000, 1000):
            await h.tokens_batch(ex, start, 1000)
        store = h.core.store
        read = store.events_after
        returned: list[int] = []

        async def counting_events_after(execution_id: str, after: int, limit: int):
            events = await read(execution_id, after, limit)
            returned.append(len(events))
            return events

        store.events_after = counting_events_after  # type: ignore[method-assign]
        page = json.loads((await h.fetch(f"/api/executions/{ex}/events?after=5&limit=10", token=h.mint())).body)
        assert_in_order(page["events"], 6, 15)
        assert page["next_after"] == 15 and page["done"] is False
        assert sum(returned) <= 20, f"read {sum(returned)} events from the store for a page of 10"

    # 3,000 events published at once by one subject: above the default --publish-rate burst.
    herald_run(scenario, publish_rate=100_000.0, publish_burst=100_000.0)
