"""``transports.poll_server.PollServer``: long-polls answered on Herald's own HTTP path,
everything else lent to Tornado and taken back, on one port — checked with raw
sockets against a real server on 127.0.0.1 (the bytes on the wire are the point)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from core.transport import TransportName
from tests.fixtures_server import SCENARIO_TIMEOUT, Herald, running_server
from transports.poll_server import PollServer, State

ORIGIN = "https://app.example"


@asynccontextmanager
async def serving(**overrides: Any) -> AsyncIterator[tuple[Herald, PollServer]]:
    async with running_server(**overrides) as (herald, server):
        assert isinstance(server, PollServer)
        yield herald, server


def run(scenario: Callable[[Herald, PollServer], Awaitable[None]], **overrides: Any) -> None:
    async def main() -> None:
        async with serving(**overrides) as (herald, server):
            await asyncio.wait_for(scenario(herald, server), SCENARIO_TIMEOUT)

    asyncio.run(main())


class Raw:
    """One client connection speaking HTTP/1.1 by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, h: Herald) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", h.port, limit=1 << 24))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def get(self, target: str, token: str | None, version: str = "HTTP/1.1", headers: str = "") -> None:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.send(f"GET {target} {version}\r\nHost: 127.0.0.1\r\n{auth}{headers}\r\n".encode())

    async def response(self, timeout: float = 10.0) -> tuple[str, dict[str, str], bytes]:
        """The next answer: status line, headers (lower-case names), body."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                assert name.lower() not in headers, f"{name} twice"
                headers[name.lower()] = value.strip()
        body = await asyncio.wait_for(self.reader.readexactly(int(headers.get("content-length", "0"))), timeout)
        return lines[0], headers, body

    async def closed(self, timeout: float = 10.0) -> bool:
        return await asyncio.wait_for(self.reader.read(1), timeout) == b""

    def close(self) -> None:
        self.writer.close()


def events_target(ex: str, **query: Any) -> str:
    return f"/api/executions/{ex}/events?" + "&".join(f"{k}={v}" for k, v in query.items())


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)


def serving_polls(server: PollServer) -> list[State]:
    return [c.state for c in server.connections]


def test_a_document_then_polls_then_a_publish_share_one_keep_alive_connection():
    async def scenario(h: Herald, server: PollServer) -> None:
        token = h.mint()
        ex = (await h.create())["id"]
        raw = await Raw.open(h)
        raw.get(f"/api/executions/{ex}", token)  # Tornado's
        status, _, body = await raw.response()
        assert status == "HTTP/1.1 200 OK" and json.loads(body)["last_seq"] == 0
        raw.get(events_target(ex, after=0, wait=10), token)
        await until(lambda: serving_polls(server) == [State.SERVING])  # held here, on the same socket
        await h.publish(ex, {"event": "token", "data": {"text": "hi"}})
        status, headers, body = await raw.response()
        assert status == "HTTP/1.1 200 OK"
        assert headers["content-type"] == "application/json; charset=UTF-8"
        assert headers["cache-control"] == "no-store"
        assert headers["content-length"] == str(len(body)) and "date" in headers
        assert "connection" not in headers
        page = json.loads(body)  # the server's status event, then the token
        assert [e["seq"] for e in page["events"]] == [1, 2] and page["events"][1]["data"] == {"text": "hi"}
        assert page["next_after"] == 2 and page["done"] is False and page["reset"] is None
        await until(lambda: serving_polls(server) == [State.IDLE])
        # A publish on that connection is Tornado's again; the poll after it is answered here.
        body_bytes = json.dumps({"event": "complete", "data": {"result": 1}}).encode()
        raw.send(
            f"POST /api/executions/{ex}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body_bytes)}\r\n\r\n".encode()
            + body_bytes
        )
        status, _, body = await raw.response()
        assert status == "HTTP/1.1 202 Accepted" and json.loads(body) == {"seq": [3]}
        raw.get(events_target(ex, after=2, wait=10), token)
        status, _, body = await raw.response()
        page = json.loads(body)
        assert [e["event"] for e in page["events"]] == ["complete"] and page["done"] is True
        assert h.core.metrics.connections[TransportName.LONGPOLL.value] == 0
        raw.close()

    run(scenario)


def test_pipelined_polls_are_answered_in_order():
    async def scenario(h: Herald, server: PollServer) -> None:
        token = h.mint()
        ex = (await h.create())["id"]
        await h.publish(ex, [{"event": "token", "data": {"text": str(i)}} for i in range(3)])
        raw = await Raw.open(h)
        raw.get(events_target(ex, after=0, limit=1), token)
        raw.get(events_target(ex, after=1, limit=1), token)
        raw.get(events_target(ex, after=2, wait=10), token)
        pages = [json.loads((await raw.response())[2]) for _ in range(3)]
        assert [[e["seq"] for e in page["events"]] for page in pages] == [[1], [2], [3, 4]]
        raw.close()

    run(scenario)


def test_a_client_leaving_a_held_poll_ends_its_session():
    async def scenario(h: Herald, server: PollServer) -> None:
        ex = (await h.create())["id"]
        raw = await Raw.open(h)
        raw.get(events_target(ex, after=0, wait=30), h.mint())
        await until(lambda: len(h.core.sessions) == 1)
        raw.close()
        await until(lambda: len(h.core.sessions) == 0 and not server.connections)
        assert h.core.metrics.connections[TransportName.LONGPOLL.value] == 0

    run(scenario)


def test_http_1_0_is_answered_in_kind_and_closed_unless_kept_alive():
    async def scenario(h: Herald, server: PollServer) -> None:
        ex = (await h.create())["id"]
        raw = await Raw.open(h)
        raw.get(events_target(ex, after=0), h.mint(), version="HTTP/1.0", headers="Connection: keep-alive\r\n")
        status, headers, _ = await raw.response()
        assert status == "HTTP/1.0 200 OK" and headers["connection"] == "Keep-Alive"
        raw.get(events_target(ex, after=0), h.mint(), version="HTTP/1.0")
        status, headers, body = await raw.response()
        assert status == "HTTP/1.0 200 OK" and headers["connection"] == "close"
        assert json.loads(body)["events"] == []
        assert await raw.closed()

    run(scenario)


def test_refusals_keep_the_error_shape_and_the_cors_headers():
    async def scenario(h: Herald, server: PollServer) -> None:
        ex = (await h.create())["id"]
        raw = await Raw.open(h)
        origin = f"Origin: {ORIGIN}\r\n"
        raw.get(events_target(ex, after=0), "not-a-jwt", headers=origin)
        status, headers, body = await raw.response()
        assert status == "HTTP/1.1 401 Unauthorized" and json.loads(body)["error"]["code"] == "unauthorized"
        assert headers["access-control-allow-origin"] == ORIGIN and headers["vary"] == "Origin"
        raw.get(events_target(ex, after="x"), h.mint(), headers=origin)
        status, _, body = await raw.response()
        assert status == "HTTP/1.1 400 Bad Request"
        assert json.loads(body)["error"]["code"] == "cursor_out_of_range"
        raw.get(events_target("ex_nope", after=0), h.mint())
        status, headers, body = await raw.response()
        assert status == "HTTP/1.1 404 Not Found" and "access-control-allow-origin" not in headers
        other = await Raw.open(h)
        other.get(events_target(ex, after=0, wait=30), h.mint())
        await until(lambda: len(h.core.sessions) == 1)
        raw.get(events_target(ex, after=0, wait=30), h.mint())  # the subject's second connection
        status, headers, body = await raw.response()
        assert status == "HTTP/1.1 429 Too Many Requests" and headers["retry-after"] == "5"
        assert json.loads(body)["error"]["code"] == "too_many_connections"
        raw.close()
        other.close()

    run(scenario, allowed_origins=(ORIGIN,), max_connections_per_subject=1)


def test_an_idle_keep_alive_connection_is_closed_after_the_header_timeout():
    async def scenario(h: Herald, server: PollServer) -> None:
        ex = (await h.create())["id"]
        raw = await Raw.open(h)
        raw.get(events_target(ex, after=0), h.mint())
        await raw.response()
        began = asyncio.get_running_loop().time()
        assert await raw.closed(timeout=8)
        assert asyncio.get_running_loop().time() - began >= 0.9
        await until(lambda: not server.connections)

    run(scenario, header_timeout=1.0)


def test_a_page_bigger_than_the_socket_buffer_is_written_whole_to_a_slow_reader():
    async def scenario(h: Herald, server: PollServer) -> None:
        ex = (await h.create())["id"]
        text = "x" * 50_000
        for _ in range(10):
            await h.publish(ex, [{"event": "token", "data": {"text": text}} for _ in range(10)])
        raw = await Raw.open(h)
        raw.get(events_target(ex, after=0, limit=100), h.mint())
        await until(lambda: serving_polls(server) == [State.WRITING])  # ~5 MB the socket could not take
        await asyncio.sleep(0.2)
        status, _, body = await raw.response()
        page = json.loads(body)
        assert status == "HTTP/1.1 200 OK" and [e["seq"] for e in page["events"]] == list(range(1, 101))
        assert all(e["data"]["text"] == text for e in page["events"][1:])  # after the status event
        await until(lambda: serving_polls(server) == [State.IDLE])
        raw.close()

    run(scenario)


def test_a_head_arriving_in_pieces_or_a_get_with_a_body_is_served_by_tornado():
    async def scenario(h: Herald, server: PollServer) -> None:
        ex = (await h.create())["id"]
        raw = await Raw.open(h)
        first, second = f"GET {events_target(ex, after=0)} HTTP/1.1\r\nHost: x\r\n".encode(), b"\r\n"
        raw.send(first + f"Authorization: Bearer {h.mint()}\r\n".encode())
        await asyncio.sleep(0.2)
        raw.send(second)
        status, _, body = await raw.response()
        assert status == "HTTP/1.1 200 OK" and json.loads(body)["events"] == []
        raw.send(
            f"GET {events_target(ex, after=0)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {h.mint()}\r\n"
            "Content-Length: 4\r\n\r\nbody".encode()
        )
        status, _, body = await raw.response()
        assert status == "HTTP/1.1 200 OK" and json.loads(body)["next_after"] == 0
        raw.send(b"GET /api/executions/%s/events?after=0 HTTP/1.1\r\nHost: a,b\r\n\r\n" % ex.encode())
        status, _, _ = await raw.response()  # Tornado's refusal of a bad Host
        assert status.startswith("HTTP/1.1 400")
        raw.close()

    run(scenario)


def test_a_drain_answers_a_held_poll_and_closes_its_connection():
    async def scenario(h: Herald, server: PollServer) -> None:
        ex = (await h.create())["id"]
        raw = await Raw.open(h)
        raw.get(events_target(ex, after=0, wait=30), h.mint())
        await until(lambda: len(h.core.sessions) == 1)
        server.conn_params.no_keep_alive = True  # as server.shut_down does
        h.core.sessions.drain()
        status, headers, body = await raw.response()
        assert status == "HTTP/1.1 200 OK" and headers["connection"] == "close"
        assert json.loads(body)["events"] == []
        assert await raw.closed()

    run(scenario)


def test_without_long_poll_every_connection_is_tornados():
    async def scenario(h: Herald, server: PollServer) -> None:
        assert not server.polls_here
        ex = (await h.create())["id"]
        raw = await Raw.open(h)
        raw.get(events_target(ex, after=0), h.mint())
        status, _, body = await raw.response()
        assert status == "HTTP/1.1 400 Bad Request" and json.loads(body)["error"]["code"] == "bad_request"
        assert not server.connections
        raw.close()

    run(scenario, transports=("websocket", "sse"))
