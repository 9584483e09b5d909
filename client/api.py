"""The HTTP API of PROTOCOL.md section 4 as async methods."""

from __future__ import annotations

import builtins  # ``list`` is also a method of HeraldClient
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest


class ApiError(Exception):
    """A refusal in the contract's error shape."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        self.status = status
        self.code = error.get("code", "unknown")
        self.message = error.get("message", str(body))
        self.details = error.get("details", {})
        self.headers = headers or {}
        super().__init__(f"{status} {self.code}: {self.message}")


class HeraldClient:
    """A caller of one Herald server with one token."""

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30.0, max_clients: int = 1000) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        # An instance of its own: Tornado's shared client runs 10 requests at a time,
        # and every SSE or long-poll follower holds one for as long as it follows.
        self.http = AsyncHTTPClient(force_instance=True, max_clients=max_clients)

    def close(self) -> None:
        """Release the HTTP client (open streams end with their followers)."""
        self.http.close()

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        h.update(extra or {})
        return h

    async def request(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """One JSON call; raises ApiError with the contract's error fields."""
        url = self.base_url + path
        params = {k: v for k, v in query.items() if v is not None}
        if params:
            url += "?" + urlencode(params)
        payload = None if body is None else json.dumps(body)
        if payload is None and method == "POST":
            payload = ""
        headers = self.headers({"Content-Type": "application/json"} if body is not None else None)
        request = HTTPRequest(
            url,
            method=method,
            body=payload,
            headers=headers,
            request_timeout=self.timeout,
            allow_nonstandard_methods=True,
        )
        try:
            response = await self.http.fetch(request)
        except HTTPClientError as exc:
            if exc.response is None:
                raise
            try:
                parsed = json.loads(exc.response.body or b"{}")
            except ValueError:
                parsed = {"error": {"code": "unparsable", "message": exc.response.body[:200]}}
            raise ApiError(exc.code, parsed, dict(exc.response.headers)) from None
        return json.loads(response.body) if response.body else None

    async def create(self, kind: str, input: dict[str, Any] | None = None, queue: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": kind, "input": input or {}}
        if queue:
            body["queue"] = queue
        return await self.request("POST", "/api/executions", body)

    async def get(self, execution_id: str) -> dict[str, Any]:
        return await self.request("GET", f"/api/executions/{execution_id}")

    async def list(self, **query: Any) -> dict[str, Any]:
        return await self.request("GET", "/api/executions", **query)

    async def publish(self, execution_id: str, event: str, data: Any = None, key: str | None = None) -> int:
        item: dict[str, Any] = {"event": event, "data": {} if data is None else data}
        if key is not None:
            item["key"] = key
        answer = await self.request("POST", f"/api/executions/{execution_id}/events", item)
        return answer["seq"][0]

    async def publish_many(self, execution_id: str, items: builtins.list[dict[str, Any]]) -> builtins.list[int]:
        answer = await self.request("POST", f"/api/executions/{execution_id}/events", items)
        return answer["seq"]

    async def cancel(self, execution_id: str, reason: str | None = None) -> builtins.list[int]:
        answer = await self.request(
            "POST", f"/api/executions/{execution_id}/cancel", {"reason": reason} if reason else {}
        )
        return answer["seq"]

    async def ticket(self) -> str:
        return (await self.request("POST", "/api/tickets"))["ticket"]

    async def negotiate(self) -> dict[str, Any]:
        return await self.request("GET", "/api/negotiate")

    def follow(
        self, execution_id: str, *, transport: str = "websocket", after: int = 0, **options: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Every event after ``after``, in order, across reconnects; ends after the
        terminal event. See ``client.follow.Follower`` for options."""
        from client.follow import Follower

        return Follower(self, execution_id, transport=transport, after=after, **options).events()

    def follow_many(
        self, cursors: dict[str, int], *, transport: str = "websocket", **options: Any
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Several executions over one connection (``/api/streams``): ``(execution_id,
        item)`` for every event after each one's cursor, in order per execution, across
        reconnects; ends when every execution has ended. See
        ``client.streams.StreamsFollower`` for options."""
        from client.streams import StreamsFollower

        return StreamsFollower(self, cursors, transport=transport, **options).items()
