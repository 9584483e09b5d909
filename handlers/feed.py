"""The dashboard feed, ``/api/executions/feed``, over the same three transports as an
execution's stream and routed the same way (Upgrade → WebSocket, ``Accept:
text/event-stream`` → SSE, anything else → JSON long-poll). Wire format:
docs/protocol.md ("The dashboard feed"); the state it serves: core/feed.py.

Every connection starts with a ``snapshot`` and continues with one ``execution``
message per change, so the feed needs no cursor: a reconnecting client simply gets a
fresh snapshot. Long-poll clients pass the ``version`` they hold instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tornado.iostream import StreamClosedError
from tornado.routing import Rule

from core.auth import Principal, Scope, require
from core.codec import control, dumps, sse_control
from core.errors import ErrorCode, HeraldError
from core.feed import SNAPSHOT_SIZE, Feed
from core.stream import Core
from transports.base import HeraldRequestHandler, RequestMatches, wants_event_stream, wants_websocket
from transports.herald_socket import HeraldSocket
from transports.sse import open_event_stream

FEED_PATH = r"/api/executions/feed"
MAX_WAIT = 60


async def snapshot(core: Core, feed: Feed, principal: Principal) -> dict[str, Any]:
    """The caller's newest executions, newest first, with the feed version they reflect."""
    version = feed.version
    found = await core.list_executions(owner=None if principal.admin else principal.sub, limit=SNAPSHOT_SIZE)
    from core.feed import summary

    return {"type": "snapshot", "version": version, "executions": [summary(e) for e in found]}


def change(version: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {"type": "execution", "version": version, "execution": entry}


class _Buffered:
    """Collects changes that arrive while the snapshot is being read, then passes
    them straight through; the order on the wire is snapshot, then changes."""

    def __init__(self, send) -> None:
        self.send = send
        self.pending: list[tuple[str, dict[str, Any]]] | None = []

    def __call__(self, version: str, entry: dict[str, Any]) -> None:
        if self.pending is not None:
            self.pending.append((version, entry))
        else:
            self.send(change(version, entry))

    def release(self) -> None:
        pending, self.pending = self.pending or [], None
        for version, entry in pending:
            self.send(change(version, entry))


class FeedWebSocket(HeraldSocket):
    """The feed over a WebSocket: JWT in the subprotocol list, in-band ``auth`` refresh
    (both from HeraldSocket, like an execution's stream)."""

    def initialize(self, core: Core, feed: Feed) -> None:  # type: ignore[override]
        super().initialize(core)
        self.feed = feed
        self._listener: _Buffered | None = None

    async def open(self) -> None:  # type: ignore[override]
        try:
            principal = self.sign_in()
            require(principal, Scope.EXECUTIONS_READ)
            self.admit()
            self.send_control(control("ready", transport=self.transport))
            self._listener = _Buffered(self.send_control)
            self.feed.listen(principal, self._listener)
            self.send_control(await snapshot(self.core, self.feed, principal))
            self._listener.release()
        except HeraldError as exc:
            self.refuse(exc)

    def on_close(self) -> None:
        if self._listener is not None:
            self.feed.forget(self._listener)
        super().on_close()


class FeedSse(HeraldRequestHandler):
    """The feed as ``text/event-stream``: ``event: snapshot``, then ``event: execution``."""

    transport = "sse"

    def initialize(self, core: Core, feed: Feed) -> None:  # type: ignore[override]
        super().initialize(core)
        self.feed = feed
        self.expires_at = float("inf")
        self._ended: asyncio.Future | None = None

    async def get(self) -> None:
        principal = self.authenticate()
        require(principal, Scope.EXECUTIONS_READ)
        if not self.core.admit(self):
            raise HeraldError(ErrorCode.TOO_MANY_CONNECTIONS, 429, "too many connections", retry_after=5)
        self.expires_at = principal.exp
        self._ended = asyncio.get_running_loop().create_future()
        listener = _Buffered(self._send)
        try:
            await open_event_stream(self)
            self.feed.listen(principal, listener)
            self._send(await snapshot(self.core, self.feed, principal))
            listener.release()
            await self._ended
        except StreamClosedError:
            pass
        finally:
            self.feed.forget(listener)
            self.core.release(self)
        if not self.request.connection.stream.closed():  # type: ignore[attr-defined]
            self.finish()

    def _send(self, message: dict[str, Any]) -> None:
        self._write(b"event: %s\ndata: %s\n\n" % (message["type"].encode(), dumps(message).encode()))

    def _write(self, data: bytes) -> None:
        if self.request.connection.stream.closed():  # type: ignore[attr-defined]
            self._end()
            return
        self.write(data)
        self.flush()

    def _end(self) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    def heartbeat(self, now: float) -> None:
        self._write(sse_control(control("ping")))

    def expire(self) -> None:
        self._write(sse_control(control("error", code="token_expired", message="the token has expired")))
        self._end()

    def on_connection_close(self) -> None:
        self._end()


class FeedLongPoll(HeraldRequestHandler):
    """``GET /api/executions/feed?since=V&wait=W``: changes after version V (held up to
    W seconds when there are none), or a snapshot when V is absent or too old."""

    transport = "longpoll"

    def initialize(self, core: Core, feed: Feed) -> None:  # type: ignore[override]
        super().initialize(core)
        self.feed = feed

    async def get(self) -> None:
        principal = self.authenticate()
        require(principal, Scope.EXECUTIONS_READ)
        since = self.get_query_argument("since", "")
        wait = self.int_argument("wait", 0, 0, MAX_WAIT)
        changes = self.feed.changes_since(principal, since) if since else None
        if changes == [] and wait:
            woken = asyncio.get_running_loop().create_future()

            def wake(version: str, entry: dict[str, Any]) -> None:
                if not woken.done():
                    woken.set_result(None)

            self.feed.listen(principal, wake)
            try:
                await asyncio.wait_for(woken, wait)
            except TimeoutError:
                pass
            finally:
                self.feed.forget(wake)
            if self.request.connection.stream.closed():  # type: ignore[attr-defined]
                return
            changes = self.feed.changes_since(principal, since)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        if changes is None:
            self.finish(dumps(await snapshot(self.core, self.feed, principal)))
        else:
            self.finish(dumps({"type": "changes", "version": self.feed.version, "executions": changes}))

    def on_connection_close(self) -> None:
        pass


def routes(core: Core) -> list[Rule]:
    """The feed's rules, one per transport the server offers; they must come before
    ``/api/executions/ID``, which ``feed`` would match."""
    feed = Feed()
    core.observers.append(feed.observe)
    kwargs = {"core": core, "feed": feed}
    by_name = {
        "websocket": Rule(RequestMatches(FEED_PATH, wants_websocket), FeedWebSocket, kwargs),
        "sse": Rule(RequestMatches(FEED_PATH, wants_event_stream), FeedSse, kwargs),
        "longpoll": Rule(RequestMatches(FEED_PATH, lambda r: r.method == "GET"), FeedLongPoll, kwargs),
    }
    return [by_name[name] for name in core.settings.transports if name in by_name]
