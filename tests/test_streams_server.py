"""``/api/streams``: several executions over one connection, on a real server with real
clients, on all three transports. Per-execution refusals and ends never close the
others; order and exactly-once hold per execution, across a reconnect too; the
connection counts once; bad requests get the contract's error shape."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from client.sse import SseMessage, SseParser
from core.multiplex import MAX_STREAMS
from tests.fixtures_server import Herald, read_ws

COMPLETE = {"event": "complete", "data": {"result": {"ok": True}}}


def streams_query(cursors: dict[str, int], **extra: Any) -> str:
    pairs = [("s", f"{eid}:{after}") for eid, after in cursors.items()] + list(extra.items())
    return urlencode(pairs)


async def streams_socket(h: Herald, token: str | None = None, query: str = "") -> WebSocketClientConnection:
    url = f"{h.ws_base}/api/streams" + (f"?{query}" if query else "")
    headers = {"Authorization": f"Bearer {token or h.mint()}"}
    conn = await websocket_connect(HTTPRequest(url, headers=headers, connect_timeout=5, request_timeout=5))
    assert await read_ws(conn) == {"control": "ready", "transport": "websocket"}
    return conn


def send(conn: WebSocketClientConnection, **op: Any) -> None:
    conn.write_message(json.dumps(op))


async def until(conn: WebSocketClientConnection, predicate: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Messages up to and including the first that ``predicate`` accepts."""
    out: list[dict[str, Any]] = []
    while True:
        message = await read_ws(conn, timeout)
        assert message is not None, f"closed {conn.close_code} {conn.close_reason} after {out}"
        out.append(message)
        if predicate(message):
            return out


class StreamsSse:
    """A streaming ``GET /api/streams`` with ``Accept: text/event-stream``."""

    def __init__(self, h: Herald, query: str, token: str | None = None) -> None:
        self.status: int | None = None
        self.raw = bytearray()
        self.parser = SseParser()
        self.queue: asyncio.Queue[SseMessage | None] = asyncio.Queue()
        request = HTTPRequest(
            f"{h.base_url}/api/streams?{query}",
            headers={"Accept": "text/event-stream", "Authorization": f"Bearer {token or h.mint()}"},
            header_callback=self._on_header,
            streaming_callback=self._on_chunk,
            request_timeout=30,
        )
        self.response = asyncio.ensure_future(AsyncHTTPClient().fetch(request, raise_error=False))
        self.response.add_done_callback(lambda _: self.queue.put_nowait(None))

    def _on_header(self, line: str) -> None:
        if line.startswith("HTTP/"):
            self.status = int(line.split()[1])

    def _on_chunk(self, chunk: bytes) -> None:
        self.raw += chunk
        if self.status == 200:
            for message in self.parser.feed(chunk):
                self.queue.put_nowait(message)

    async def messages(self, count: int | None = None, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The next ``count`` messages (every one until the end when None), pings left out."""
        out: list[dict[str, Any]] = []
        while count is None or len(out) < count:
            message = await asyncio.wait_for(self.queue.get(), timeout)
            if message is None:
                assert count is None, f"ended after {out}"
                return out
            item = json.loads(message.data)
            if item.get("control") != "ping":
                if message.event != "control":
                    assert message.id == str(item["seq"]), "id: is the execution's seq"
                out.append(item)
        return out

    def close(self) -> None:
        if not self.response.done():
            self.response.cancel()


async def poll(h: Herald, query: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
    response = await h.fetch(f"/api/streams?{query}", token=token or h.mint(), timeout=20)
    return response.code, json.loads(response.body)


async def collect(conn: WebSocketClientConnection, enough: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Messages until ``enough(all so far)`` holds."""
    out: list[dict[str, Any]] = []
    while not enough(out):
        out += await until(conn, lambda m: True, timeout)
    return out


def seqs_of(messages: list[dict[str, Any]], execution_id: str) -> list[int]:
    return [m["seq"] for m in messages if "seq" in m and m["execution_id"] == execution_id]


# --- WebSocket ---------------------------------------------------------------------------------
def test_websocket_subscribe_several_executions_in_order_and_ended_keeps_the_socket(herald_run):
    async def scenario(h: Herald) -> None:
        a, b = (await h.create())["id"], (await h.create())["id"]
        await h.tokens_batch(a, 0, 3)  # a: 1 status + 3 tokens
        conn = await streams_socket(h)
        send(conn, op="subscribe", execution_id=a, after=2)
        send(conn, op="subscribe", execution_id=b)
        got = await collect(conn, lambda out: len(out) == 4)
        assert {"control": "subscribed", "execution_id": a} in got
        assert {"control": "subscribed", "execution_id": b} in got
        await h.tokens_batch(b, 0, 2)
        await h.tokens_batch(a, 3, 2)
        got += await collect(conn, lambda out: len(out) == 5)
        assert seqs_of(got, a) == [3, 4, 5, 6]
        assert seqs_of(got, b) == [1, 2, 3]
        await h.publish(a, COMPLETE)
        tail = await until(conn, lambda m: m.get("control") == "ended")
        assert tail[-1] == {"control": "ended", "execution_id": a}
        assert tail[-2]["event"] == "complete"
        await h.tokens_batch(b, 2, 1)  # b goes on over the same socket
        more = await until(conn, lambda m: "seq" in m)
        assert (more[-1]["execution_id"], more[-1]["seq"]) == (b, 4)
        conn.close()

    herald_run(scenario)


def test_websocket_refusals_name_the_execution_and_never_close_the_others(herald_run):
    async def scenario(h: Herald) -> None:
        mine = (await h.create())["id"]
        theirs = (await h.create(token=h.mint("bob")))["id"]
        conn = await streams_socket(h)
        send(conn, op="subscribe", execution_id=mine)
        await until(conn, lambda m: m.get("control") == "subscribed")
        refusals = {}
        for op in (
            {"op": "subscribe", "execution_id": "ex_nope"},
            {"op": "subscribe", "execution_id": theirs},
            {"op": "subscribe", "execution_id": mine, "after": 99},
            {"op": "subscribe", "execution_id": mine, "after": -1},
            {"op": "subscribe"},
        ):
            send(conn, **op)
            [error] = await until(conn, lambda m: m.get("control") == "error")
            refusals[json.dumps(op)] = error
        codes = [e["code"] for e in refusals.values()]
        assert codes == ["not_found", "forbidden", "cursor_out_of_range", "cursor_out_of_range", "bad_request"]
        assert [e.get("execution_id") for e in refusals.values()] == ["ex_nope", theirs, mine, mine, None]
        assert list(refusals.values())[2]["details"]["last_seq"] == 0
        # A refused re-subscribe left the first subscription alone.
        await h.tokens_batch(mine, 0, 1)
        [event] = await until(conn, lambda m: "seq" in m)
        assert (event["execution_id"], event["seq"]) == (mine, 1)
        # An unknown op is a bad request for the whole connection, as on a single stream.
        send(conn, op="dance")
        await until(conn, lambda m: m.get("control") == "error")
        assert await read_ws(conn) is None
        assert conn.close_code == 4400

    herald_run(scenario)


def test_websocket_unsubscribe_stops_that_execution_only(herald_run):
    async def scenario(h: Herald) -> None:
        a, b = (await h.create())["id"], (await h.create())["id"]
        conn = await streams_socket(h, query=streams_query({a: 0, b: 0}))
        await until(conn, lambda m: m.get("control") == "subscribed" and m["execution_id"] == b)
        send(conn, op="unsubscribe", execution_id=a)
        assert await until(conn, lambda m: True) == [{"control": "unsubscribed", "execution_id": a}]
        await h.tokens_batch(a, 0, 2)
        await h.tokens_batch(b, 0, 2)
        got = await until(conn, lambda m: m.get("seq") == 3)
        assert seqs_of(got, b) == [1, 2, 3] and seqs_of(got, a) == []
        assert len(h.core.hubs.get(a).subs) == 0  # type: ignore[union-attr]
        conn.close()

    herald_run(scenario)


def test_websocket_refresh_must_still_read_every_execution(herald_run):
    async def scenario(h: Herald) -> None:
        a, b = (await h.create())["id"], (await h.create())["id"]
        conn = await streams_socket(h, token=h.mint(), query=streams_query({a: 0, b: 0}))
        await until(conn, lambda m: m.get("control") == "subscribed" and m["execution_id"] == b)
        send(conn, op="auth", token=h.mint("alice", scopes=[], executions=[a]))
        [refused] = await until(conn, lambda m: m.get("control") == "error")
        assert refused["code"] == "forbidden"
        assert await read_ws(conn) is None and conn.close_code == 4403  # as on a single stream

        conn = await streams_socket(h, token=h.mint(), query=streams_query({a: 0, b: 0}))
        await until(conn, lambda m: m.get("control") == "subscribed" and m["execution_id"] == b)
        send(conn, op="auth", token=h.mint(scopes=[], executions=[a, b]))
        assert (await until(conn, lambda m: "control" in m))[-1]["control"] == "auth_ok"
        conn.close()

    herald_run(scenario)


def test_websocket_more_than_the_limit_is_refused_per_execution(herald_run):
    async def scenario(h: Herald) -> None:
        ids = [(await h.create())["id"] for _ in range(MAX_STREAMS + 1)]
        conn = await streams_socket(h)
        for eid in ids:
            send(conn, op="subscribe", execution_id=eid)
        got = await until(conn, lambda m: m.get("control") == "error", timeout=10)
        assert got[-1]["execution_id"] == ids[-1] and got[-1]["details"]["max_streams"] == MAX_STREAMS
        conn.close()

    herald_run(scenario)


# --- SSE --------------------------------------------------------------------------------------
def test_sse_several_executions_refusals_inline_and_the_end_after_the_last(herald_run):
    async def scenario(h: Herald) -> None:
        a, b = (await h.create())["id"], (await h.create())["id"]
        theirs = (await h.create(token=h.mint("bob")))["id"]
        await h.tokens_batch(a, 0, 3)
        stream = StreamsSse(h, streams_query({a: 2, b: 0, "ex_nope": 0, theirs: 0}))
        first = await stream.messages(1)
        assert first == [{"control": "ready", "transport": "sse"}]
        opening = await stream.messages(6)  # 2 subscribed, 2 errors, a's seq 3 and 4
        errors = {m["execution_id"]: m["code"] for m in opening if m.get("control") == "error"}
        assert errors == {"ex_nope": "not_found", theirs: "forbidden"}
        assert seqs_of(opening, a) == [3, 4]
        await h.tokens_batch(b, 0, 2)
        await h.publish(a, COMPLETE)
        await h.publish(b, COMPLETE)
        rest = await stream.messages(None)
        assert seqs_of(rest, a) == [5] and seqs_of(rest, b) == [1, 2, 3, 4]
        assert [m["execution_id"] for m in rest if m.get("control") == "ended"] == [a, b]
        assert stream.status == 200

    herald_run(scenario)


def test_sse_exactly_once_across_a_reconnect_with_the_clients_own_set(herald_run):
    async def scenario(h: Herald) -> None:
        a, b = (await h.create())["id"], (await h.create())["id"]
        cursors = {a: 0, b: 0}
        seen: dict[str, list[int]] = {a: [], b: []}

        async def read_events(stream: StreamsSse, count: int) -> None:
            while count:
                for m in await stream.messages(1):
                    if "seq" in m:
                        seen[m["execution_id"]].append(m["seq"])
                        cursors[m["execution_id"]] = m["seq"]
                        count -= 1

        for round_ in range(3):
            stream = StreamsSse(h, streams_query(cursors))
            await h.tokens_batch(a, round_ * 2, 2)
            await h.tokens_batch(b, round_ * 2, 2)
            # The first publish also stores the status event; round 1 and 2 replay one of a's.
            await read_events(stream, 6 if round_ == 0 else 5)
            stream.close()
            await h.tokens_batch(a, 100 + round_, 1)  # published while disconnected
        final = StreamsSse(h, streams_query(cursors))
        await read_events(final, 1)
        assert seen[a] == list(range(1, 11))
        assert seen[b] == [1, 2, 3, 4, 5, 6, 7]
        final.close()

    herald_run(scenario)


def test_sse_and_longpoll_bad_requests_have_the_error_shape(herald_run):
    async def scenario(h: Herald) -> None:
        many = {f"ex_{i}": 0 for i in range(MAX_STREAMS + 1)}
        cases = {
            "": "bad_request",
            streams_query(many): "bad_request",
            "s=ex_a:1&s=ex_a:2": "bad_request",
            "s=ex_a:x": "cursor_out_of_range",
            "s=ex_a:-3": "cursor_out_of_range",
            "s=not%20an%20id:0": "bad_request",
        }
        for query, code in cases.items():
            for accept in ("text/event-stream", "application/json"):
                response = await h.fetch(f"/api/streams?{query}", token=h.mint(), headers={"Accept": accept})
                assert response.code == 400, (query, accept)
                assert json.loads(response.body)["error"]["code"] == code, (query, accept)
        response = await h.fetch("/api/streams?s=ex_a:0")
        assert response.code == 401 and json.loads(response.body)["error"]["code"] == "unauthorized"

    herald_run(scenario)


# --- long-poll ----------------------------------------------------------------------------------
def test_longpoll_page_cursors_ended_resets_and_errors(herald_run):
    async def scenario(h: Herald) -> None:
        a, b, c = (await h.create())["id"], (await h.create())["id"], (await h.create())["id"]
        await h.tokens_batch(a, 0, 2)
        await h.publish(b, COMPLETE)
        code, page = await poll(h, streams_query({a: 1, b: 0, c: 0, "ex_nope": 0}))
        assert code == 200
        assert [(e["execution_id"], e["seq"]) for e in page["events"]] == [(a, 2), (a, 3), (b, 1)]
        assert page["cursors"] == {a: 3, b: 1, c: 0}
        assert page["ended"] == [b]
        assert page["resets"] == {}
        assert page["errors"]["ex_nope"]["code"] == "not_found"
        # Held until any execution has something, then answered within milliseconds.
        held = asyncio.ensure_future(poll(h, streams_query({a: 3, c: 0}, wait=10)))
        await asyncio.sleep(0.3)
        assert not held.done()
        await h.tokens_batch(c, 0, 1)
        code, page = await asyncio.wait_for(held, 3)
        assert [(e["execution_id"], e["seq"]) for e in page["events"]] == [(c, 1), (c, 2)]
        assert page["cursors"] == {a: 3, c: 2} and page["ended"] == [] and page["errors"] == {}
        # A cursor past the newest event is that execution's error; the page answers at once.
        code, page = await poll(h, streams_query({a: 3, c: 9}, wait=10))
        assert page["errors"][c]["code"] == "cursor_out_of_range" and page["cursors"] == {a: 3}

    herald_run(scenario)


def test_longpoll_retention_reset_for_one_execution(herald_run):
    async def scenario(h: Herald) -> None:
        a, b = (await h.create())["id"], (await h.create())["id"]
        await h.tokens_batch(a, 0, 4)
        await h.core.prune(float("inf"))  # retention dropped every event
        code, page = await poll(h, streams_query({a: 1, b: 0}, wait=5))
        assert code == 200 and page["events"] == []
        assert page["resets"][a]["last_seq"] == 5 and page["cursors"] == {a: 5, b: 0}

    herald_run(scenario)


def test_one_multiplexed_connection_counts_once(herald_run):
    async def scenario(h: Herald) -> None:
        ids = [(await h.create())["id"] for _ in range(5)]
        stream = StreamsSse(h, streams_query(dict.fromkeys(ids, 0)))
        await stream.messages(1 + len(ids))
        assert len(h.core.sessions) == 1
        assert h.core.metrics.connections["sse"] == 1
        stream.close()

    herald_run(scenario, max_connections_per_subject=1)


def test_a_turned_off_transport_is_a_bad_request(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        response = await h.fetch(f"/api/streams?s={ex}:0", token=h.mint(), headers={"Accept": "text/event-stream"})
        assert response.code == 400
        assert json.loads(response.body)["error"]["details"]["transports"] == ["longpoll"]

    herald_run(scenario, transports=("longpoll",))
