"""A real Herald on a real 127.0.0.1 port, in this test process, for one scenario.

Each test runs its scenario with ``herald_run(scenario, **settings)``: a fresh event
loop, a fresh Core (embedded store, in-process broker) built by ``server.build_core``
and served by ``server.make_app`` on a free port, torn down afterwards. The scenario
receives a ``Herald`` handle with the Core (to reach the store, e.g. to prune) and
helpers that speak to the server only through real sockets: Tornado's HTTP and
WebSocket clients, and raw sockets where the bytes on the wire are the point.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.netutil import bind_sockets
from tornado.websocket import WebSocketClientConnection, websocket_connect

from client.api import HeraldClient
from client.sse import SseMessage, SseParser
from core.auth import ALL_SCOPES
from core.service import Core
from core.settings import Secret, Settings
from server import build_core, make_app, make_server

SECRET = "test-secret-" + "0123456789abcdef" * 4
#: A scenario must finish within this many seconds, or the test fails (not hangs).
SCENARIO_TIMEOUT = 30.0

# Tornado's HTTP client queues requests past 10 at a time per loop; an SSE stream holds
# its slot for its whole life, so a test with many SSE followers needs more slots.
AsyncHTTPClient.configure(None, max_clients=1000)


@dataclass
class Herald:
    """A running in-process server and what a test needs to talk to it."""

    core: Core
    port: int
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def mint(self, sub: str = "alice", scopes: Any = ALL_SCOPES[:3], ttl: float = 600, **kw: Any) -> str:
        """A token signed with the server's own key (default: read, write, publish)."""
        return self.core.auth.mint(sub, scopes, ttl=ttl, **kw)

    def client(self, token: str | None = None, sub: str = "alice") -> HeraldClient:
        return HeraldClient(self.base_url, token if token is not None else self.mint(sub))

    def events_url(self, execution_id: str, **query: Any) -> str:
        url = f"{self.base_url}/api/executions/{execution_id}/events"
        return url + ("?" + urlencode(query) if query else "")

    async def fetch(
        self,
        path: str,
        *,
        method: str = "GET",
        token: str | None = None,
        body: Any = None,
        raw_body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 15.0,
    ) -> HTTPResponse:
        """One HTTP call that never raises on an error status."""
        h = dict(headers or {})
        if token is not None:
            h.setdefault("Authorization", f"Bearer {token}")
        payload = raw_body
        if body is not None:
            payload = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        if payload is None and method == "POST":
            payload = b""
        url = path if path.startswith("http") else self.base_url + path
        request = HTTPRequest(
            url, method=method, body=payload, headers=h, request_timeout=timeout, allow_nonstandard_methods=True
        )
        return await AsyncHTTPClient().fetch(request, raise_error=False)

    async def create(self, token: str | None = None, kind: str = "chat", **body: Any) -> dict[str, Any]:
        response = await self.fetch(
            "/api/executions", method="POST", token=token or self.mint(), body={"kind": kind, **body}
        )
        assert response.code == 201, response.body
        return json.loads(response.body)

    async def publish(self, execution_id: str, items: Any, token: str | None = None) -> list[int]:
        response = await self.fetch(
            f"/api/executions/{execution_id}/events", method="POST", token=token or self.mint(), body=items
        )
        assert response.code == 202, response.body
        return json.loads(response.body)["seq"]

    async def tokens_batch(self, execution_id: str, start: int, count: int) -> list[int]:
        """Publish ``count`` token events ``t<start>``... in one request."""
        items = [{"event": "token", "data": {"text": f"t{i}"}} for i in range(start, start + count)]
        return await self.publish(execution_id, items)

    async def last_seq(self, execution_id: str) -> int:
        execution = await self.core.store.get_execution(execution_id)
        assert execution is not None
        return execution.last_seq

    async def websocket(
        self,
        execution_id: str,
        token: str | None = None,
        *,
        subprotocols: list[str] | None = None,
        headers: dict[str, str] | None = None,
        **query: Any,
    ) -> WebSocketClientConnection:
        """An open WebSocket on the stream URL (Bearer header unless ``token=''``)."""
        h = dict(headers or {})
        if token is None:
            token = self.mint()
        if token:
            h["Authorization"] = f"Bearer {token}"
        url = f"{self.ws_base}/api/executions/{execution_id}/events"
        if query:
            url += "?" + urlencode(query)
        request = HTTPRequest(url, headers=h, connect_timeout=5, request_timeout=5)
        return await websocket_connect(request, subprotocols=subprotocols)

    def sse(self, execution_id: str, token: str | None = None, **kw: Any) -> SseStream:
        return SseStream(self, execution_id, token if token is not None else self.mint(), **kw)


async def read_ws(conn: WebSocketClientConnection, timeout: float = 5.0) -> dict[str, Any] | None:
    """The next JSON message, or None when the server closed the socket."""
    message = await asyncio.wait_for(conn.read_message(), timeout)
    return None if message is None else json.loads(message)


async def ws_until_closed(conn: WebSocketClientConnection, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every message until the close; the close code/reason stay on ``conn``."""
    out = []
    while True:
        message = await read_ws(conn, timeout)
        if message is None:
            return out
        out.append(message)


class SseStream:
    """A streaming GET with ``Accept: text/event-stream``, parsed as it arrives."""

    def __init__(
        self,
        herald: Herald,
        execution_id: str,
        token: str,
        *,
        headers: dict[str, str] | None = None,
        **query: Any,
    ) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.raw = bytearray()
        self.parser = SseParser()
        self._queue: asyncio.Queue[SseMessage | None] = asyncio.Queue()
        h = {"Accept": "text/event-stream", **(headers or {})}
        if token:
            h["Authorization"] = f"Bearer {token}"
        request = HTTPRequest(
            herald.events_url(execution_id, **query),
            headers=h,
            header_callback=self._on_header,
            streaming_callback=self._on_chunk,
            request_timeout=60,
        )
        self.response = asyncio.ensure_future(AsyncHTTPClient().fetch(request, raise_error=False))
        self.response.add_done_callback(lambda _: self._queue.put_nowait(None))

    def _on_header(self, line: str) -> None:
        if line.startswith("HTTP/"):
            self.status = int(line.split()[1])
        elif ":" in line:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def _on_chunk(self, chunk: bytes) -> None:
        self.raw += chunk
        if self.status == 200:
            for message in self.parser.feed(chunk):
                self._queue.put_nowait(message)

    async def next(self, timeout: float = 5.0) -> SseMessage | None:
        """The next message, or None when the response ended."""
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def until_end(self, timeout: float = 10.0) -> list[SseMessage]:
        out = []
        while (message := await self.next(timeout)) is not None:
            out.append(message)
        return out

    async def events(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The next ``count`` events (control messages skipped)."""
        out: list[dict[str, Any]] = []
        while len(out) < count:
            message = await self.next(timeout)
            assert message is not None, f"stream ended after {len(out)} of {count} events"
            if message.event != "control":
                out.append(json.loads(message.data))
        return out

    async def refusal(self) -> tuple[int, dict[str, Any]]:
        """For a stream refused before it started: the status and the JSON body."""
        response = await self.response
        return response.code, json.loads(bytes(self.raw))

    def close(self) -> None:
        if not self.response.done():
            self.response.cancel()


class RawWebSocket:
    """A WebSocket client on a bare socket that never answers a close frame, so a
    test sees every byte the server sends after its own close frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.head = head

    @classmethod
    async def connect(cls, port: int, path: str, token: str) -> RawWebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer, head)

    async def frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The next frame as (opcode, payload); server frames are never masked."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        n = second & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        return first & 0x0F, await self.reader.readexactly(n)

    def send_text(self, text: str) -> None:
        """A masked text frame (the mask is zero: clients must mask, not hide)."""
        payload = text.encode()
        assert len(payload) < 65536
        size = bytes((0x80 | len(payload),)) if len(payload) < 126 else bytes((0xFE,)) + len(payload).to_bytes(2, "big")
        self.writer.write(b"\x81" + size + b"\0\0\0\0" + payload)

    def close(self) -> None:
        self.writer.close()


def free_port() -> int:
    [sock] = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    port = sock.getsockname()[1]
    sock.close()
    return port


def herald_settings(**overrides: Any) -> Settings:
    """Settings for a test server: a known secret, short timers."""
    base = Settings(jwt_secret=Secret(SECRET), heartbeat=15.0, coalesce_ms=2.0)
    return replace(base, **overrides)


@asynccontextmanager
async def running_server(**overrides: Any):
    """Start Core + HTTP server on a free 127.0.0.1 port; stop both on exit. Yields the
    ``Herald`` and the HTTP server itself (for tests of the server's own connections)."""
    [sock] = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    port = sock.getsockname()[1]
    settings = herald_settings(port=port, **overrides)
    core = build_core(settings)
    await core.start()
    server = make_server(make_app(core), settings)
    server.add_sockets([sock])
    try:
        yield Herald(core, port, settings), server
    finally:
        server.stop()
        await core.stop()
        await asyncio.wait_for(server.close_all_connections(), 5)


@asynccontextmanager
async def running_herald(**overrides: Any):
    """Start Core + HTTP server on a free 127.0.0.1 port; stop both on exit."""
    async with running_server(**overrides) as (herald, _):
        yield herald


def run_with_herald(scenario: Callable[[Herald], Awaitable[Any]], **overrides: Any) -> Any:
    """Run ``scenario(herald)`` on a fresh loop against a fresh server."""

    async def main() -> Any:
        async with running_herald(**overrides) as herald:
            return await asyncio.wait_for(scenario(herald), SCENARIO_TIMEOUT)

    return asyncio.run(main())


@pytest.fixture
def herald_run() -> Callable[..., Any]:
    """``herald_run(scenario, **settings)``: see ``run_with_herald``."""
    return run_with_herald
