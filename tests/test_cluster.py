"""Several processes behind a plain load balancer (nginx round-robin, no stickiness,
deploy/nginx/herald.conf) on one MongoDB-protocol server and one Redis: any process
serves any request, and losing one process or Redis costs seconds, not correctness.

The followers here record exactly what the server sends (no client-side dedupe), so a
duplicate or an out-of-order event anywhere fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import websocket_connect

from client.sse import SseParser
from tests.fixtures_cluster import Cluster

pytestmark = pytest.mark.mongo


async def call(
    url: str, method: str = "GET", token: str | None = None, body: Any = None, timeout: float = 20, **headers: str
) -> HTTPResponse:
    h = dict(headers)
    if token:
        h["Authorization"] = f"Bearer {token}"
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    request = HTTPRequest(url, method=method, body=payload, headers=h, request_timeout=timeout)
    return await AsyncHTTPClient().fetch(request, raise_error=False)


async def create(c: Cluster, token: str) -> str:
    response = await call(c.url + "/api/executions", "POST", token, {"kind": "chat"})
    assert response.code == 201, response.body
    return json.loads(response.body)["id"]


async def publish(base: str, token: str, ex: str, items: list[dict[str, Any]], tries: int = 20) -> list[int]:
    """Publish with an idempotency key per item, retrying through errors (a process
    may be gone): stored once, whatever happens."""
    for attempt in range(tries):
        response = await call(f"{base}/api/executions/{ex}/events", "POST", token, items, timeout=10)
        if response.code == 202:
            return json.loads(response.body)["seq"]
        assert response.code in (502, 503, 504, 599), (response.code, response.body)
        await asyncio.sleep(0.1 * (attempt + 1))
    raise AssertionError("publish never acknowledged")


# --- raw followers -------------------------------------------------------------------
async def poll_follower(base: str, token: str, ex: str, seen: list[int], stop_at: int) -> None:
    """``?after=N&wait=5``, following ``next_after`` exactly as the contract says."""
    after = 0
    while after < stop_at:
        response = await call(f"{base}/api/executions/{ex}/events?after={after}&wait=5", token=token)
        if response.code != 200:
            await asyncio.sleep(0.2)
            continue
        page = json.loads(response.body)
        seen.extend(e["seq"] for e in page["events"])
        assert page["next_after"] >= after, (after, page["next_after"])
        after = page["next_after"]


async def sse_follower(base: str, token: str, ex: str, seen: list[int], stop_at: int) -> None:
    parser = SseParser()

    def on_chunk(chunk: bytes) -> None:
        for message in parser.feed(chunk):
            if message.event != "control":
                seen.append(json.loads(message.data)["seq"])

    request = HTTPRequest(
        f"{base}/api/executions/{ex}/events",
        headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
        streaming_callback=on_chunk,
        request_timeout=60,
    )
    await AsyncHTTPClient().fetch(request, raise_error=False)
    assert seen and seen[-1] == stop_at


async def ws_follower(base: str, token: str, ex: str, seen: list[int], stop_at: int) -> None:
    url = base.replace("http", "ws", 1) + f"/api/executions/{ex}/events"
    conn = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"Bearer {token}"}))
    while True:
        message = await asyncio.wait_for(conn.read_message(), 30)
        if message is None:
            break
        item = json.loads(message)
        if "seq" in item:
            seen.append(item["seq"])
    assert seen and seen[-1] == stop_at


def assert_exactly_once_in_order(seen: list[int], last: int) -> None:
    assert seen == list(range(1, last + 1)), _describe(seen, last)


def _describe(seen: list[int], last: int) -> str:
    dups = len(seen) - len(set(seen))
    disorder = sum(1 for a, b in itertools.pairwise(seen) if b <= a)
    return f"{len(seen)} seen for {last}: {dups} duplicates, {disorder} out of order, first bad at {_first_bad(seen)}"


def _first_bad(seen: list[int]) -> int | None:
    for i, seq in enumerate(seen, start=1):
        if seq != i:
            return i
    return None


# --- tests ---------------------------------------------------------------------------
def test_followers_across_processes_get_every_event_once_in_order(cluster) -> None:
    """10 publishers spread by the balancer over 3 processes (so events reach each
    process's hubs through Redis out of seq order); long-poll, SSE and WebSocket
    followers, also spread, each get every event exactly once, in order."""
    c: Cluster = cluster(3)
    token = c.token()

    async def scenario() -> None:
        ex = await create(c, token)
        total = 1 + 10 * 30 + 1  # status, 300 tokens, complete
        followers: list[tuple[str, list[int], asyncio.Future[None]]] = []
        for kind, follow in (("longpoll", poll_follower), ("sse", sse_follower), ("websocket", ws_follower)):
            for _ in range(6 if kind == "longpoll" else 3):
                seen: list[int] = []
                followers.append((kind, seen, asyncio.ensure_future(follow(c.url, token, ex, seen, total))))
        await asyncio.sleep(1.0)

        async def publisher(n: int) -> None:
            for i in range(30):
                await publish(c.url, token, ex, [{"event": "token", "data": {"text": f"{n}.{i}"}}])
                await asyncio.sleep(random.uniform(0, 0.01))

        await asyncio.gather(*(publisher(n) for n in range(10)))
        await publish(c.url, token, ex, [{"event": "complete", "data": {"result": "done"}}])
        await asyncio.wait_for(asyncio.gather(*(f for _, _, f in followers)), 60)
        for kind, seen, _ in followers:
            assert_exactly_once_in_order(seen, total), kind

    asyncio.run(scenario())
    assert "Traceback" not in c.logs()


def test_any_process_serves_tickets_the_feed_and_worker_names(cluster) -> None:
    c: Cluster = cluster(3)
    token = c.token()

    async def scenario() -> None:
        ex = await create(c, token)
        await publish(c.url, token, ex, [{"event": "token", "data": {"text": "x"}}])
        # Tickets: issued by one process, redeemed by whichever the balancer picks.
        for i in range(6):
            ticket = json.loads((await call(c.url + "/api/tickets", "POST", token, {})).body)["ticket"]
            page = await call(f"{c.url}/api/executions/{ex}/events?ticket={ticket}")
            assert page.code == 200, (i, page.body)
            assert [e["seq"] for e in json.loads(page.body)["events"]] == [1, 2]
            again = await call(f"{c.url}/api/executions/{ex}/events?ticket={ticket}")
            assert again.code == 401  # single use, on every process
        for _ in range(3):
            ticket = json.loads((await call(c.url + "/api/tickets", "POST", token, {})).body)["ticket"]
            chunks: list[bytes] = []
            request = HTTPRequest(
                f"{c.url}/api/executions/feed?ticket={ticket}",
                headers={"Accept": "text/event-stream"},
                streaming_callback=chunks.append,
                request_timeout=1.0,
            )
            with contextlib.suppress(HTTPClientError):  # the stream is cut by the timeout
                await AsyncHTTPClient().fetch(request)
            assert b"event: snapshot" in b"".join(chunks), b"".join(chunks)[:300]
        # The feed's long-poll cursor: an idle dashboard's polls are held on every process.
        first = json.loads((await call(c.url + "/api/executions/feed", token=token)).body)
        assert first["type"] == "snapshot" and any(e["id"] == ex for e in first["executions"])
        version = first["version"]
        for _ in range(3):  # on whichever processes the balancer picks
            began = time.monotonic()
            answer = json.loads((await call(f"{c.url}/api/executions/feed?since={version}&wait=1", token=token)).body)
            held = time.monotonic() - began
            assert answer["type"] == "changes" and answer["executions"] == [], answer
            assert held >= 0.95, f"answered after {held:.2f} s of 1: the feed's cursor is not held on every process"
            version = answer["version"]
        # ... and a change made through any process wakes a poll held on any other.
        held = [
            asyncio.ensure_future(call(f"{p.base_url}/api/executions/feed?since={version}&wait=20", token=token))
            for p in c.processes
        ]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await call(f"{c.processes[0].base_url}/api/executions/{ex}/cancel", "POST", token, {})
        for answer in await asyncio.wait_for(asyncio.gather(*held), 10):
            body = json.loads(answer.body)
            assert [e["status"] for e in body["executions"] if e["id"] == ex] == ["cancelled"], body
        assert time.monotonic() - started < 3
        # Worker names are unique per queue across every process.
        worker = c.token("gpu", ("workers",))

        async def connect(base: str, name: str) -> tuple[Any, dict[str, Any]]:
            url = base.replace("http", "ws", 1) + f"/api/workers/connect?queue=q1&name={name}"
            conn = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"Bearer {worker}"}))
            return conn, json.loads(await asyncio.wait_for(conn.read_message(), 5))

        a, hello = await connect(c.processes[0].base_url, "w1")
        assert hello["control"] == "ready"
        b, refused = await connect(c.processes[1].base_url, "w1")
        assert refused == {"control": "error", "code": "conflict", "message": refused["message"]}
        assert await asyncio.wait_for(b.read_message(), 5) is None and b.close_code == 4409
        queues = json.loads((await call(f"{c.processes[2].base_url}/api/queues", token=token)).body)["queues"]
        assert [w["name"] for q in queues if q["name"] == "q1" for w in q["workers"]] == ["w1"]
        a.close()
        await asyncio.sleep(0.5)  # released on disconnect: the name is free on every process
        b, hello = await connect(c.processes[1].base_url, "w1")
        assert hello["control"] == "ready"
        b.close()

    asyncio.run(scenario())
    assert "Traceback" not in c.logs()


def test_a_redis_outage_delays_other_processes_about_a_second(cluster, redis_server) -> None:
    """Subscribers of the publishing process get events at once, those of another
    process within about a second from the store; publishes are not slowed; one
    warning per outage."""
    c: Cluster = cluster(2)
    token = c.token()
    a, b = (p.base_url for p in c.processes)

    async def scenario() -> None:
        ex = await create(c, token)
        got: dict[str, list[tuple[int, float]]] = {"a": [], "b": []}

        async def follow(base: str, name: str) -> None:
            url = base.replace("http", "ws", 1) + f"/api/executions/{ex}/events"
            conn = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"Bearer {token}"}))
            while (message := await conn.read_message()) is not None:
                item = json.loads(message)
                if "seq" in item:
                    got[name].append((item["seq"], time.monotonic()))

        followers = [asyncio.ensure_future(follow(a, "a")), asyncio.ensure_future(follow(b, "b"))]
        await asyncio.sleep(0.5)
        await publish(a, token, ex, [{"event": "token", "data": {"text": "before"}}])
        await asyncio.sleep(0.3)
        redis_server.stop()
        await asyncio.sleep(0.3)
        sent: dict[int, float] = {}
        for i in range(6):
            began = time.monotonic()
            [seq] = await publish(a, token, ex, [{"event": "token", "data": {"text": f"during {i}"}}])
            assert time.monotonic() - began < 1.0, "a publish waited for Redis"
            sent[seq] = began
            await asyncio.sleep(0.3)
        await asyncio.sleep(2.5)
        for name, limit in (("a", 0.5), ("b", 2.5)):
            arrived = dict(got[name])
            for seq, at in sent.items():
                assert seq in arrived, (name, seq, got[name])
                assert arrived[seq] - at < limit, (name, seq, arrived[seq] - at)
        redis_server.start()
        await asyncio.sleep(2.0)
        await publish(a, token, ex, [{"event": "complete", "data": {}}])
        await asyncio.wait_for(asyncio.gather(*followers), 10)
        for name in ("a", "b"):
            assert [seq for seq, _ in got[name]] == list(range(1, max(sent) + 2)), name

    asyncio.run(scenario())
    logs = c.logs()
    assert "Traceback" not in logs
    for process in c.processes:
        with open(process.log_path, errors="replace") as fh:
            lines = [line for line in fh if "redis" in line.lower() and "WARNING" in line]
        assert 1 <= len(lines) <= 4, lines  # the outage, and its end: not one per publish


def test_killing_a_process_costs_its_subscribers_a_reconnect(cluster) -> None:
    """kill -9 of one of 3 processes while followers (spread by nginx) listen and a
    publisher publishes through nginx: nothing acknowledged is lost, every follower
    resumes exactly once, and gets the first event published after the kill within a
    few seconds (measured precisely in docs/performance.md)."""
    c: Cluster = cluster(3)
    token = c.token()

    async def scenario() -> None:
        from client import HeraldClient

        ex = await create(c, token)
        client = HeraldClient(c.url, token)
        results: list[list[tuple[int, float]]] = []

        async def follow(transport: str) -> None:
            got: list[tuple[int, float]] = []
            results.append(got)
            async for event in client.follow(ex, transport=transport, idle_timeout=10, first_delay=0.05):
                got.append((event["seq"], time.monotonic()))

        followers = [asyncio.ensure_future(follow(t)) for t in ("websocket", "sse", "longpoll") for _ in range(10)]
        await asyncio.sleep(1.5)
        stop = asyncio.Event()
        acked: list[tuple[int, float]] = []

        async def publisher() -> None:
            i = 0
            while not stop.is_set():
                began = time.monotonic()
                [seq] = await publish(c.url, token, ex, [{"event": "token", "data": {"text": str(i)}, "key": f"k{i}"}])
                acked.append((seq, began))
                i += 1
                await asyncio.sleep(0.1)

        running = asyncio.ensure_future(publisher())
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        c.processes[0].kill()
        await asyncio.sleep(6.0)
        stop.set()
        await running
        await publish(c.url, token, ex, [{"event": "complete", "data": {}, "key": "end"}])
        await asyncio.wait_for(asyncio.gather(*followers), 30)
        last = max(seq for seq, _ in acked) + 1
        first_after = min(seq for seq, at in acked if at > killed_at + 0.2)
        for got in results:
            seqs = [seq for seq, _ in got]
            assert seqs == list(range(1, last + 1))  # nothing lost (the client drops nothing here)
            arrived = dict(got)[first_after]
            assert arrived - killed_at < 5.0, arrived - killed_at

    asyncio.run(scenario())
