"""Auth (PROTOCOL.md section 5): every failure refused on HTTP and on each transport,
share tokens and admin, expiry mid-stream, in-band refresh, the bearer subprotocol;
and the pure permission rules of core/auth.py."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core.auth import Authenticator, Principal, Scope, find_credentials, may_publish, may_read, may_write
from core.errors import HeraldError
from core.model import Execution, PublishItem
from tests.fixtures_server import SECRET, Herald, RawWebSocket, read_ws, ws_until_closed


def unsigned(claims: dict) -> str:
    """A token with ``alg: none`` (no signature)."""

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def bad_tokens(h: Herald) -> dict[str, tuple[str, int, str]]:
    """name → (token or '' for none, HTTP status, error code)."""
    claims = {"sub": "alice", "exp": int(time.time()) + 600, "scope": "executions:read"}
    return {
        "no token": ("", 401, "unauthorized"),
        "garbage": ("not-a-jwt", 401, "unauthorized"),
        "wrong key": (jwt.encode(claims, "another-secret-another-secret-00", algorithm="HS256"), 401, "unauthorized"),
        "expired": (h.mint(ttl=-10), 401, "token_expired"),
        "alg none": (unsigned(claims), 401, "unauthorized"),
        "HS512 not configured": (jwt.encode(claims, SECRET, algorithm="HS512"), 401, "unauthorized"),
        "no sub": (jwt.encode({"exp": claims["exp"]}, SECRET, algorithm="HS256"), 401, "unauthorized"),
        "wrong owner": (h.mint("mallory"), 403, "forbidden"),
        "missing scope": (h.mint(scopes=["events:publish"]), 403, "forbidden"),
        "share token for another execution": (h.mint("bob", [], executions=["ex_other"]), 403, "forbidden"),
    }


CASES = [
    "no token",
    "garbage",
    "wrong key",
    "expired",
    "alg none",
    "HS512 not configured",
    "no sub",
    "wrong owner",
    "missing scope",
    "share token for another execution",
]


@pytest.mark.parametrize("case", CASES)
def test_auth_failure_is_refused_on_http_and_every_transport(herald_run, case):
    async def scenario(h: Herald) -> None:
        ex = (await h.create(h.mint("alice")))["id"]
        await h.publish(ex, {"event": "token", "data": {"text": "secret"}})
        token, status, code = bad_tokens(h)[case]
        # HTTP: read the document, long-poll the stream.
        for path in (f"/api/executions/{ex}", f"/api/executions/{ex}/events?wait=1"):
            response = await h.fetch(path, headers={"Authorization": f"Bearer {token}"} if token else {})
            assert response.code == status, (path, response.body)
            assert json.loads(response.body)["error"]["code"] == code
        # SSE: an HTTP error before the stream starts.
        got, body = await h.sse(ex, token=token).refusal()
        assert got == status and body["error"]["code"] == code
        # WebSocket: the upgrade succeeds, then a control error and a close code.
        conn = await h.websocket(ex, token=token)
        messages = await ws_until_closed(conn)
        assert messages == [{"control": "error", "code": code, "message": messages[0]["message"]}]
        assert conn.close_code == {401: 4401, 403: 4403}[status]
        # The same token through the bearer subprotocol is refused alike.
        if token:
            conn = await h.websocket(ex, token="", subprotocols=["herald.v1", f"herald.bearer.{token}"])
            assert (await ws_until_closed(conn))[0]["code"] == code
            assert conn.close_code == {401: 4401, 403: 4403}[status]
        assert not h.core.sessions

    herald_run(scenario)


def test_publish_and_create_need_their_scopes(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        item = {"event": "token", "data": {"text": "x"}}
        path = f"/api/executions/{ex}/events"
        reader = h.mint(scopes=["executions:read"])
        assert (await h.fetch(path, method="POST", token=reader, body=item)).code == 403
        assert (await h.fetch(path, method="POST", token=h.mint("bob"), body=item)).code == 403
        assert (await h.fetch(path, method="POST", body=item)).code == 401
        assert (await h.fetch(path, method="POST", token=h.mint(ttl=-5), body=item)).code == 401
        assert (await h.fetch("/api/executions", method="POST", token=reader, body={"kind": "x"})).code == 403
        assert (await h.fetch("/api/executions", token=h.mint(scopes=["events:publish"]))).code == 403
        assert await h.last_seq(ex) == 0
        # A worker token publishes to queued executions only; admin publishes anywhere.
        queued = (await h.create(queue="gpu"))["id"]
        worker = h.mint("worker-1", ["workers"])
        assert (await h.fetch(f"/api/executions/{queued}/events", method="POST", token=worker, body=item)).code == 202
        assert (await h.fetch(path, method="POST", token=worker, body=item)).code == 403
        assert (await h.fetch(path, method="POST", token=h.mint("root", ["admin"]), body=item)).code == 202

    herald_run(scenario)


def test_share_token_reads_listed_executions_and_admin_reads_all(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create(h.mint("alice")))["id"]
        await h.publish(ex, {"event": "token", "data": {"text": "x"}})
        for token in (h.mint("guest", [], executions=[ex]), h.mint("root", ["admin"])):
            assert (await h.fetch(f"/api/executions/{ex}", token=token)).code == 200
            page = json.loads((await h.fetch(f"/api/executions/{ex}/events", token=token)).body)
            assert [e["seq"] for e in page["events"]] == [1, 2]
            stream = h.sse(ex, token=token)
            assert [e["seq"] for e in await stream.events(2)] == [1, 2]
            stream.close()
            conn = await h.websocket(ex, token=token)
            assert [(await read_ws(conn)).get("seq") for _ in range(3)] == [None, 1, 2]
            conn.close()
        # A share token does not publish.
        guest = h.mint("guest", [], executions=[ex])
        item = {"event": "token", "data": {"text": "x"}}
        assert (await h.fetch(f"/api/executions/{ex}/events", method="POST", token=guest, body=item)).code == 403

    herald_run(scenario)


def test_token_expiring_mid_stream_ends_websocket_and_sse(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        short = h.mint(ttl=2)
        conn = await h.websocket(ex, token=short)
        stream = h.sse(ex, token=short)
        assert (await read_ws(conn))["control"] == "ready"
        assert json.loads((await stream.next()).data)["control"] == "ready"
        await h.publish(ex, {"event": "token", "data": {"text": "x"}})
        started = time.monotonic()
        ws_messages = await ws_until_closed(conn, timeout=6)
        assert [m.get("seq") for m in ws_messages[:2]] == [1, 2]
        assert ws_messages[-1]["control"] == "error" and ws_messages[-1]["code"] == "token_expired"
        assert conn.close_code == 4401 and conn.close_reason == "token_expired"
        sse_messages = await stream.until_end(timeout=6)
        assert [m.id for m in sse_messages[:2]] == ["1", "2"]
        last = sse_messages[-1]
        assert last.event == "control" and last.id is None
        assert json.loads(last.data)["control"] == "error" and json.loads(last.data)["code"] == "token_expired"
        assert time.monotonic() - started < 4
        assert not h.core.sessions

    herald_run(scenario, heartbeat=1.0)


def test_websocket_in_band_refresh_ping_and_bearer_subprotocol(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        short = h.mint(ttl=2)
        conn = await h.websocket(ex, token="", subprotocols=["herald.v1", f"herald.bearer.{short}"])
        # The server picks herald.v1 and never echoes the bearer entry.
        assert conn.selected_subprotocol == "herald.v1"
        assert conn.headers.get("Sec-WebSocket-Protocol") == "herald.v1"
        assert (await read_ws(conn))["control"] == "ready"
        await conn.write_message(json.dumps({"op": "ping"}))
        assert await read_ws(conn) == {"control": "pong"}
        fresh = h.mint(ttl=600)
        await conn.write_message(json.dumps({"op": "auth", "token": fresh}))
        answer = await read_ws(conn)
        assert answer["control"] == "auth_ok" and answer["exp"] == jwt.decode(fresh, SECRET, ["HS256"])["exp"]
        await asyncio.sleep(2.5)  # the first token has expired; the stream goes on
        await h.publish(ex, {"event": "token", "data": {"text": "x"}})
        assert [(await read_ws(conn))["seq"] for _ in range(2)] == [1, 2]
        # A token for another subject is refused and ends the stream.
        await conn.write_message(json.dumps({"op": "auth", "token": h.mint("mallory")}))
        refused = await ws_until_closed(conn)
        assert refused[0]["control"] == "error" and refused[0]["code"] == "forbidden"
        assert conn.close_code == 4403

    herald_run(scenario, heartbeat=1.0)


def test_websocket_refresh_with_a_bad_token_is_refused(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        conn = await h.websocket(ex)
        await read_ws(conn)
        await conn.write_message(json.dumps({"op": "auth", "token": h.mint(ttl=-5)}))
        refused = await ws_until_closed(conn)
        assert refused[0]["code"] == "token_expired" and conn.close_code == 4401
        conn = await h.websocket(ex)
        await read_ws(conn)
        await conn.write_message("not json")
        assert (await ws_until_closed(conn))[0]["code"] == "bad_json" and conn.close_code == 4400

    herald_run(scenario)


# --- pure rules ------------------------------------------------------------------------


def principal(sub: str = "alice", *scopes: str, executions: list[str] | None = None) -> Principal:
    return Principal(sub, frozenset(scopes), time.time() + 60, frozenset(executions) if executions else None)


EX = Execution(id="ex_1", owner="alice", kind="chat")
QUEUED = Execution(id="ex_2", owner="alice", kind="chat", queue="gpu")


def test_may_read_write_publish():
    read, write, publish = Scope.EXECUTIONS_READ.value, Scope.EXECUTIONS_WRITE.value, Scope.EVENTS_PUBLISH.value
    assert may_read(principal("alice", read), EX)
    assert not may_read(principal("alice"), EX)
    assert not may_read(principal("bob", read), EX)
    assert may_read(principal("bob", executions=["ex_1"]), EX)
    assert not may_read(principal("bob", read, executions=["ex_9"]), EX)
    assert may_read(principal("root", "admin"), EX)
    assert may_write(principal("alice", write), EX) and not may_write(principal("alice", read), EX)
    assert not may_write(principal("bob", write), EX) and may_write(principal("root", "admin"), EX)
    assert may_publish(principal("alice", publish), EX) and not may_publish(principal("bob", publish), EX)
    assert not may_publish(principal("alice", read, write), EX)
    assert may_publish(principal("w", "workers"), QUEUED) and not may_publish(principal("w", "workers"), EX)
    assert not may_publish(principal("bob", executions=["ex_1"]), EX)


def test_authenticator_refuses_alg_none_and_pins_algorithms():
    auth = Authenticator(secret=SECRET, algorithms=["none", "HS256"])
    assert auth.algorithms == ["HS256"]
    good = auth.mint("alice", ["executions:read"], ttl=60, executions=["ex_1"])
    p = auth.decode(good)
    assert p.sub == "alice" and p.scopes == {"executions:read"} and p.executions == {"ex_1"}
    claims = {"sub": "alice", "exp": int(time.time()) + 60}
    for token in (unsigned(claims), jwt.encode(claims, SECRET, algorithm="HS384")):
        with pytest.raises(HeraldError) as refused:
            auth.decode(token)
        assert refused.value.status == 401
    with pytest.raises(HeraldError) as refused:
        auth.decode(jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"))  # no exp
    assert refused.value.status == 401
    with pytest.raises(ValueError):
        Authenticator(secret=SECRET, algorithms=["RS256"])
    with pytest.raises(ValueError):
        Authenticator()


def test_rs256_with_a_public_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    auth = Authenticator(public_key=public)
    claims = {"sub": "svc", "exp": int(time.time()) + 60, "scope": "admin"}
    assert auth.decode(jwt.encode(claims, key, algorithm="RS256")).admin
    # An HS256 token signed with the public key text (algorithm confusion) is refused.
    with pytest.raises(HeraldError):
        auth.decode(jwt.encode(claims, SECRET, algorithm="HS256"))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(HeraldError):
        auth.decode(jwt.encode(claims, other, algorithm="RS256"))
    with pytest.raises(ValueError):
        auth.mint("svc")


def test_find_credentials_order():
    assert find_credentials(authorization="Bearer abc", ticket="t").kind == "bearer"
    found = find_credentials(authorization=None, subprotocols=["herald.v1", "herald.bearer.xyz"], cookie="c")
    assert (found.kind, found.value) == ("subprotocol", "xyz")
    assert find_credentials(authorization=None, ticket="t", access_token="a").kind == "ticket"
    assert find_credentials(authorization=None, access_token="a", cookie="c").kind == "access_token"
    assert find_credentials(authorization=None, cookie="c").kind == "cookie"
    assert find_credentials(authorization=None) is None
    with pytest.raises(HeraldError):
        find_credentials(authorization="Basic dXNlcg==")


def test_nothing_follows_a_websocket_close_frame(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        raw = await RawWebSocket.connect(h.port, f"/api/executions/{ex}/events", h.mint())
        opcode, payload = await raw.frame()
        assert opcode == 1 and json.loads(payload)["control"] == "ready"
        raw.send_text(json.dumps({"op": "auth", "token": h.mint("mallory")}))
        opcode, payload = await raw.frame()
        assert opcode == 1 and json.loads(payload)["code"] == "forbidden"
        opcode, payload = await raw.frame()
        assert opcode == 8 and int.from_bytes(payload[:2], "big") == 4403
        # The client has not answered the close yet; a publish must not reach it.
        await h.publish(ex, {"event": "token", "data": {"text": "after close"}})
        with pytest.raises(TimeoutError):
            await raw.frame(timeout=0.3)
        raw.close()

    herald_run(scenario, heartbeat=0.2)


def test_nothing_follows_the_expiry_error(herald_run):
    """The shared timer expires a connection and, in the same tick, sends heartbeats;
    a publish can land before the handler's coroutine resumes. None of it may reach
    the client after the ``token_expired`` error."""

    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        stream = h.sse(ex)
        await stream.next()
        raw = await RawWebSocket.connect(h.port, f"/api/executions/{ex}/events", h.mint())
        await raw.frame()
        for session in h.core.sessions:
            session.expire()
            session.tick(time.time(), time.monotonic(), True, h.core.settings.heartbeat)
        await h.core.publish(ex, [PublishItem("token", {"text": "late"})])
        messages = await stream.until_end()
        assert [json.loads(m.data) for m in messages] == [
            {"control": "error", "code": "token_expired", "message": "the token has expired"}
        ]
        opcode, payload = await raw.frame()
        assert json.loads(payload)["code"] == "token_expired"
        opcode, payload = await raw.frame()
        assert opcode == 8 and payload[:2] == (4401).to_bytes(2, "big") and payload[2:] == b"token_expired"
        with pytest.raises(TimeoutError):
            await raw.frame(timeout=0.3)
        raw.close()

    herald_run(scenario)


def test_cookie_websocket_must_come_from_this_origin_or_an_allowed_one(herald_run):
    """The CSRF rule of cookie-authenticated POSTs: this origin or ``--allowed-origins``,
    never ``null`` (a sandboxed frame)."""

    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        cookie = {"Cookie": f"herald_token={h.mint()}"}
        for origin in ("https://evil.example", "null"):
            foreign = await h.websocket(ex, token="", headers={**cookie, "Origin": origin})
            assert (await ws_until_closed(foreign))[0]["code"] == "forbidden" and foreign.close_code == 4403
        allowed = await h.websocket(ex, token="", headers={**cookie, "Origin": "https://app.example"})
        assert (await read_ws(allowed))["control"] == "ready"
        allowed.close()
        same = await h.websocket(ex, token="", headers={**cookie, "Origin": f"http://127.0.0.1:{h.port}"})
        assert (await read_ws(same))["control"] == "ready"
        same.close()
        # A bearer token is not ambient: any origin may use it.
        bearer = await h.websocket(ex, headers={"Origin": "https://elsewhere.example"})
        assert (await read_ws(bearer))["control"] == "ready"
        bearer.close()

    herald_run(scenario, allowed_origins=("https://app.example",))
