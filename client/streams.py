"""Following several executions over one connection (``/api/streams``), on WebSocket,
SSE or long-poll, with the single follower's resume rules kept per execution.

The follower keeps one cursor per execution, passes them all on every reconnect (as
``subscribe`` ops on a WebSocket, as the ``s=ID:AFTER`` set on SSE and long-poll), drops
any event at or below its execution's cursor, and stops following an execution after
its terminal event, its end, or a refusal for it (yielded as an ``error`` control with
its ``execution_id``: the others go on). It ends when no execution is left.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, websocket_connect

from client.event_stream import read_event_stream
from client.follow import FATAL_CLOSE, FATAL_STATUS, TERMINAL, StreamEnded, _error_code
from client.sse import SseParser
from core.timing import backoff_delay

if TYPE_CHECKING:
    from client.api import HeraldClient

#: What the follower yields: the execution an item belongs to, and the item (an event
#: envelope, or a ``reset`` / ``error`` control message).
Item = tuple[str, dict[str, Any]]
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class _Reconnect(Exception):
    """This connection is over; connect again with the cursors."""


class StreamsFollower:
    """Several executions' streams for one caller, over one connection at a time."""

    def __init__(
        self,
        client: HeraldClient,
        cursors: dict[str, int],
        *,
        transport: str = "websocket",
        reconnect: bool = True,
        max_attempts: int | None = None,
        idle_timeout: float = 40.0,
        wait: int = 25,
        first_delay: float = 0.2,
    ) -> None:
        if transport not in ("websocket", "sse", "longpoll"):
            raise ValueError(f"unknown transport {transport!r}")
        self.client = client
        #: Each execution still followed, and the last seq seen of it.
        self.cursors = dict(cursors)
        self.transport = transport
        self.reconnect = reconnect
        self.max_attempts = max_attempts
        self.idle_timeout = idle_timeout
        self.wait = wait
        self.first_delay = first_delay
        self.connections = 0

    @property
    def url(self) -> str:
        return f"{self.client.base_url}/api/streams"

    def query(self, **extra: Any) -> str:
        pairs = [("s", f"{eid}:{after}") for eid, after in self.cursors.items()] + list(extra.items())
        return urlencode(pairs)

    async def items(self) -> AsyncIterator[Item]:
        failures = 0
        connect = {"websocket": self._websocket, "sse": self._sse, "longpoll": self._longpoll}[self.transport]
        while self.cursors:
            try:
                async for execution_id, message in connect():
                    failures = 0
                    item = self._accept(execution_id, message)
                    if item is not None:
                        yield execution_id, item
                    if not self.cursors:
                        return
            except (_Reconnect, TimeoutError, OSError, StreamClosedError, WebSocketClosedError):
                pass
            except HTTPClientError as exc:
                if exc.code in FATAL_STATUS or exc.code == 401:
                    raise StreamEnded(exc.code, _error_code(exc)) from None
            if not self.cursors:
                return
            if not self.reconnect or (self.max_attempts is not None and failures >= self.max_attempts):
                raise StreamEnded(0, "disconnected")
            await asyncio.sleep(backoff_delay(failures, first=self.first_delay, cap=5.0))
            failures += 1

    def _accept(self, execution_id: str, message: dict[str, Any]) -> dict[str, Any] | None:
        """Apply one execution's cursor rules; return what the caller should see."""
        if execution_id not in self.cursors:
            return None  # no longer followed (ended, refused)
        control = message.get("control")
        if control == "reset":
            document = message["execution"]
            self.cursors[execution_id] = max(self.cursors[execution_id], document["last_seq"])
            if document["status"] in TERMINAL_STATUSES:
                del self.cursors[execution_id]
            return message
        if control == "ended":
            del self.cursors[execution_id]
            return None
        if control == "error":
            del self.cursors[execution_id]
            return message
        if control is not None:
            return None  # subscribed, unsubscribed
        if message["seq"] <= self.cursors[execution_id]:
            return None  # already seen (a replay overlapping a live delivery)
        self.cursors[execution_id] = message["seq"]
        if message["event"] in TERMINAL:
            del self.cursors[execution_id]
        return message

    # --- transports ------------------------------------------------------------------
    async def _websocket(self) -> AsyncIterator[Item]:
        url = self.url.replace("http", "ws", 1)
        request = HTTPRequest(url, headers=self.client.headers(), connect_timeout=10, request_timeout=10)
        conn = await websocket_connect(request, subprotocols=["herald.v1"])
        self.connections += 1
        try:
            for execution_id, after in self.cursors.items():
                await conn.write_message(json.dumps({"op": "subscribe", "execution_id": execution_id, "after": after}))
            while True:
                raw = await asyncio.wait_for(conn.read_message(), self.idle_timeout)
                if raw is None:
                    break
                message = json.loads(raw)
                execution_id = message.get("execution_id")
                if isinstance(execution_id, str):
                    yield execution_id, message
        finally:
            conn.close()
        if conn.close_code in FATAL_CLOSE or conn.close_code == 4401:
            raise StreamEnded(conn.close_code or 0, conn.close_reason or "")
        raise _Reconnect

    async def _sse(self) -> AsyncIterator[Item]:
        self.connections += 1
        url = f"{self.url}?{self.query()}"
        async for sse in read_event_stream(
            self.client.http, url, self.client.headers(), self.idle_timeout, SseParser()
        ):
            message = json.loads(sse.data)
            execution_id = message.get("execution_id")
            if isinstance(execution_id, str):
                yield execution_id, message
            elif message.get("control") == "error":
                raise StreamEnded(401 if message.get("code") == "token_expired" else 0, message["code"])
        raise _Reconnect

    async def _longpoll(self) -> AsyncIterator[Item]:
        self.connections += 1
        while self.cursors:
            request = HTTPRequest(
                f"{self.url}?{self.query(wait=self.wait)}",
                headers=self.client.headers(),
                connect_timeout=10,
                request_timeout=self.wait + 15,
            )
            page = json.loads((await self.client.http.fetch(request)).body)
            for execution_id, document in page["resets"].items():
                yield execution_id, {"control": "reset", "execution_id": execution_id, "execution": document}
            for event in page["events"]:
                yield event["execution_id"], event
            for execution_id, error in page["errors"].items():
                yield execution_id, {"control": "error", "execution_id": execution_id, **error}
            for execution_id in page["ended"]:
                yield execution_id, {"control": "ended", "execution_id": execution_id}
            for execution_id, cursor in page["cursors"].items():
                if execution_id in self.cursors:
                    self.cursors[execution_id] = max(self.cursors[execution_id], cursor)
