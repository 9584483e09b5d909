"""Helpers for worker tests: a raw worker speaking PROTOCOL.md section 6 over a real
WebSocket (so a test controls every frame, and can drop the socket without a close
frame, as a crashed machine would), and a counter of store appends."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.fixtures_server import Herald

WORKER_SCOPES = ("workers",)


def worker_token(herald: Herald, sub: str = "gpu-box") -> str:
    return herald.mint(sub, WORKER_SCOPES)


class RawWorker:
    """A worker connection driven by hand."""

    def __init__(self, conn: WebSocketClientConnection, ready: dict[str, Any]) -> None:
        self.conn = conn
        self.ready = ready
        self.seen: list[dict[str, Any]] = []

    async def next_op(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next ``op`` message (execute/cancel); controls are kept in ``seen``."""
        while True:
            message = await asyncio.wait_for(self.conn.read_message(), timeout)
            assert message is not None, f"closed: {self.conn.close_code} {self.conn.close_reason}"
            item = json.loads(message)
            self.seen.append(item)
            if "op" in item:
                return item

    async def execute(self, timeout: float = 5.0) -> dict[str, Any]:
        op = await self.next_op(timeout)
        assert op["op"] == "execute", op
        return op["execution"]

    def send(self, message: dict[str, Any]) -> None:
        self.conn.write_message(json.dumps(message))

    def event(self, execution_id: str, event: str, data: Any = None) -> None:
        self.send({"op": "event", "execution_id": execution_id, "event": event, "data": data or {}})

    def kill(self) -> None:
        """Drop the TCP connection with no close frame (a crashed worker)."""
        self.conn.protocol.stream.close()  # type: ignore[union-attr]


async def connect_worker(
    herald: Herald,
    queue: str,
    name: str,
    *,
    token: str | None = None,
    capacity: int | None = None,
    subprotocol_auth: bool = False,
) -> RawWorker:
    """A connected worker that got its ``ready`` control (asserts it did)."""
    conn = await open_worker_socket(herald, queue, name, token=token, subprotocol_auth=subprotocol_auth)
    message = await asyncio.wait_for(conn.read_message(), 5)
    assert message is not None, f"refused: {conn.close_code} {conn.close_reason}"
    ready = json.loads(message)
    assert ready.get("control") == "ready", ready
    worker = RawWorker(conn, ready)
    if capacity is not None:
        worker.send({"op": "ready", "capacity": capacity})
    return worker


async def open_worker_socket(
    herald: Herald, queue: str, name: str, *, token: str | None = None, subprotocol_auth: bool = False
) -> WebSocketClientConnection:
    token = worker_token(herald) if token is None else token
    url = f"{herald.ws_base}/api/workers/connect?" + urlencode({"queue": queue, "name": name})
    headers = {} if subprotocol_auth or not token else {"Authorization": f"Bearer {token}"}
    protocols = ["herald.v1"] + ([f"herald.bearer.{token}"] if subprotocol_auth else [])
    request = HTTPRequest(url, headers=headers, connect_timeout=5, request_timeout=5)
    return await websocket_connect(request, subprotocols=protocols)


def count_appends(herald: Herald) -> list[int]:
    """Count ``store.append`` calls from now on: a delegating wrapper on the real store
    (the appends still happen), read as ``counter[0]``."""
    counter = [0]
    store = herald.core.store
    original = store.append

    async def counted(execution_id: str, items: Any) -> Any:
        counter[0] += 1
        return await original(execution_id, items)

    store.append = counted  # type: ignore[method-assign]
    return counter


async def follow_all(herald: Herald, execution_id: str, transport: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Every event of an execution over ``transport`` until its terminal event."""
    client = herald.client()

    async def collect() -> list[dict[str, Any]]:
        return [e async for e in client.follow(execution_id, transport=transport, limit=1000)]

    return await asyncio.wait_for(collect(), timeout)
