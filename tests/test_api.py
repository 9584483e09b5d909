"""The HTTP API of PROTOCOL.md section 4 against a real server: statuses, the error
shape, nothing stored on a refusal, idempotent and batch publish, cancel, listing,
tickets, negotiation and the operational endpoints."""

from __future__ import annotations

import asyncio
import json

import pytest

from core.auth import ALL_SCOPES
from tests.fixtures_server import Herald, read_ws
from transports.access_log import redacted_uri

ERROR_KEYS = {"code", "message", "details"}


def error_of(response) -> dict:
    """The contract's error object, checked for shape."""
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.body)
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    assert isinstance(body["error"]["details"], dict)
    return body["error"]


TOKEN = {"event": "token", "data": {"text": "x"}}
JSON = "application/json"
BAD_PUBLISHES = [
    # (name, body: bytes as sent or an object sent as JSON, content type, status, code)
    ("malformed json", b'{"event": "token", ', JSON, 400, "bad_json"),
    ("bad event name", {"event": "Bad Name", "data": {}}, JSON, 400, "invalid_event"),
    ("event name too long", {"event": "a" * 65, "data": {}}, JSON, 400, "invalid_event"),
    ("status is the server's", {"event": "status", "data": {}}, JSON, 400, "invalid_event"),
    ("wrong content type", TOKEN, "text/plain", 415, "unsupported_media_type"),
    ("no content type", TOKEN, "", 415, "unsupported_media_type"),
    ("empty list", [], JSON, 400, "bad_request"),
    ("over 1000 items", [TOKEN] * 1001, JSON, 400, "bad_request"),
    ("progress over 100", {"event": "progress", "data": {"progress": 101}}, JSON, 400, "invalid_event"),
    ("progress not a number", {"event": "progress", "data": {"progress": "50"}}, JSON, 400, "invalid_event"),
    ("progress missing", {"event": "progress", "data": {"stage": "x"}}, JSON, 400, "invalid_event"),
    ("stage not a string", {"event": "progress", "data": {"progress": 5, "stage": 3}}, JSON, 400, "invalid_event"),
    ("token without text", {"event": "token", "data": {}}, JSON, 400, "invalid_event"),
    ("error without error_type", {"event": "error", "data": {"message": "m"}}, JSON, 400, "invalid_event"),
    ("unknown fields", {**TOKEN, "extra": 1}, JSON, 400, "invalid_event"),
    ("not an object", "token", JSON, 400, "invalid_event"),
    ("empty key", {**TOKEN, "key": ""}, JSON, 400, "bad_request"),
    ("one bad item spoils the batch", [TOKEN, {"event": "BAD"}], JSON, 400, "invalid_event"),
]


@pytest.mark.parametrize(
    "raw,ctype,status,code", [case[1:] for case in BAD_PUBLISHES], ids=[case[0] for case in BAD_PUBLISHES]
)
def test_bad_publish_is_refused_with_the_error_shape_and_stores_nothing(herald_run, raw, ctype, status, code):
    sent = raw if isinstance(raw, bytes) else json.dumps(raw).encode()

    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        await h.publish(ex, TOKEN)  # seq 1, 2
        headers = {"Content-Type": ctype} if ctype else {}
        response = await h.fetch(
            f"/api/executions/{ex}/events", method="POST", token=h.mint(), raw_body=sent, headers=headers
        )
        assert response.code == status, response.body
        assert error_of(response)["code"] == code
        assert await h.last_seq(ex) == 2
        assert (await h.core.store.events_after(ex, 2, 10)) == []

    herald_run(scenario)


def test_oversize_event_is_413_and_stores_nothing(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        big = {"event": "token", "data": {"text": "x" * 2000}}
        response = await h.fetch(f"/api/executions/{ex}/events", method="POST", token=h.mint(), body=big)
        assert response.code == 413
        error = error_of(response)
        assert error["code"] == "event_too_large" and error["details"]["max_event_bytes"] == 1024
        # In a batch, too: nothing of the batch is stored.
        response = await h.fetch(f"/api/executions/{ex}/events", method="POST", token=h.mint(), body=[TOKEN, big])
        assert response.code == 413 and error_of(response)["details"]["index"] == 1
        assert await h.last_seq(ex) == 0
        assert await h.publish(ex, {"event": "token", "data": {"text": "x" * 500}}) == [2]

    herald_run(scenario, max_event_bytes=1024)


def test_cursor_past_the_end_is_400_on_every_transport(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        await h.publish(ex, TOKEN)  # last_seq 2
        for after in ("3", "-1", "abc"):
            response = await h.fetch(f"/api/executions/{ex}/events?after={after}", token=h.mint())
            assert response.code == 400
            assert error_of(response)["code"] == "cursor_out_of_range"
            status, body = await h.sse(ex, after=after).refusal()
            assert status == 400 and body["error"]["code"] == "cursor_out_of_range"
        status, body = await h.sse(ex, headers={"Last-Event-ID": "99"}).refusal()
        assert status == 400 and body["error"]["details"] == {"last_seq": 2}
        conn = await h.websocket(ex, after=3)
        message = await read_ws(conn)
        assert message["control"] == "error" and message["code"] == "cursor_out_of_range"
        assert await read_ws(conn) is None and conn.close_code == 4400
        assert await h.last_seq(ex) == 2

    herald_run(scenario)


def test_unknown_execution_is_404_everywhere(herald_run):
    async def scenario(h: Herald) -> None:
        missing = "ex_doesnotexist0000000000"
        token = h.mint()
        for method, path, body in (
            ("GET", f"/api/executions/{missing}", None),
            ("GET", f"/api/executions/{missing}/events", None),
            ("POST", f"/api/executions/{missing}/events", TOKEN),
            ("POST", f"/api/executions/{missing}/cancel", {}),
        ):
            response = await h.fetch(path, method=method, token=token, body=body)
            assert response.code == 404, (method, path)
            assert error_of(response)["code"] == "not_found"
        status, body = await h.sse(missing).refusal()
        assert status == 404 and body["error"]["code"] == "not_found"
        conn = await h.websocket(missing)
        assert (await read_ws(conn))["code"] == "not_found"
        assert await read_ws(conn) is None and conn.close_code == 4404

    herald_run(scenario)


def test_bad_create_bodies(herald_run):
    async def scenario(h: Herald) -> None:
        token = h.mint()
        for body in ({}, {"kind": ""}, {"kind": "chat", "input": []}, {"kind": "chat", "surprise": 1}, []):
            response = await h.fetch("/api/executions", method="POST", token=token, body=body)
            assert response.code == 400, body
            error_of(response)
        response = await h.fetch(
            "/api/executions", method="POST", token=token, raw_body=b"kind=chat", headers={"Content-Type": "text/plain"}
        )
        assert response.code == 415 and error_of(response)["code"] == "unsupported_media_type"
        listed = json.loads((await h.fetch("/api/executions", token=token)).body)
        assert listed == {"executions": [], "next_before": None}

    herald_run(scenario)


def test_create_and_read_an_execution(herald_run):
    async def scenario(h: Herald) -> None:
        created = await h.create(kind="diagnosis", input={"host": "db1"}, queue="gpu")
        assert created["id"].startswith("ex_") and len(created["id"]) == 25
        assert created["owner"] == "alice" and created["status"] == "pending" and created["last_seq"] == 0
        assert created["input"] == {"host": "db1"} and created["queue"] == "gpu"
        assert created["created_at"].endswith("Z")
        await h.publish(ex := created["id"], {"event": "progress", "data": {"progress": 40, "stage": "ai_fetching"}})
        doc = json.loads((await h.fetch(f"/api/executions/{ex}", token=h.mint())).body)
        assert doc["status"] == "running" and doc["progress"] == 40 and doc["stage"] == "ai_fetching"
        assert doc["last_seq"] == 2

    herald_run(scenario)


def test_idempotent_keys_and_batch_publish(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        keyed = {"event": "token", "data": {"text": "once"}, "key": "k1"}
        assert await h.publish(ex, keyed) == [2]
        assert await h.publish(ex, keyed) == [2]
        assert await h.last_seq(ex) == 2
        # A batch: new items get new seqs, a known key its first seq, a key repeated
        # inside the batch is stored once.
        batch = [
            {"event": "token", "data": {"text": "a"}},
            keyed,
            {"event": "log", "data": {"level": "info", "message": "m"}, "key": "k2"},
            {"event": "log", "data": {"level": "info", "message": "m"}, "key": "k2"},
            {"event": "custom.thing-1", "data": [1, 2]},
        ]
        assert await h.publish(ex, batch) == [3, 2, 4, 4, 5]
        assert await h.last_seq(ex) == 5
        stored = await h.core.store.events_after(ex, 0, 100)
        assert [e.event for e in stored] == ["status", "token", "token", "log", "custom.thing-1"]
        assert stored[-1].data == [1, 2]
        # After the terminal event a known key still answers its seq (nothing stored).
        await h.publish(ex, {"event": "complete", "data": {}})
        assert await h.publish(ex, keyed) == [2]

    herald_run(scenario)


def test_cancel(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        await h.publish(ex, TOKEN)
        conn = await h.websocket(ex, after=2)
        assert (await read_ws(conn))["control"] == "ready"
        response = await h.fetch(f"/api/executions/{ex}/cancel", method="POST", token=h.mint(), body={"reason": "user"})
        assert response.code == 202 and json.loads(response.body) == {"seq": [3]}
        event = await read_ws(conn)
        assert event["event"] == "cancelled" and event["data"] == {"reason": "user"}
        assert await read_ws(conn) is None and conn.close_code == 1000
        doc = json.loads((await h.fetch(f"/api/executions/{ex}", token=h.mint())).body)
        assert doc["status"] == "cancelled"
        response = await h.fetch(f"/api/executions/{ex}/cancel", method="POST", token=h.mint(), body={})
        assert response.code == 409 and error_of(response)["code"] == "stream_closed"
        # Cancel needs executions:write on the caller's own execution.
        other = (await h.create())["id"]
        response = await h.fetch(
            f"/api/executions/{other}/cancel", method="POST", token=h.mint(scopes=["executions:read"]), body={}
        )
        assert response.code == 403
        response = await h.fetch(f"/api/executions/{other}/cancel", method="POST", token=h.mint("bob"), body={})
        assert response.code == 403
        response = await h.fetch(f"/api/executions/{other}/cancel", method="POST", token=h.mint(), body={"why": 1})
        assert response.code == 400
        assert await h.last_seq(other) == 0

    herald_run(scenario)


def test_list_executions_own_only_filters_and_paging(herald_run):
    async def scenario(h: Herald) -> None:
        alice, bob = h.mint("alice"), h.mint("bob")
        mine = [(await h.create(alice, kind="chat" if i % 2 else "diagnosis"))["id"] for i in range(5)]
        theirs = (await h.create(bob))["id"]
        await h.publish(mine[0], {"event": "complete", "data": {}})
        listed = json.loads((await h.fetch("/api/executions", token=alice)).body)
        assert [e["id"] for e in listed["executions"]] == mine[::-1]  # newest first, own only
        assert listed["next_before"] is None
        admin = h.mint("root", ["admin"])
        everyone = json.loads((await h.fetch("/api/executions", token=admin)).body)
        assert [e["id"] for e in everyone["executions"]] == [theirs, *mine[::-1]]
        chats = json.loads((await h.fetch("/api/executions?kind=chat", token=alice)).body)
        assert [e["id"] for e in chats["executions"]] == [mine[3], mine[1]]
        done = json.loads((await h.fetch("/api/executions?status=succeeded", token=alice)).body)
        assert [e["id"] for e in done["executions"]] == [mine[0]]
        page1 = json.loads((await h.fetch("/api/executions?limit=2", token=alice)).body)
        assert [e["id"] for e in page1["executions"]] == [mine[4], mine[3]]
        assert page1["next_before"] == mine[3]
        page2 = json.loads((await h.fetch(f"/api/executions?limit=2&before={mine[3]}", token=alice)).body)
        assert [e["id"] for e in page2["executions"]] == [mine[2], mine[1]]
        page3 = json.loads((await h.fetch(f"/api/executions?limit=2&before={page2['next_before']}", token=alice)).body)
        assert [e["id"] for e in page3["executions"]] == [mine[0]] and page3["next_before"] is None
        for bad in ("status=finished", "limit=0", "limit=x"):
            response = await h.fetch(f"/api/executions?{bad}", token=alice)
            assert response.code == 400, bad
            error_of(response)

    herald_run(scenario)


def test_negotiate_health_ready_metrics(herald_run):
    async def scenario(h: Herald) -> None:
        negotiate = json.loads((await h.fetch("/api/negotiate")).body)
        assert negotiate == {
            "transports": ["websocket", "sse", "longpoll"],
            "heartbeat": 15.0,
            "longpoll_wait": 25.0,
            "max_event_bytes": 65536,
            "protocol": 1,
        }
        assert (await h.fetch("/healthz")).code == 200
        ready = await h.fetch("/readyz")
        assert ready.code == 200 and json.loads(ready.body)["checks"] == {"store": "ok", "broker": "ok"}
        ex = (await h.create())["id"]
        conn = await h.websocket(ex)
        await read_ws(conn)
        stream = h.sse(ex)
        await stream.next()
        await h.publish(ex, TOKEN)
        await read_ws(conn)
        await stream.events(1)
        metrics = (await h.fetch("/metrics")).body.decode()
        assert 'herald_connections{transport="websocket"} 1.0' in metrics
        assert 'herald_connections{transport="sse"} 1.0' in metrics
        assert "herald_events_published_total 2.0" in metrics
        assert 'herald_events_delivered_total{transport="websocket"}' in metrics
        assert 'herald_publish_to_deliver_seconds_bucket{le="0.001",transport="sse"}' in metrics
        assert 'herald_publish_to_deliver_seconds_count{transport="websocket"}' in metrics
        conn.close()
        stream.close()

    herald_run(scenario)


def test_transports_turned_off(herald_run):
    async def scenario(h: Herald) -> None:
        negotiate = json.loads((await h.fetch("/api/negotiate")).body)
        assert negotiate["transports"] == ["sse", "longpoll"]
        ex = (await h.create())["id"]
        response = await h.fetch(
            f"/api/executions/{ex}/events",
            token=h.mint(),
            headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
        )  # fmt: skip
        assert response.code == 400
        assert error_of(response)["details"] == {"transports": ["sse", "longpoll"]}
        with pytest.raises(Exception):  # noqa: B017 - the handshake is refused
            await h.websocket(ex)
        assert (await h.fetch(f"/api/executions/{ex}/events", token=h.mint())).code == 200

    herald_run(scenario, transports=("sse", "longpoll"))


def test_ticket_is_single_use_and_works_for_sse_and_longpoll(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        await h.publish(ex, TOKEN)
        token = h.mint()

        async def ticket() -> str:
            response = await h.fetch("/api/tickets", method="POST", token=token)
            assert response.code == 201
            body = json.loads(response.body)
            assert body["expires_in"] == 30 and body["ticket"]
            return body["ticket"]

        t = await ticket()
        page = await h.fetch(f"/api/executions/{ex}/events?ticket={t}")
        assert page.code == 200 and len(json.loads(page.body)["events"]) == 2
        again = await h.fetch(f"/api/executions/{ex}/events?ticket={t}")
        assert again.code == 401 and error_of(again)["code"] == "unauthorized"
        t = await ticket()
        stream = h.sse(ex, token="", ticket=t)
        assert [e["seq"] for e in await stream.events(2)] == [1, 2]
        stream.close()
        assert (await h.sse(ex, token="", ticket=t).response).code == 401
        assert (await h.fetch("/api/tickets", method="POST")).code == 401

    herald_run(scenario)


def test_cookie_and_access_token_parameter(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        token = h.mint()
        response = await h.fetch(f"/api/executions/{ex}", headers={"Cookie": f"herald_token={token}"})
        assert response.code == 200
        stream = h.sse(ex, token="", headers={"Cookie": f"herald_token={token}"})
        assert json.loads((await stream.next()).data)["control"] == "ready"
        stream.close()
        assert (await h.fetch(f"/api/executions/{ex}?access_token={token}")).code == 200
        assert (await h.fetch(f"/api/executions/{ex}", headers={"Cookie": "herald_token=junk"})).code == 401

    herald_run(scenario)


def test_access_log_redacts_credentials():
    uri = "/api/executions/ex_1/events?after=3&access_token=eyJsecret&ticket=tk_abc&token=t"
    redacted = redacted_uri(uri)
    assert "eyJsecret" not in redacted and "tk_abc" not in redacted
    assert redacted == "/api/executions/ex_1/events?after=3&access_token=***&ticket=***&token=***"
    assert redacted_uri("/healthz") == "/healthz"
    assert redacted_uri("/x?after=1") == "/x?after=1"


def test_every_scope_name_is_known():
    assert set(ALL_SCOPES) == {"executions:read", "executions:write", "events:publish", "workers", "admin"}


def test_concurrent_publishes_get_distinct_gapless_seqs(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        answers = await asyncio.gather(
            *(h.publish(ex, {"event": "token", "data": {"text": str(i)}}) for i in range(30))
        )
        seqs = sorted(s for answer in answers for s in answer)
        assert seqs[0] >= 2 and seqs == list(range(seqs[0], seqs[0] + 30))
        assert await h.last_seq(ex) == 31

    herald_run(scenario)


def test_unsupported_method_has_the_error_shape(herald_run):
    async def scenario(h: Herald) -> None:
        response = await h.fetch("/api/executions", method="PUT", token=h.mint(), body={"kind": "x"})
        assert response.code == 405 and error_of(response)["code"] == "method_not_allowed"

    herald_run(scenario)
