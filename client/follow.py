"""Following a stream over WebSocket, SSE or long-poll, with the same resume rules.

The follower keeps one cursor (``after``): it passes it on every reconnect, drops any
event with ``seq <= after`` and stops after the terminal event, so a caller sees every
event exactly once, in order, whatever the connection does. A draining server's retry
hint (WebSocket close reason ``server_shutdown retry=<ms>``, SSE ``retry:`` after
``ready``) is the wait before the next connection, instead of the backoff. A ``reset`` (the server
dropped events by retention) is yielded as ``{"control": "reset", "execution": {...}}``
and moves the cursor to the document's ``last_seq``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, websocket_connect

from client.event_stream import read_event_stream
from client.sse import SseParser
from core.timing import backoff_delay

if TYPE_CHECKING:
    from client.api import HeraldClient

TERMINAL = frozenset({"complete", "error", "cancelled"})
RETRY_HINT = re.compile(r"\bretry=(\d+)\b")
FATAL_CLOSE = {4400, 4403, 4404}
FATAL_STATUS = {400, 403, 404}


class StreamEnded(Exception):
    """The server refused the stream for good (bad cursor, forbidden, unknown id...)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class _Reconnect(Exception):
    """This connection is over; connect again with the cursor."""


class Follower:
    """One execution's stream for one caller, over one transport."""

    def __init__(
        self,
        client: HeraldClient,
        execution_id: str,
        *,
        transport: str = "websocket",
        after: int = 0,
        reconnect: bool = True,
        max_attempts: int | None = None,
        idle_timeout: float = 40.0,
        wait: int = 25,
        limit: int = 500,
        first_delay: float = 0.2,
        on_control: Callable[[dict[str, Any]], None] | None = None,
        token_provider: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        if transport not in ("websocket", "sse", "longpoll"):
            raise ValueError(f"unknown transport {transport!r}")
        self.client = client
        self.execution_id = execution_id
        self.transport = transport
        self.after = after
        self.reconnect = reconnect
        self.max_attempts = max_attempts
        self.idle_timeout = idle_timeout
        self.wait = wait
        self.limit = limit
        self.first_delay = first_delay
        self.on_control = on_control
        self.token_provider = token_provider
        self.connections = 0
        self.done = False
        #: Seconds a draining server asked this follower to wait before reconnecting.
        self._retry_hint: float | None = None

    @property
    def url(self) -> str:
        return f"{self.client.base_url}/api/executions/{self.execution_id}/events"

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        failures = 0
        while not self.done:
            connect = {"websocket": self._websocket, "sse": self._sse, "longpoll": self._longpoll}[self.transport]
            try:
                async for item in connect():
                    failures = 0
                    out = self._accept(item)
                    if out is not None:
                        yield out
                    if self.done:
                        return
            except _Reconnect:
                pass
            except (TimeoutError, OSError, StreamClosedError, WebSocketClosedError):
                pass
            except HTTPClientError as exc:
                if exc.code in FATAL_STATUS:
                    raise StreamEnded(exc.code, _error_code(exc)) from None
                if exc.code == 401:
                    await self._refresh_or_fail(exc.code, _error_code(exc))
            if self.done:
                return
            if not self.reconnect or (self.max_attempts is not None and failures >= self.max_attempts):
                raise StreamEnded(0, "disconnected")
            if self._retry_hint is not None:
                # A drain is no failure: come back when the server said, not later.
                await asyncio.sleep(self._retry_hint)
                self._retry_hint = None
                continue
            await asyncio.sleep(backoff_delay(failures, first=self.first_delay, cap=5.0))
            failures += 1

    def _accept(self, item: dict[str, Any]) -> dict[str, Any] | None:
        """Apply the cursor rules to one message; return what the caller should see."""
        if "control" in item:
            if item["control"] == "reset":
                execution = item["execution"]
                self.after = max(self.after, execution["last_seq"])
                if execution["status"] in ("succeeded", "failed", "cancelled"):
                    self.done = True
                return item
            if self.on_control is not None:
                self.on_control(item)
            return None
        seq = item["seq"]
        if seq <= self.after:
            return None  # already seen (a replay overlapping a live delivery)
        self.after = seq
        if item["event"] in TERMINAL:
            self.done = True
        return item

    async def _refresh_or_fail(self, code: int, reason: str) -> None:
        if self.token_provider is None:
            raise StreamEnded(code, reason)
        self.client.token = await self.token_provider()

    # --- transports ------------------------------------------------------------------
    async def _websocket(self) -> AsyncIterator[dict[str, Any]]:
        url = self.url.replace("http", "ws", 1) + f"?after={self.after}"
        request = HTTPRequest(url, headers=self.client.headers(), connect_timeout=10, request_timeout=10)
        conn = await websocket_connect(request, subprotocols=["herald.v1"])
        self.connections += 1
        try:
            while True:
                message = await asyncio.wait_for(conn.read_message(), self.idle_timeout)
                if message is None:
                    break
                yield json.loads(message)
        finally:
            conn.close()
        code, reason = conn.close_code, conn.close_reason or ""
        hint = RETRY_HINT.search(reason) if code == 1001 else None
        if hint is not None:
            self._retry_hint = int(hint[1]) / 1000
        if code == 4401:
            await self._refresh_or_fail(code, reason)
            raise _Reconnect
        if code in FATAL_CLOSE:
            raise StreamEnded(code, reason)
        raise _Reconnect

    async def _sse(self) -> AsyncIterator[dict[str, Any]]:
        url = self.url + "?" + urlencode({"after": self.after})
        headers = self.client.headers({"Last-Event-ID": str(self.after)})
        parser = SseParser()
        self.connections += 1
        async for message in read_event_stream(self.client.http, url, headers, self.idle_timeout, parser):
            item = json.loads(message.data)
            if item.get("control") == "ready":
                parser.retry_ms = None  # a ``retry:`` from now on is a drain's hint
            expired = item.get("control") == "error" and item.get("code") == "token_expired"
            if message.event == "control" and expired:
                await self._refresh_or_fail(401, "token_expired")
                raise _Reconnect
            yield item
        if parser.retry_ms is not None and not self.done:
            self._retry_hint = parser.retry_ms / 1000
        raise _Reconnect

    async def _longpoll(self) -> AsyncIterator[dict[str, Any]]:
        self.connections += 1
        while True:
            query = urlencode({"after": self.after, "wait": self.wait, "limit": self.limit})
            request = HTTPRequest(
                f"{self.url}?{query}", headers=self.client.headers(), connect_timeout=10, request_timeout=self.wait + 15
            )
            response = await self.client.http.fetch(request)
            page = json.loads(response.body)
            if page.get("reset"):
                yield {"control": "reset", "execution": page["reset"]}
            for event in page["events"]:
                yield event
            if page["done"]:
                self.done = True
                return


def _error_code(exc: HTTPClientError) -> str:
    try:
        return json.loads(exc.response.body)["error"]["code"]  # type: ignore[union-attr]
    except (AttributeError, KeyError, TypeError, ValueError):  # no body, or not the error shape
        return exc.message or "error"
