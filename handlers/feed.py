"""The dashboard feed, ``/api/executions/feed``, over the same three transports as an
execution's stream and routed the same way (Upgrade → WebSocket, ``Accept:
text/event-stream`` → SSE, anything else → JSON long-poll). Wire format:
docs/protocol.md ("The dashboard feed"); the state and the sources it serves:
core/feed.py. Each handler only authenticates, checks the scope and hands a session
the feed to follow.
"""

from __future__ import annotations

from tornado.httputil import HTTPServerRequest
from tornado.routing import Rule

from core.auth import Principal, Scope, require
from core.feed import Feed, FeedPage, FeedStream
from core.service import Core
from core.session import Source
from core.transport import TransportName
from transports.longpoll import MAX_WAIT, LongPollRouter, PollOpener
from transports.request import (
    RequestMatches,
    int_argument,
    query_argument,
    wants_event_stream,
    wants_page,
    wants_websocket,
)
from transports.sse import EventStreamHandler
from transports.websocket import HeraldSocket

FEED_PATH = r"/api/executions/feed"


class FeedSocket(HeraldSocket):
    """The feed over a WebSocket."""

    refresh_scope = Scope.EXECUTIONS_READ

    def initialize(self, core: Core, feed: Feed) -> None:  # type: ignore[override]
        super().initialize(core)
        self.feed = feed

    async def follow(self, principal: Principal, *args: str) -> Source | None:
        require(principal, Scope.EXECUTIONS_READ)
        return FeedStream(self.core, self.feed)


class FeedEvents(EventStreamHandler):
    """The feed as ``text/event-stream``: ``event: snapshot``, then ``event: execution``."""

    def initialize(self, core: Core, feed: Feed) -> None:  # type: ignore[override]
        super().initialize(core)
        self.feed = feed

    async def get(self) -> None:
        principal = await self.authenticate(stream=True)
        require(principal, Scope.EXECUTIONS_READ)
        await self.stream(principal, FeedStream(self.core, self.feed))


def feed_poll(feed: Feed) -> PollOpener:
    """The feed's long-poll opener: ``?since=V&wait=W``."""

    async def open_feed_page(
        core: Core, request: HTTPServerRequest, principal: Principal, path: dict[str, str]
    ) -> tuple[Source, int]:
        require(principal, Scope.EXECUTIONS_READ)
        since = query_argument(request, "since") or ""
        wait = int_argument(request, "wait", 0, 0, MAX_WAIT)
        return FeedPage(core, feed, since), wait

    return open_feed_page


def routes(core: Core) -> list[Rule]:
    """The feed's rules, one per transport the server offers; they must come before
    ``/api/executions/ID``, which ``feed`` would match."""
    feed = Feed()
    core.changes.observe(feed.observe)
    core.changes.observe_gaps(feed.lost_changes)
    kwargs = {"core": core, "feed": feed}
    by_name: dict[str, Rule] = {
        TransportName.WEBSOCKET: Rule(RequestMatches(FEED_PATH, wants_websocket), FeedSocket, kwargs),
        TransportName.SSE: Rule(RequestMatches(FEED_PATH, wants_event_stream), FeedEvents, kwargs),
        TransportName.LONGPOLL: Rule(RequestMatches(FEED_PATH, wants_page), LongPollRouter(core, feed_poll(feed))),
    }
    return [by_name[name] for name in core.settings.transports if name in by_name]
