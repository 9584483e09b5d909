"""JSON page / long-poll transport: ``GET ...?after=S&limit=L&wait=W``.

Answers ``{"events", "next_after", "done", "reset"}``. Events already stored after the
cursor come back at once; with none and ``wait`` > 0 the request is held on the same
Subscription the streaming transports use and answered as soon as one arrives, so a
poller wakes within milliseconds of a publish, not at its timeout.

A poll is a whole HTTP request, every time, so its cost per request is the transport's
cost per delivery. It is therefore served one level below ``RequestHandler``: the stream
URL's long-poll rule routes to ``LongPollRouter``, which gives Tornado's HTTP connection
a ``LongPoll`` message delegate that reads the already-parsed request and writes its one
answer (status line, five headers, body) straight to the connection. What it skips is
what a poll never uses: the handler's header map, ``clear``/``set_default_headers``,
ETag hashing, the transforms chain, the per-request coroutine wrappers. Errors keep the
contract's shape (``HeraldError.to_dict``) and the access line is the same one the
handlers write (``log_access``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from email.utils import formatdate
from typing import Any

from tornado.httputil import (
    HTTPHeaders,
    HTTPMessageDelegate,
    HTTPServerRequest,
    ResponseStartLine,
    responses,
)
from tornado.routing import Router, Rule

from core.auth import may_read
from core.codec import Encoded, dumps, page_json
from core.errors import ErrorCode, HeraldError, forbidden
from core.model import Execution
from core.stream import TICK, Core, Subscription
from transports.base import (
    STREAM_PATH,
    RequestMatches,
    as_herald_error,
    authenticate_request,
    cursor,
    int_argument,
    log_access,
    redacted_uri,
    retry_after,
    shed_arguments,
    wants_event_stream,
    wants_websocket,
)

NAME = "longpoll"
MAX_WAIT = 60
MAX_LIMIT = 1000
DEFAULT_LIMIT = 500
CONTENT_TYPE = "application/json; charset=UTF-8"

log = logging.getLogger("herald.longpoll")


class LongPoll(HTTPMessageDelegate):
    """One poll: authorise, read or wait for a page, answer, done. Also the ``Sink``
    its Subscription delivers to and the ``Connection`` the Core's timer sees."""

    transport = NAME

    def __init__(self, core: Core, request: HTTPServerRequest, execution_id: str) -> None:
        self.core = core
        self.request = request
        self.execution_id = execution_id
        self.expires_at = float("inf")
        self._events: list[Encoded] = []
        self._reset: dict[str, Any] | None = None
        self._done = False
        self._limit = DEFAULT_LIMIT
        self._answered: asyncio.Future | None = None
        self._subscription: Subscription | None = None
        self._closed = False
        self._task: asyncio.Task | None = None  # held here: the loop keeps tasks weakly

    # --- HTTPMessageDelegate --------------------------------------------------------
    def headers_received(self, start_line: Any, headers: HTTPHeaders) -> None:
        return None  # the router already holds the parsed request

    def data_received(self, chunk: bytes) -> None:
        return None  # a GET's body, if any, means nothing here

    def finish(self) -> None:
        """The request is read: serve it."""
        self.request.connection.set_close_callback(self.on_connection_close)  # type: ignore[union-attr]
        self._task = asyncio.ensure_future(self._serve())

    def on_connection_close(self) -> None:
        self._closed = True
        self._answer()

    # --- serving --------------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            body = await self._page()
        except Exception as exc:
            if not isinstance(exc, HeraldError):  # an answer, not a fault
                log.exception("long-poll %s failed", redacted_uri(self.request.uri or ""))
            error = as_herald_error(exc, 500)
            self._respond(error.status, dumps(error.to_dict()).encode(), retry_after(error))
        else:
            if body is not None:
                self._respond(200, body, None)

    async def _page(self) -> bytes | None:
        """The page's body, or None when the client left before it was ready."""
        core, request = self.core, self.request
        principal = authenticate_request(core, request)
        execution = await core.get_execution(self.execution_id)
        if not may_read(principal, execution):
            raise forbidden("this token may not read that execution")
        after = cursor(request)
        core.check_cursor(execution, after)
        self._limit = int_argument(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        wait = int_argument(request, "wait", 0, 0, MAX_WAIT)
        if not core.admit(self):
            raise HeraldError(ErrorCode.TOO_MANY_CONNECTIONS, 429, "too many connections", retry_after=5)
        # The Core's shared timer answers the poll when ``wait`` runs out (``expire``),
        # as it ends a stream whose token expired: no timer per held poll. It ticks
        # every second, so the deadline is a tick early: a poll is never held longer
        # than ``wait``.
        self.expires_at = min(principal.exp, time.time() + wait - TICK)
        self._answered = asyncio.get_running_loop().create_future()
        shed_arguments(request)  # read above; a held poll keeps the request
        subscription = self._subscription = core.follow(self.execution_id, after, self, limit=self._limit)
        try:
            await subscription.start(execution)
            if wait and not self._answered.done() and not self._closed:
                await self._answered
        finally:
            subscription.close()
            core.release(self)
        if self._closed:
            return None
        next_after = self._events[-1].seq if self._events else after
        if self._reset is not None and not self._events:
            next_after = self._reset["last_seq"]
        return page_json(self._events, next_after, self._done, self._reset)

    def _respond(self, status: int, body: bytes, retry: str | None) -> None:
        connection = self.request.connection
        if self._closed or connection is None:
            return
        headers = HTTPHeaders()
        headers["Content-Type"] = CONTENT_TYPE
        headers["Content-Length"] = str(len(body))
        headers["Cache-Control"] = "no-store"
        headers["Date"] = http_date()
        if retry is not None:
            headers["Retry-After"] = retry
        start = ResponseStartLine("HTTP/1.1", status, responses.get(status, "Unknown"))
        connection.write_headers(start, headers, body)
        connection.finish()
        log_access(status, self.request)

    # --- Sink -----------------------------------------------------------------------
    def send_events(self, batch: list[Encoded]) -> None:
        room = self._limit - len(self._events)
        if room > 0:
            self._events.extend(batch[:room])
            if len(batch) > room:
                # The rest goes to the next poll; the terminal event is not in this page.
                self._done = False
        subscription = self._subscription
        if len(self._events) >= self._limit and subscription is not None:
            # The page is full: stop the catch-up before it reads the rest of the log.
            subscription.close()
            self._answer()
        elif subscription is not None and subscription.live:
            self.core.answer_soon(self._answer)  # under load, later events may join
        else:
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


class LongPollRouter(Router):
    """The long-poll rule's target: a ``LongPoll`` for each matching request."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> HTTPMessageDelegate | None:
        execution_id = kwargs["path_kwargs"]["execution_id"]
        if isinstance(execution_id, bytes):
            execution_id = execution_id.decode()
        return LongPoll(self.core, request, execution_id)


@functools.lru_cache(maxsize=2)
def _formatted_date(second: int) -> str:
    return formatdate(second, usegmt=True)


def http_date() -> str:
    """The ``Date`` header (RFC 9110 6.6.1), formatted once per second."""
    return _formatted_date(int(time.time()))


def rule(core: Core) -> Rule:
    return Rule(RequestMatches(STREAM_PATH, wants_page), LongPollRouter(core))


def wants_page(request: HTTPServerRequest) -> bool:
    """Any GET that asks for neither a WebSocket nor an event stream: those, when their
    transport is turned off, fall through to an error instead of a JSON page."""
    return request.method == "GET" and not wants_websocket(request) and not wants_event_stream(request)
