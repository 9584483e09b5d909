"""Cross-origin reads and what a plain EventSource needs, on the wire.

The CORS decision (``transports.cors``) and the SSE framing helpers (``?events=message``,
``204`` after the end) are pure and tested without sockets; then a real in-process
Herald on a real port answers ``/api/*``, ``/static/*``, preflights, long-polls and SSE
streams from an allowed origin, another origin and no origin. The browser side (a page
on another origin, a plain ``EventSource``) is in tests/test_browser_cross_origin.py and
tests/test_browser_eventsource.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from client.sse import SseParser
from core.codec import http_chunk
from core.model import Execution, Status
from core.settings import Settings
from tests.fixtures_server import Herald, read_ws
from transports.cors import answer_headers, origin_allowed, origin_trusted, preflight_headers
from transports.sse import EventNames, event_names, nothing_left, unnamed_events

APP = "http://app.example:5173"
OTHER = "http://evil.example"
ALLOWED = (APP, "https://console.example")
CORS_HEADERS = {
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
}


def settings(*origins: str) -> Settings:
    return Settings(allowed_origins=origins)


def cors_of(headers: Any) -> dict[str, str]:
    """The CORS headers of an answer (Tornado's HTTPHeaders or a dict), lower-cased."""
    return {k.lower(): v for k, v in headers.items() if k.lower() in CORS_HEADERS}


# --- the decision, without sockets ------------------------------------------------------


def test_origin_allowed_is_an_exact_case_insensitive_match() -> None:
    s = settings(*ALLOWED)
    assert origin_allowed(APP, s)
    assert origin_allowed("HTTPS://Console.Example", s)
    assert not origin_allowed("http://app.example", s)  # another port is another origin
    assert not origin_allowed("https://app.example:5173", s)  # and another scheme
    assert not origin_allowed("http://app.example:5173.evil.example", s)
    assert not origin_allowed("null", s)  # a sandboxed frame or a file: page
    assert not origin_allowed(None, s)
    assert not origin_allowed(APP, settings())  # default: same origin only


def test_a_trusted_origin_is_this_server_or_an_allowed_one_never_null() -> None:
    """The question of the CSRF check and of cookie-authenticated WebSockets."""
    s = settings(*ALLOWED)
    assert origin_trusted("http://127.0.0.1:8080", "127.0.0.1:8080", s)  # its Host
    assert origin_trusted("http://Herald.Example", "herald.example", s)
    assert not origin_trusted("http://127.0.0.1:8081", "127.0.0.1:8080", s)  # another port
    assert origin_trusted(APP, "127.0.0.1:8080", s)
    assert not origin_trusted(OTHER, "127.0.0.1:8080", s)
    assert not origin_trusted("null", "", s)  # even with no Host to compare


def test_answer_headers_name_the_origin_and_never_allow_credentials() -> None:
    s = settings(*ALLOWED)
    headers = dict(answer_headers(APP, "/api/executions", s))
    assert headers == {
        "Access-Control-Allow-Origin": APP,
        "Vary": "Origin",
        "Access-Control-Expose-Headers": "Retry-After",
    }
    assert dict(answer_headers(APP, "/static/herald.js", s))["Access-Control-Allow-Origin"] == APP
    # Another origin, or none: no CORS header, but the answer still varies by Origin.
    assert answer_headers(OTHER, "/api/executions", s) == [("Vary", "Origin")]
    assert answer_headers(None, "/static/herald.js", s) == [("Vary", "Origin")]
    # Outside /api/ and /static/ (pages, health, metrics), and with no allowed origin: nothing.
    assert answer_headers(APP, "/", s) == []
    assert answer_headers(APP, "/metrics", s) == []
    assert answer_headers(APP, "/api/executions", settings()) == []


def test_preflight_headers_only_for_an_allowed_origin() -> None:
    s = settings(*ALLOWED)
    assert dict(preflight_headers(APP, "/api/tickets", s)) == {
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": "Authorization, Content-Type, Last-Event-ID",
        "Access-Control-Max-Age": "600",
    }
    assert preflight_headers(OTHER, "/api/tickets", s) == []
    assert preflight_headers(APP, "/metrics", s) == []


EVENTS = (
    b'id: 7\nevent: token\ndata: {"seq":7,"event":"token"}\n\n'
    b'event: control\ndata: {"control":"ping"}\n\n'
    b'id: 8\nevent: complete\ndata: {"seq":8,"event":"complete","data":{"note":"event: x\\nid: 1"}}\n\n'
)


def test_unnamed_events_drop_the_event_line_of_events_only() -> None:
    out = unnamed_events(EVENTS, chunked=False)
    messages = SseParser().feed(out)
    assert [(m.event, m.id) for m in messages] == [("message", "7"), ("control", None), ("message", "8")]
    assert json.loads(messages[2].data)["data"]["note"] == "event: x\nid: 1"  # data untouched


def test_unnamed_events_rechunk_every_chunk() -> None:
    first, rest = EVENTS.split(b"\n\n", 1)
    first += b"\n\n"
    out = unnamed_events(http_chunk(first) + http_chunk(rest), chunked=True)
    assert out == http_chunk(unnamed_events(first, False)) + http_chunk(unnamed_events(rest, False))
    assert b"event: token" not in out and b"event: control" in out


def test_event_names_parameter() -> None:
    assert event_names("") is EventNames.NAMED
    assert event_names("named") is EventNames.NAMED
    assert event_names("message") is EventNames.MESSAGE
    with pytest.raises(Exception) as caught:
        event_names("all")
    assert getattr(caught.value, "status", None) == 400


def test_nothing_left_once_the_client_has_the_terminal_event() -> None:
    done = Execution(id="ex_1", owner="a", kind="chat", status=Status.SUCCEEDED, last_seq=9)
    running = Execution(id="ex_2", owner="a", kind="chat", status=Status.RUNNING, last_seq=9)
    assert nothing_left(done, 9)
    assert nothing_left(done, 12)  # past the end: nothing to send either
    assert not nothing_left(done, 8)
    assert not nothing_left(running, 9)


# --- on the wire ---------------------------------------------------------------------------


def test_api_static_and_errors_carry_cors_for_an_allowed_origin(herald_run) -> None:
    async def scenario(h: Herald) -> None:
        for path in ("/api/negotiate", "/static/herald.js", "/api/executions"):
            response = await h.fetch(path, token=h.mint(), headers={"Origin": APP})
            assert response.code == 200, (path, response.code)
            assert cors_of(response.headers) == {
                "access-control-allow-origin": APP,
                "access-control-expose-headers": "Retry-After",
            }, path
            assert response.headers["Vary"] == "Origin"
        # An error answer is cleared and re-rendered: it keeps its CORS headers, so a
        # cross-origin page can read the error shape.
        refused = await h.fetch("/api/executions", headers={"Origin": APP})
        assert refused.code == 401 and json.loads(refused.body)["error"]["code"] == "unauthorized"
        assert refused.headers["Access-Control-Allow-Origin"] == APP
        missing = await h.fetch("/static/nothing-here.js", headers={"Origin": APP})
        assert missing.code == 404 and missing.headers["Access-Control-Allow-Origin"] == APP
        # A page (not /api/, not /static/) is not for other origins to read.
        page = await h.fetch("/", headers={"Origin": APP})
        assert cors_of(page.headers) == {}

    herald_run(scenario, allowed_origins=ALLOWED)


def test_other_origins_and_the_default_get_no_cors_headers(herald_run) -> None:
    async def scenario(h: Herald) -> None:
        for origin in (OTHER, "null"):
            response = await h.fetch("/api/negotiate", headers={"Origin": origin})
            assert response.code == 200 and cors_of(response.headers) == {}
            assert response.headers["Vary"] == "Origin"
            static = await h.fetch("/static/herald.js", headers={"Origin": origin})
            assert static.code == 200 and cors_of(static.headers) == {}

    herald_run(scenario, allowed_origins=ALLOWED)

    async def default(h: Herald) -> None:
        response = await h.fetch("/api/negotiate", headers={"Origin": APP})
        assert cors_of(response.headers) == {} and "Vary" not in response.headers
        preflight = await h.fetch("/api/tickets", method="OPTIONS", headers=preflight_request(APP))
        assert preflight.code == 204 and cors_of(preflight.headers) == {}

    herald_run(default)


def preflight_request(origin: str, method: str = "POST", headers: str = "authorization") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


def test_preflights(herald_run) -> None:
    async def scenario(h: Herald) -> None:
        ex = await h.create()
        for path in ("/api/tickets", "/api/executions", f"/api/executions/{ex['id']}/events", "/static/herald.js"):
            response = await h.fetch(path, method="OPTIONS", headers=preflight_request(APP))
            assert response.code == 204 and response.body == b"", path
            assert cors_of(response.headers) == {
                "access-control-allow-origin": APP,
                "access-control-allow-methods": "GET, POST, OPTIONS",
                "access-control-allow-headers": "Authorization, Content-Type, Last-Event-ID",
                "access-control-expose-headers": "Retry-After",
                "access-control-max-age": "600",
            }, path
        # Another origin: no CORS header (so the browser refuses the request it asked about).
        for path in ("/api/tickets", "/static/herald.js"):
            refused = await h.fetch(path, method="OPTIONS", headers=preflight_request(OTHER))
            assert refused.code == 204 and cors_of(refused.headers) == {}, path
        # OPTIONS without Origin (curl) says what the API takes.
        plain = await h.fetch("/api/executions", method="OPTIONS")
        assert plain.code == 204 and plain.headers["Allow"] == "GET, POST, OPTIONS"
        assert cors_of(plain.headers) == {}

    herald_run(scenario, allowed_origins=ALLOWED)


def test_long_poll_answers_and_refusals_carry_cors(herald_run) -> None:
    async def scenario(h: Herald) -> None:
        token = h.mint()
        ex = (await h.create(token))["id"]
        await h.tokens_batch(ex, 0, 2)
        page = await h.fetch(f"/api/executions/{ex}/events?after=0", token=token, headers={"Origin": APP})
        assert page.code == 200 and len(json.loads(page.body)["events"]) == 3
        assert page.headers["Access-Control-Allow-Origin"] == APP and page.headers["Vary"] == "Origin"
        assert page.headers["Access-Control-Expose-Headers"] == "Retry-After"
        refused = await h.fetch(f"/api/executions/{ex}/events", headers={"Origin": APP})
        assert refused.code == 401 and refused.headers["Access-Control-Allow-Origin"] == APP
        other = await h.fetch(f"/api/executions/{ex}/events", token=token, headers={"Origin": OTHER})
        assert other.code == 200 and cors_of(other.headers) == {}
        feed = await h.fetch("/api/executions/feed", token=token, headers={"Origin": APP})
        assert feed.code == 200 and feed.headers["Access-Control-Allow-Origin"] == APP

    herald_run(scenario, allowed_origins=ALLOWED)


def test_sse_from_an_allowed_origin_opens_with_the_cursor(herald_run) -> None:
    async def scenario(h: Herald) -> None:
        token = h.mint()
        ex = (await h.create(token))["id"]
        await h.tokens_batch(ex, 0, 3)  # seq 1 status, 2..4 tokens
        stream = h.sse(ex, token, headers={"Origin": APP}, after=2)
        first = await stream.next()
        assert stream.status == 200 and stream.headers["access-control-allow-origin"] == APP
        assert not any(k == "access-control-allow-credentials" for k in stream.headers)
        # The first bytes: the cursor, before anything else, in a block that dispatches nothing.
        assert bytes(stream.raw).startswith(b"id: 2\nretry: 1000\n\n:")
        assert first is not None and first.event == "control" and first.id == "2"
        assert json.loads(first.data) == {"control": "ready", "transport": "sse"}
        events = await stream.events(2)
        assert [e["seq"] for e in events] == [3, 4]
        stream.close()

    herald_run(scenario, allowed_origins=ALLOWED)


def test_sse_events_as_messages(herald_run) -> None:
    async def scenario(h: Herald) -> None:
        token = h.mint()
        ex = (await h.create(token))["id"]
        await h.tokens_batch(ex, 0, 2)
        stream = h.sse(ex, token, events="message")
        ready = await stream.next()
        assert ready is not None and ready.event == "control"
        caught_up = [await stream.next(), await stream.next(), await stream.next()]
        await h.tokens_batch(ex, 2, 3)  # live, through the hub's fast path
        await h.publish(ex, [{"event": "complete", "data": {"result": 1}}])
        rest = [m for m in await stream.until_end() if m.event != "control"]
        messages = [m for m in caught_up if m is not None] + rest
        assert [m.event for m in messages] == ["message"] * 7
        assert [m.id for m in messages] == [str(s) for s in range(1, 8)]
        assert [json.loads(m.data)["event"] for m in messages] == ["status"] + ["token"] * 5 + ["complete"]
        assert b"event: token" not in bytes(stream.raw)

        bad = h.sse(ex, token, events="everything")
        code, body = await bad.refusal()
        assert code == 400 and body["error"]["code"] == "bad_request"

    herald_run(scenario)


def test_sse_after_the_end_is_204_and_the_other_transports_say_done(herald_run) -> None:
    async def scenario(h: Herald) -> None:
        token = h.mint()
        ex = (await h.create(token))["id"]
        [last] = await h.publish(ex, [{"event": "complete", "data": {"result": 1}}])
        for headers, query in (({"Last-Event-ID": str(last)}, {}), ({}, {"after": last})):
            stream = h.sse(ex, token, headers={"Origin": APP, **headers}, **query)
            response = await stream.response
            assert response.code == 204 and response.body == b""
            assert stream.headers["access-control-allow-origin"] == APP
        # Before the end, the same request streams what is left and ends.
        stream = h.sse(ex, token, after=last - 1)
        assert [json.loads(m.data)["seq"] for m in await stream.until_end() if m.event != "control"] == [last]
        # A cursor past the end of a finished execution has nothing either: 204.
        past = await h.sse(ex, token, headers={"Last-Event-ID": str(last + 5)}).response
        assert past.code == 204
        # Long-poll at the end: an empty page, done. WebSocket: ready (with the cursor), then 1000.
        page = json.loads((await h.fetch(f"/api/executions/{ex}/events?after={last}", token=token)).body)
        assert page == {"events": [], "next_after": last, "done": True, "reset": None}
        conn = await h.websocket(ex, token, after=last)
        assert await read_ws(conn) == {"control": "ready", "transport": "websocket", "after": last}
        assert await read_ws(conn) is None and conn.close_code == 1000

    herald_run(scenario, allowed_origins=ALLOWED)
