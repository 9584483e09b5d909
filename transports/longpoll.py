"""JSON page / long-poll transport: ``GET ...?after=S&limit=L&wait=W``.

Answers ``{"events", "next_after", "done", "reset"}``. Events already stored after the
cursor come back at once; with none and ``wait`` > 0 the request is held on the same
Subscription the streaming transports use and answered as soon as one arrives, so a
poller wakes within milliseconds of a publish, not at its timeout.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tornado.httputil import HTTPServerRequest
from tornado.routing import Rule

from core.auth import may_read
from core.codec import Encoded, page_json
from core.errors import ErrorCode, HeraldError, forbidden
from core.model import Execution
from core.stream import TICK, Core, Subscription
from transports.base import (
    STREAM_PATH,
    HeraldRequestHandler,
    RequestMatches,
    shed_arguments,
    wants_event_stream,
    wants_websocket,
)

NAME = "longpoll"
MAX_WAIT = 60
MAX_LIMIT = 1000
DEFAULT_LIMIT = 500


class LongPollTransport(HeraldRequestHandler):
    """Answers one page of an execution's stream, waiting for it if asked to."""

    transport = NAME

    def initialize(self, core: Core) -> None:  # type: ignore[override]
        super().initialize(core)
        self.expires_at = float("inf")
        self._events: list[Encoded] = []
        self._reset: dict[str, Any] | None = None
        self._done = False
        self._limit = DEFAULT_LIMIT
        self._answered: asyncio.Future | None = None
        self._subscription: Subscription | None = None

    async def get(self, execution_id: str) -> None:
        principal = self.authenticate()
        execution = await self.core.get_execution(execution_id)
        if not may_read(principal, execution):
            raise forbidden("this token may not read that execution")
        after = self.cursor()
        self.core.check_cursor(execution, after)
        self._limit = self.int_argument("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        wait = self.int_argument("wait", 0, 0, MAX_WAIT)
        if not self.core.admit(self):
            raise HeraldError(ErrorCode.TOO_MANY_CONNECTIONS, 429, "too many connections", retry_after=5)
        # The Core's shared timer answers the poll when ``wait`` runs out (``expire``),
        # as it ends a stream whose token expired: no timer per held poll. It ticks
        # every second, so the deadline is a tick early: a poll is never held longer
        # than ``wait``.
        self.expires_at = min(principal.exp, time.time() + wait - TICK)
        self._answered = asyncio.get_running_loop().create_future()
        shed_arguments(self.request)  # read above; a held poll keeps the request
        subscription = self._subscription = self.core.follow(execution_id, after, self, limit=self._limit)
        try:
            await subscription.start(execution)
            if wait and not self._answered.done():
                await self._answered
        finally:
            subscription.close()
            self.core.release(self)
        if self.request.connection.stream.closed():  # type: ignore[attr-defined]
            return
        next_after = self._events[-1].seq if self._events else after
        if self._reset is not None and not self._events:
            next_after = self._reset["last_seq"]
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(page_json(self._events, next_after, self._done, self._reset))

    def compute_etag(self) -> None:
        """No ETag: a page is never cached (``Cache-Control: no-store``), and hashing
        every answer is a SHA-1 per poll for nothing."""
        return None

    # --- Sink -----------------------------------------------------------------------
    def send_events(self, batch: list[Encoded]) -> None:
        room = self._limit - len(self._events)
        if room > 0:
            self._events.extend(batch[:room])
            if len(batch) > room:
                # The rest goes to the next poll; the terminal event is not in this page.
                self._done = False
        if len(self._events) >= self._limit and self._subscription is not None:
            # The page is full: stop the catch-up before it reads the rest of the log.
            self._subscription.close()
        self._answer()

    def send_reset(self, execution: Execution) -> None:
        self._reset = execution.to_public()
        self._answer()

    def end_stream(self) -> None:
        # Terminal only if the terminal event made it into this page (or was before it).
        if not self._events or self._events[-1].terminal:
            self._done = True
        self._answer()

    def _answer(self) -> None:
        if self._answered is not None and not self._answered.done():
            self._answered.set_result(None)

    # --- Connection (shared timer) ----------------------------------------------------
    def heartbeat(self, now: float) -> None:
        return None  # a held poll is bounded by ``wait``; that is its heartbeat

    def going_away(self) -> None:
        self._answer()  # answer what we have; the client polls again elsewhere

    def expire(self) -> None:
        self._answer()

    def on_connection_close(self) -> None:
        self._answer()


def rule(core: Core) -> Rule:
    return Rule(RequestMatches(STREAM_PATH, wants_page), LongPollTransport, {"core": core})


def wants_page(request: HTTPServerRequest) -> bool:
    """Any GET that asks for neither a WebSocket nor an event stream: those, when their
    transport is turned off, fall through to an error instead of a JSON page."""
    return request.method == "GET" and not wants_websocket(request) and not wants_event_stream(request)
