"""What each transport puts on the wire, and what it leaves behind: SSE headers,
``retry``, padding and ``ready``; heartbeats; the retention ``reset``; SSE framing on
chunked (HTTP/1.1) and plain (HTTP/1.0) responses read from a bare socket; and the
subscription and hub a disconnecting client must release."""

from __future__ import annotations

import asyncio
import gc
import json
import time

import pytest
from tornado.httputil import HTTPServerRequest

from client.sse import SseParser
from core.model import PublishItem
from tests.fixtures_server import Herald, RawWebSocket, read_ws, ws_until_closed


async def eventually(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_sse_headers_retry_padding_and_ready_first(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        stream = h.sse(ex)
        first = await stream.next()
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-cache"
        assert stream.headers["x-accel-buffering"] == "no"
        assert first.event == "control" and first.id == "0"  # the cursor, from the first line
        assert json.loads(first.data) == {"control": "ready", "transport": "sse"}
        raw = bytes(stream.raw)
        assert raw.startswith(b"id: 0\nretry: ") and stream.parser.retry_ms is not None
        comment = raw.split(b"\n")[3]
        assert comment.startswith(b":") and len(comment) >= 2048
        assert raw.index(comment) < raw.index(b"event: control")
        stream.close()

    herald_run(scenario)


def test_websocket_ready_comes_first_then_replay(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        await h.publish(ex, {"event": "token", "data": {"text": "x"}})
        conn = await h.websocket(ex)
        assert await read_ws(conn) == {"control": "ready", "transport": "websocket", "after": 0}
        assert (await read_ws(conn))["seq"] == 1
        conn.close()

    herald_run(scenario)


def test_heartbeats_sse_ping_control_and_websocket_ping_frames(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        stream = h.sse(ex)
        conn = await h.websocket(ex)
        pings: list[bytes] = []
        conn.on_ping = pings.append  # type: ignore[method-assign]
        assert (await read_ws(conn))["control"] == "ready"
        await stream.next()  # ready
        beat = await stream.next(timeout=3)
        assert beat.event == "control" and beat.id is None
        assert json.loads(beat.data) == {"control": "ping"}
        await eventually(lambda: len(pings) >= 1, timeout=3)
        # The connection is answered (Tornado's client pongs) and stays open.
        await h.publish(ex, {"event": "token", "data": {"text": "x"}})
        assert (await read_ws(conn))["seq"] == 1
        assert (await stream.events(1))[0]["seq"] == 1
        stream.close()
        conn.close()

    herald_run(scenario, heartbeat=1.0)


@pytest.mark.parametrize("transport", ["websocket", "sse", "longpoll"])
def test_retention_reset_carries_the_document_then_later_events(herald_run, transport):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        await h.tokens_batch(ex, 0, 4)  # 1..5
        assert await h.core.prune(time.time() + 1) == 5
        later = {"event": "token", "data": {"text": "later"}}
        if transport == "websocket":
            conn = await h.websocket(ex, after=2)
            assert (await read_ws(conn))["control"] == "ready"
            reset = await read_ws(conn)
            assert reset["control"] == "reset"
            document = reset["execution"]
            await h.publish(ex, later)
            event = await read_ws(conn)
            conn.close()
        elif transport == "sse":
            stream = h.sse(ex, after=2)
            assert json.loads((await stream.next()).data)["control"] == "ready"
            message = await stream.next()
            assert message.event == "control" and message.id is None
            document = json.loads(message.data)["execution"]
            assert json.loads(message.data)["control"] == "reset"
            await h.publish(ex, later)
            [event] = await stream.events(1)
            stream.close()
        else:
            page = json.loads((await h.fetch(f"/api/executions/{ex}/events?after=2", token=h.mint())).body)
            assert page["events"] == [] and page["next_after"] == 5 and page["done"] is False
            document = page["reset"]
            await h.publish(ex, later)
            page = json.loads((await h.fetch(f"/api/executions/{ex}/events?after=5", token=h.mint())).body)
            assert page["reset"] is None
            [event] = page["events"]
        assert document["id"] == ex and document["last_seq"] == 5 and document["status"] == "running"
        assert event["seq"] == 6 and event["data"] == {"text": "later"}

    herald_run(scenario)


def test_reset_on_a_finished_stream_ends_it(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        await h.publish(ex, [{"event": "token", "data": {"text": "x"}}, {"event": "complete", "data": {}}])
        await h.core.prune(time.time() + 1)
        conn = await h.websocket(ex)
        messages = await ws_until_closed(conn)
        assert [m["control"] for m in messages] == ["ready", "reset"]
        assert messages[1]["execution"]["status"] == "succeeded" and conn.close_code == 1000
        messages = await h.sse(ex).until_end()
        assert [json.loads(m.data)["control"] for m in messages] == ["ready", "reset"]
        page = json.loads((await h.fetch(f"/api/executions/{ex}/events", token=h.mint())).body)
        assert page["done"] is True and page["reset"]["status"] == "succeeded" and page["next_after"] == 3

    herald_run(scenario)


async def raw_sse(
    h: Herald, ex: str, version: str, extra: str = ""
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare-socket SSE request; returns the response head and the connection (keep
    the writer referenced: a collected StreamWriter closes the socket)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    writer.write(
        (
            f"GET /api/executions/{ex}/events HTTP/{version}\r\nHost: x\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {h.mint()}\r\n{extra}\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return head, reader, writer


async def read_response_end(reader: asyncio.StreamReader, chunked: bool) -> bytes:
    """The body up to its end: the last chunk (the connection stays open on HTTP/1.1)
    or the server closing the connection."""
    body = b""
    while True:
        data = await asyncio.wait_for(reader.read(65536), 5)
        body += data
        if not data or (chunked and dechunk(body)[1]):
            return body


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The payload of a chunked body, and whether the last chunk was seen."""
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out, True
        assert rest[size : size + 2] == b"\r\n", "chunk framing broken"
        out += rest[:size]
        body = rest[size + 2 :]
    return out, False


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_sse_framing_on_the_socket(herald_run, version):
    """Events written straight to the socket after ``flush()`` keep the response's
    framing: chunks on HTTP/1.1, plain bytes then a close on HTTP/1.0."""

    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        await h.publish(ex, {"event": "token", "data": {"text": "replayed"}})
        head, reader, writer = await raw_sse(h, ex, version)
        assert head.startswith(b"HTTP/1.1 200")
        chunked = b"transfer-encoding: chunked" in head.lower()
        assert chunked == (version == "1.1")
        # Live: single events, a batch, then the terminal event.
        await h.publish(ex, {"event": "token", "data": {"text": "live é"}})
        await h.publish(ex, [{"event": "token", "data": {"text": f"b{i}"}} for i in range(50)])
        await h.publish(ex, {"event": "complete", "data": {"result": "x" * 5000}})
        body = await read_response_end(reader, chunked)
        if chunked:
            body, ended = dechunk(body)
            assert ended
        parser = SseParser()
        messages = parser.feed(body)
        events = [json.loads(m.data) for m in messages if m.event != "control"]
        assert [e["seq"] for e in events] == list(range(1, 55))
        assert events[2]["data"]["text"] == "live é" and events[-1]["event"] == "complete"
        assert messages[0].event == "control"
        writer.close()

    herald_run(scenario)


def test_http10_keep_alive_sse_still_ends(herald_run):
    """An HTTP/1.0 keep-alive request gets no chunking and no length: only closing
    the connection can end the stream."""

    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        _head, reader, writer = await raw_sse(h, ex, "1.0", "Connection: keep-alive\r\n")
        await h.publish(ex, {"event": "complete", "data": {}})
        body = await read_response_end(reader, chunked=False)
        assert [m.event for m in SseParser().feed(body)] == ["control", "complete"]
        writer.close()

    herald_run(scenario)


@pytest.mark.parametrize("transport", ["websocket", "sse", "longpoll"])
def test_a_client_leaving_mid_stream_releases_its_subscription_and_hub(herald_run, transport):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        await h.publish(ex, {"event": "token", "data": {"text": "x"}})
        if transport == "websocket":
            conn = await h.websocket(ex)
            await read_ws(conn)
            leave = conn.close
        else:
            # A bare socket, so that leaving really closes the connection (cancelling
            # a Tornado client fetch does not).
            _reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
            accept = "text/event-stream" if transport == "sse" else "application/json"
            writer.write(
                (
                    f"GET /api/executions/{ex}/events?after=2&wait=30 HTTP/1.1\r\nHost: x\r\n"
                    f"Accept: {accept}\r\nAuthorization: Bearer {h.mint()}\r\n\r\n"
                ).encode()
            )
            leave = writer.close
        await eventually(lambda: len(h.core.sessions) == 1 and ex in h.core.hubs)
        hub = h.core.hubs.get(ex)
        assert len(hub.subs) == 1
        leave()
        await eventually(lambda: not h.core.sessions and ex not in h.core.hubs, timeout=6)
        assert not hub.subs
        metrics = (await h.fetch("/metrics")).body.decode()
        assert f'herald_connections{{transport="{transport}"}} 0.0' in metrics
        # Publishing with nobody listening still works.
        await h.core.publish(ex, [PublishItem("token", {"text": "y"})])
        assert await h.last_seq(ex) == 3

    herald_run(scenario)


def test_a_websocket_leaving_while_another_stays_keeps_the_hub(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        first, second = await h.websocket(ex), await h.websocket(ex)
        await read_ws(first)
        await read_ws(second)
        await eventually(lambda: len(h.core.hubs.get(ex).subs) == 2 if ex in h.core.hubs else False)
        first.close()
        await eventually(lambda: len(h.core.sessions) == 1)
        assert len(h.core.hubs.get(ex).subs) == 1
        await h.publish(ex, {"event": "token", "data": {"text": "x"}})
        assert [(await read_ws(second))["seq"] for _ in range(2)] == [1, 2]
        second.close()
        await eventually(lambda: ex not in h.core.hubs, timeout=6)

    herald_run(scenario)


def test_connection_limit_answers_429_and_4429(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        first = await h.websocket(ex)
        await read_ws(first)
        status, body = await h.sse(ex).refusal()
        assert status == 429 and body["error"]["code"] == "too_many_connections"
        response = await h.fetch(f"/api/executions/{ex}/events?wait=1", token=h.mint())
        assert response.code == 429 and int(response.headers["Retry-After"]) > 0
        second = await h.websocket(ex)
        assert (await ws_until_closed(second))[0]["code"] == "too_many_connections"
        assert second.close_code == 4429
        first.close()
        await eventually(lambda: not h.core.sessions)
        assert (await h.fetch(f"/api/executions/{ex}/events", token=h.mint())).code == 200

    herald_run(scenario, max_connections=1)


def test_a_websocket_that_never_answers_pings_is_closed(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        raw = await RawWebSocket.connect(h.port, f"/api/executions/{ex}/events", h.mint())
        assert (await raw.frame())[0] == 1  # ready
        pings = 0
        while True:
            opcode, payload = await raw.frame(timeout=3)
            if opcode == 9:
                pings += 1
                continue
            assert opcode == 8
            assert int.from_bytes(payload[:2], "big") == 1001 and payload[2:] == b"heartbeat_timeout"
            break
        assert pings >= 2
        raw.close()
        await eventually(lambda: not h.core.sessions)

    herald_run(scenario, heartbeat=0.3)


@pytest.mark.parametrize("transport", ["websocket", "sse", "longpoll"])
def test_a_held_connection_keeps_no_copy_of_a_query_token(herald_run, transport):
    """Tornado parses the query twice (``query_arguments`` and ``arguments``) and keeps
    the URI; a held stream or poll drops all three once read (memory, and the token)."""

    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        token = h.mint()
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        extra = {
            "websocket": upgrade + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            "sse": "Accept: text/event-stream\r\n",
            "longpoll": "",
        }[transport]
        writer.write(
            f"GET /api/executions/{ex}/events?access_token={token}&wait=30 HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()
        )
        await eventually(lambda: len(h.core.sessions) == 1 and ex in h.core.hubs)
        await asyncio.sleep(0.1)
        (held,) = h.core.sessions
        if transport == "websocket":  # Herald owns the socket: no request is kept at all
            gc.collect()
            assert not [r for r in gc.get_objects() if isinstance(r, HTTPServerRequest) and token in r.uri]
        else:
            request = held.transport.request  # an event stream keeps it for its access line
            assert token not in repr(request.arguments) and token not in repr(request.query_arguments)
            if transport != "longpoll":  # a poll's access line still shows its query
                assert token not in request.uri and token not in request.query
        # It still works: an event reaches it.
        await h.publish(ex, {"event": "token", "data": {"text": "after shedding"}})
        data = b""
        while b"after shedding" not in data:
            data += await asyncio.wait_for(reader.read(65536), 5)
        writer.close()

    herald_run(scenario)


def test_a_held_poll_with_nothing_to_say_is_answered_when_wait_runs_out(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        token = h.mint()
        started = time.monotonic()
        page = json.loads((await h.fetch(f"/api/executions/{ex}/events?wait=1", token=token)).body)
        took = time.monotonic() - started
        assert page == {"events": [], "next_after": 0, "done": False, "reset": None}
        # Its own timer answers it (not the shared one-second tick, a second early).
        assert 0.95 <= took <= 1.5, took
        assert not h.core.sessions
        # The same for the dashboard feed's poll: an idle dashboard polls once per wait.
        version = json.loads((await h.fetch("/api/executions/feed", token=token)).body)["version"]
        started = time.monotonic()
        page = json.loads((await h.fetch(f"/api/executions/feed?since={version}&wait=1", token=token)).body)
        took = time.monotonic() - started
        assert page == {"type": "changes", "version": version, "executions": []}
        assert 0.95 <= took <= 1.5, took

    herald_run(scenario)


@pytest.mark.parametrize("batching", [False, True])
def test_with_many_polls_held_a_live_answer_waits_for_events_published_with_it(herald_run, batching):
    """``PageAnswers``: under load (here: from one held poll) the answer to a live
    event is held ``PAGE_HOLD`` so that the next event shares it; below the
    threshold the first event is answered alone, at once."""

    async def scenario(h: Herald) -> None:
        h.core.page_answers.batch_from = 1 if batching else 1_000_000
        ex = (await h.create())["id"]
        token = h.mint()
        poll = asyncio.ensure_future(h.fetch(f"/api/executions/{ex}/events?wait=10", token=token))
        await eventually(lambda: len(h.core.sessions) == 1 and ex in h.core.hubs)
        await h.core.publish(ex, [PublishItem("token", {"text": "first"})])
        await asyncio.sleep(0.005)
        await h.core.publish(ex, [PublishItem("token", {"text": "second"})])
        page = json.loads((await poll).body)
        texts = [e["data"]["text"] for e in page["events"] if e["event"] == "token"]
        assert texts == (["first", "second"] if batching else ["first"])
        assert page["next_after"] == page["events"][-1]["seq"]

    herald_run(scenario)
